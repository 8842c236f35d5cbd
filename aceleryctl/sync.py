"""The blocking facade for sync code: legacy DRF and WSGI views, management commands.

Moving a view from the original controller is one import line::

    from aceleryctl.sync import controller

    result = controller.delay(send_email_task, user_id, email_body)

Each method blocks the calling thread for at most the call's deadline, publishing
on the async controller's pool, under its breaker, with its logging. Called on a
thread that is running an event loop, every method raises
:class:`~aceleryctl.exceptions.AsyncContextError` at once instead of freezing the
loop: await the async controller's method of the same name there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from celery import Signature, Task
from celery.result import AsyncResult, EagerResult

from aceleryctl._proxy import LazyProxy
from aceleryctl.dispatch.build import Built
from aceleryctl.dispatch.core import (
    ControllerCore,
    Dispatchable,
    outbox_enabled,
    require_outbox,
)
from aceleryctl.dispatch.oncommit import check_deferrable, defer_until_commit
from aceleryctl.dispatch.probe import run_probe_sync
from aceleryctl.dispatch.protocol import SyncController
from aceleryctl.dispatch.statistics import ControllerStatistics
from aceleryctl.exceptions import AsyncContextError, TaskDispatchError
from aceleryctl.outbox.durable import run_durable_sync
from aceleryctl.outbox.handoff import store_on_commit

if TYPE_CHECKING:
    from aceleryctl.dispatch.controller import AsyncCeleryController

__all__ = ["SyncCeleryController", "SyncController", "controller"]

P = ParamSpec("P")
R = TypeVar("R")


def _refuse_in_event_loop(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise AsyncContextError(
        f"aceleryctl's sync controller.{method}() blocks, and this thread is running an "
        f"event loop; use `await aceleryctl.controller.{method}(...)` here instead"
    )


class SyncCeleryController:
    """Blocking twin of :class:`~aceleryctl.AsyncCeleryController`, sharing its engine.

    Thread-safety: any number of threads may call it at once. Get one from
    ``AsyncCeleryController.sync`` or use the default :data:`controller`.
    """

    __slots__ = ("_async", "_core")

    def __init__(self, async_controller: AsyncCeleryController) -> None:
        self._async = async_controller
        self._core: ControllerCore = async_controller

    def __repr__(self) -> str:
        return f"<SyncCeleryController of {self._async!r}>"

    @property
    def async_controller(self) -> AsyncCeleryController:
        """The async controller this facade shares its pool and breaker with."""
        return self._async

    @property
    def app(self) -> Any:
        """The Celery app every publish uses."""
        return self._core.app

    def statistics(self) -> ControllerStatistics:
        """A frozen snapshot: counters, the publish pool and the circuit breaker."""
        return self._core.statistics()

    def health(self) -> dict[str, Any]:
        """A JSON-ready summary; see ``AsyncCeleryController.health``."""
        return self._core.health()

    def probe(self, timeout: float | None = None) -> float:
        """Check that the broker answers; see ``AsyncCeleryController.probe``. Blocks."""
        _refuse_in_event_loop("probe")
        core = self._core
        return run_probe_sync(core._engine, core._probe_timeout(timeout))

    @overload
    def delay(self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]: ...

    @overload
    def delay(
        self, task: Signature[Any] | Callable[[], Any], /, *args: Any, **kwargs: Any
    ) -> Any: ...

    def delay(self, task: Dispatchable, /, *args: Any, **kwargs: Any) -> Any:
        """Send ``task(*args, **kwargs)``; see ``AsyncCeleryController.delay``.

        Blocks at most the default deadline. Raises as the async method does, and
        :class:`AsyncContextError` on an event-loop thread.
        """
        _refuse_in_event_loop("delay")
        core = self._core
        built = core._delay_call(task, args, kwargs)
        if core._durable:
            return run_durable_sync(core._engine, built)
        return core._engine.run_sync(*built)

    def apply_async(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send ``task`` with Celery options; see ``AsyncCeleryController.apply_async``."""
        _refuse_in_event_loop("apply_async")
        core = self._core
        durable = core._take_durable(options)
        built = core._apply_async_call("apply_async", task, args, kwargs, options)
        if durable:
            return run_durable_sync(core._engine, built)
        return core._engine.run_sync(*built)

    def send_task(
        self,
        name: str,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by registered name; see ``AsyncCeleryController.send_task``."""
        _refuse_in_event_loop("send_task")
        core = self._core
        durable = core._take_durable(options)
        built = core._send_task_call(name, args, kwargs, options)
        if durable:
            return run_durable_sync(core._engine, built)  # type: ignore[no-any-return]
        result: AsyncResult[Any] = core._engine.run_sync(*built)
        return result

    def apply(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[Any]:
        """Run ``task`` in this thread, now, like ``task.apply``; no broker involved."""
        _refuse_in_event_loop("apply")
        result: EagerResult[Any] = self._core._eager(task, args, kwargs, options)()
        return result

    @overload
    def safe_execute(
        self,
        task: Dispatchable,
        /,
        *args: Any,
        suppress_exceptions: Literal[False] = ...,
        **kwargs: Any,
    ) -> tuple[Literal[True], Any]: ...

    @overload
    def safe_execute(
        self, task: Dispatchable, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    def safe_execute(
        self, task: Dispatchable, /, *args: Any, suppress_exceptions: bool = False, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]:
        """:meth:`delay` returning ``(True, result)``, or ``(False, error)`` when
        ``suppress_exceptions`` is true; see ``AsyncCeleryController.safe_execute``."""
        _refuse_in_event_loop("safe_execute")
        try:
            return True, self.delay(task, *args, **kwargs)
        except TaskDispatchError as exc:
            if suppress_exceptions:
                return False, exc
            raise

    def delay_on_commit(self, task: Dispatchable, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        """:meth:`delay` after the current transaction commits; see the async method.

        Looks for the transaction on the calling thread. Returns at once.
        """
        _refuse_in_event_loop("delay_on_commit")
        built = self._core._delay_call(task, args, kwargs, method="delay_on_commit")
        return self._on_commit(built, None, self._core._durable)

    def apply_async_on_commit(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """:meth:`apply_async` after the transaction on ``using`` commits."""
        _refuse_in_event_loop("apply_async_on_commit")
        durable = self._core._take_durable(options)
        built = self._core._apply_async_call("apply_async_on_commit", task, args, kwargs, options)
        return self._on_commit(built, using, durable)

    def _on_commit(self, built: Built, using: str | None, durable: bool) -> AsyncResult[Any]:
        dispatch, parent = built
        task_id = check_deferrable(dispatch)
        engine = self._core._engine
        if outbox_enabled():
            if store_on_commit(engine, built, using):
                return self._core.app.AsyncResult(task_id)
            return run_durable_sync(engine, built)  # type: ignore[no-any-return]
        if durable:
            require_outbox("durable=True")
        if not defer_until_commit(engine.submit_detached, built, using):
            result: AsyncResult[Any] = engine.run_sync(dispatch, parent)
            return result
        return self._core.app.AsyncResult(task_id)

    def close(self, timeout: float | None = None) -> bool:
        """Close the shared controller; see ``AsyncCeleryController.aclose``. Blocks."""
        _refuse_in_event_loop("close")
        return self._async._close_blocking(timeout)


def _default_sync() -> SyncCeleryController:
    from aceleryctl.conf import default_controller

    return default_controller().sync


#: The default sync facade: ``aceleryctl.controller.sync``, built lazily from the
#: ``ACELERYCTL`` Django setting and resolved again after the setting changes.
controller: SyncCeleryController = cast("SyncCeleryController", LazyProxy(_default_sync))
