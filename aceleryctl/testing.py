"""Test helpers for projects that use aceleryctl.

``recording()`` swaps the default controller (``aceleryctl.controller`` and
``aceleryctl.sync.controller``) for a :class:`RecordingController` that keeps
every dispatch in ``outbox`` instead of publishing, like Django's
``mail.outbox``::

    from aceleryctl.testing import recording

    def test_signup_sends_welcome_mail(client):
        with recording() as rec:
            client.post("/signup/", {...})
        [sent] = rec.outbox
        assert sent.task_name == "accounts.tasks.send_welcome"
        assert sent.kwargs == {"user_id": 1}

``recording(eager=True)`` also runs each task in-process (``task.apply``), so the
test sees its effects. On-commit dispatches are recorded when the transaction
commits, as the real controller publishes them, so use Django's
``captureOnCommitCallbacks`` (or a transactional test) to see them.
:class:`ManualClock` drives a circuit breaker's time by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from asgiref.sync import sync_to_async
from celery import Celery
from celery.result import AsyncResult, EagerResult

from aceleryctl._clock import ManualClock
from aceleryctl.dispatch.build import (
    CONTROLLER_OPTIONS,
    Built,
    build_apply_async,
    build_send_task,
)
from aceleryctl.dispatch.build import current_celery_app as _current_celery_app
from aceleryctl.dispatch.oncommit import check_deferrable, defer_until_commit
from aceleryctl.dispatch.record import Dispatch, DispatchKind
from aceleryctl.exceptions import TaskDispatchError
from aceleryctl.sync import _refuse_in_event_loop

__all__ = ["ManualClock", "RecordedDispatch", "RecordingController", "recording"]


@dataclass(frozen=True, slots=True)
class RecordedDispatch:
    """One dispatch a :class:`RecordingController` received.

    Attributes:
        method: ``"delay"``, ``"apply_async"``, ``"send_task"``, ``"delay_on_commit"``...
        task_name: the task's registered name (or a description of a canvas/callable).
        task_id: the id the real controller would have sent it under.
        args, kwargs: the task's arguments.
        options: Celery calling options as given (``dispatch_timeout`` excluded).
        on_commit: ``True`` when it was deferred to a transaction commit.
        dispatch: the :class:`~aceleryctl.dispatch.record.Dispatch` the real
            controller would have published (options as sent: with the task id,
            the correlation header and parent links).
    """

    method: str
    task_name: str
    task_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    on_commit: bool = False
    dispatch: Dispatch | None = field(default=None, compare=False, repr=False)


class RecordingController:
    """A stand-in for :class:`~aceleryctl.AsyncCeleryController` that records.

    It has every public method of the real controller, validates arguments the
    same way, and returns results with the ids it recorded; nothing reaches a
    broker. Its :attr:`sync` facade records into the same ``outbox``.

    Args:
        app: the Celery app results are bound to (default: Celery's current app).
        eager: also run each task here with ``task.apply`` and return the
            ``EagerResult``.
    """

    def __init__(self, app: Celery | None = None, *, eager: bool = False) -> None:
        self.app: Celery = app if app is not None else _current_celery_app()
        self.eager = eager
        self.outbox: list[RecordedDispatch] = []
        self.closed = False
        self.sync = _RecordingSync(self)

    def clear(self) -> None:
        """Empty the outbox."""
        self.outbox.clear()

    # The recording core, shared by both facades (all synchronous: nothing blocks).

    def _record(self, built: Built, given: dict[str, Any], on_commit: bool, using: Any) -> Any:
        dispatch, _ = built
        task_id = check_deferrable(dispatch) if on_commit else dispatch.task_id
        args, kwargs = dispatch.args, dict(dispatch.kwargs)
        if dispatch.kind is DispatchKind.SIGNATURE and dispatch.signature is not None:
            args = (*args, *tuple(dispatch.signature.get("args") or ()))
            kwargs = {**dict(dispatch.signature.get("kwargs") or {}), **kwargs}
        entry = RecordedDispatch(
            dispatch.method,
            dispatch.task_name,
            dispatch.task_id,
            tuple(args),
            kwargs,
            {k: v for k, v in given.items() if k not in CONTROLLER_OPTIONS},
            on_commit,
            dispatch,
        )
        if task_id is not None and on_commit and defer_until_commit(self._deliver, (entry,), using):
            return self.app.AsyncResult(task_id)
        return self._deliver(entry)

    def _deliver(self, entry: RecordedDispatch) -> Any:
        self.outbox.append(entry)
        dispatch = entry.dispatch
        assert dispatch is not None
        target = dispatch.target
        if self.eager and hasattr(target, "apply"):
            return target.apply(dispatch.args, dict(dispatch.kwargs), **dispatch.options)
        if self.eager and dispatch.kind is DispatchKind.CALLABLE:
            return target()  # a zero-argument dispatcher: run it as given
        return None if dispatch.task_id is None else self.app.AsyncResult(dispatch.task_id)

    def statistics(self) -> dict[str, int]:
        """Counts of what was recorded (the real controller returns its statistics)."""
        return {"dispatched": len(self.outbox), "failed": 0}

    def health(self) -> dict[str, Any]:
        """Always healthy: nothing is published."""
        return {"ok": True, "recording": True, "dispatched": len(self.outbox)}

    def _apply(
        self,
        method: str,
        task: Any,
        args: Any,
        kwargs: Any,
        options: dict[str, Any],
        on_commit: bool,
    ) -> Any:
        using = options.get("using")
        given = {k: v for k, v in options.items() if k != "using"}
        sent = {k: v for k, v in given.items() if k not in CONTROLLER_OPTIONS}
        built = build_apply_async(self.app, method, task, args, kwargs, sent, 1.0)
        return self._record(built, given, on_commit, using)

    def _send(self, name: str, args: Any, kwargs: Any, options: dict[str, Any]) -> AsyncResult[Any]:
        sent = {k: v for k, v in options.items() if k not in CONTROLLER_OPTIONS}
        built = build_send_task(self.app, "send_task", name, args, kwargs, sent, 1.0)
        result: AsyncResult[Any] = self._record(built, dict(options), False, None)
        return result

    # The async facade.

    async def delay(self, task: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Record ``task(*args, **kwargs)``."""
        return self._apply("delay", task, args, kwargs, {}, False)

    async def apply_async(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> Any:
        """Record ``task`` with its calling options."""
        return self._apply("apply_async", task, args, kwargs, options, False)

    async def send_task(
        self, name: str, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult[Any]:
        """Record a dispatch by name."""
        return self._send(name, args, kwargs, options)

    async def apply(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> EagerResult[Any]:
        """Run ``task`` in-process, as the real controller does (not recorded)."""
        result: EagerResult[Any] = task.apply(args, kwargs, **options)
        return result

    @overload
    async def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: Literal[False] = ..., **kwargs: Any
    ) -> tuple[Literal[True], Any]: ...

    @overload
    async def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    async def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool = False, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]:
        """Record as :meth:`delay` does; returns ``(True, result)``."""
        return True, self._apply("delay", task, args, kwargs, {}, False)

    async def delay_on_commit(self, task: Any, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """Record when the surrounding transaction commits (at once without one).

        Like the real controller, looks for the transaction on the thread-sensitive
        thread, where Django's transactions live in async code.
        """
        result: AsyncResult[Any] = await sync_to_async(self._apply, thread_sensitive=True)(
            "delay_on_commit", task, args, kwargs, {}, True
        )
        return result

    async def apply_async_on_commit(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult[Any]:
        """Record with options when the surrounding transaction commits."""
        result: AsyncResult[Any] = await sync_to_async(self._apply, thread_sensitive=True)(
            "apply_async_on_commit", task, args, kwargs, options, True
        )
        return result

    async def aclose(self, timeout: float | None = None) -> bool:
        """Mark closed; there is nothing to drain."""
        self.closed = True
        return True


class _RecordingSync:
    """The blocking facade of a :class:`RecordingController` (same outbox).

    Like the real sync facade, it raises :class:`~aceleryctl.exceptions.AsyncContextError`
    on a thread that runs an event loop, so a test catches that mistake too.
    """

    def __init__(self, owner: RecordingController) -> None:
        self._owner = owner

    @property
    def app(self) -> Celery:
        """The Celery app results are bound to."""
        return self._owner.app

    @property
    def outbox(self) -> list[RecordedDispatch]:
        return self._owner.outbox

    def statistics(self) -> dict[str, int]:
        return self._owner.statistics()

    def health(self) -> dict[str, Any]:
        return self._owner.health()

    def delay(self, task: Any, /, *args: Any, **kwargs: Any) -> Any:
        _refuse_in_event_loop("delay")
        return self._owner._apply("delay", task, args, kwargs, {}, False)

    def apply_async(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> Any:
        _refuse_in_event_loop("apply_async")
        return self._owner._apply("apply_async", task, args, kwargs, options, False)

    def send_task(
        self, name: str, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult[Any]:
        _refuse_in_event_loop("send_task")
        return self._owner._send(name, args, kwargs, options)

    def apply(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> EagerResult[Any]:
        _refuse_in_event_loop("apply")
        result: EagerResult[Any] = task.apply(args, kwargs, **options)
        return result

    @overload
    def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: Literal[False] = ..., **kwargs: Any
    ) -> tuple[Literal[True], Any]: ...

    @overload
    def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool = False, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]:
        _refuse_in_event_loop("safe_execute")
        return True, self.delay(task, *args, **kwargs)

    def delay_on_commit(self, task: Any, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        _refuse_in_event_loop("delay_on_commit")
        result: AsyncResult[Any] = self._owner._apply(
            "delay_on_commit", task, args, kwargs, {}, True
        )
        return result

    def apply_async_on_commit(
        self, task: Any, /, args: Iterable[Any] | None = None, kwargs: Any = None, **options: Any
    ) -> AsyncResult[Any]:
        _refuse_in_event_loop("apply_async_on_commit")
        result: AsyncResult[Any] = self._owner._apply(
            "apply_async_on_commit", task, args, kwargs, options, True
        )
        return result

    def close(self, timeout: float | None = None) -> bool:
        _refuse_in_event_loop("close")
        self._owner.closed = True
        return True


@contextlib.contextmanager
def recording(app: Celery | None = None, *, eager: bool = False) -> Iterator[RecordingController]:
    """Make a :class:`RecordingController` the default controller inside the block.

    ``aceleryctl.controller`` and ``aceleryctl.sync.controller`` both record into
    its ``outbox``. The previous default comes back on exit, even on error.
    """
    from aceleryctl import conf

    recorder = RecordingController(app, eager=eager)
    with conf.override_default(recorder):
        yield recorder
