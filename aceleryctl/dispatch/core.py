"""What the async controller and its sync facade share: configuration and dispatch building.

Both facades turn their arguments into a :class:`~aceleryctl.dispatch.record.Dispatch`
the same way and hand it to one :class:`~aceleryctl.dispatch.engine.DispatchEngine`;
they differ only in how they wait for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from typing import Any

from celery import Celery

from aceleryctl.dispatch.build import (
    CONTROLLER_OPTIONS,
    Built,
    build_apply_async,
    build_send_task,
    check_timeout,
)
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.statistics import ControllerStatistics
from aceleryctl.outbox.durable import run_durable

__all__ = ["ControllerCore", "Dispatchable", "outbox_enabled", "require_outbox"]

#: What the dispatch methods accept: a task, a signature, a group/chain/chord, or
#: a zero-argument callable that dispatches and returns a result.
Dispatchable = Any


def outbox_enabled() -> bool:
    """Whether ``ACELERYCTL["OUTBOX"]["ENABLED"]`` is on (cached; cheap).

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid.
    """
    from aceleryctl.outbox.config import outbox_settings

    return outbox_settings().enabled


def require_outbox(what: str) -> None:
    """Raise unless the outbox is on.

    Raises:
        django.core.exceptions.ImproperlyConfigured: it is off; says what to set.
    """
    if not outbox_enabled():
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"{what} needs the outbox: set ACELERYCTL['OUTBOX'] = {{'ENABLED': True}}, keep "
            "'aceleryctl' in INSTALLED_APPS and run `manage.py migrate` (see docs/durability.md)"
        )


def _outbox_health() -> dict[str, Any]:
    import asyncio

    if not outbox_enabled():
        return {"enabled": False}
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        from aceleryctl.outbox.status import outbox_status

        return outbox_status()
    return {"enabled": True, "unread": "on an event loop: await controller.ahealth()"}


class ControllerCore:
    """Settings and call building shared by both facades (not public).

    Thread-safety: immutable after construction, apart from the engine's own
    thread-safe state.
    """

    __slots__ = ("_default_timeout", "_drain_timeout", "_durable", "_engine")

    def __init__(
        self,
        engine: DispatchEngine,
        *,
        dispatch_timeout: float,
        drain_timeout: float,
        durable: bool = False,
    ):
        self._engine = engine
        self._default_timeout = check_timeout(dispatch_timeout)
        self._drain_timeout = check_timeout(drain_timeout, name="drain_timeout")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be True or False, got {durable!r}")
        if durable:
            require_outbox("durable=True")
        self._durable = durable

    @property
    def app(self) -> Celery:
        """The Celery app every publish of this controller uses."""
        return self._engine.app

    @property
    def dispatch_timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._default_timeout

    def statistics(self) -> ControllerStatistics:
        """A frozen snapshot: counters, the publish pool and the circuit breaker."""
        return self._engine.statistics()

    def health(self) -> dict[str, Any]:
        """A JSON-ready summary for status pages and probes.

        ``ok`` is false while the breaker refuses calls (open, or forced open).
        ``recovery_probe`` says whether the background probe that ends an open
        state as soon as the broker answers is running, and what it found.
        Counts are since the controller was created; the breaker's state is this
        process's own (each process has its own breaker). With the outbox on,
        ``outbox`` holds its depth (:func:`aceleryctl.outbox.status.outbox_status`),
        read from the database; on an event loop's thread, where that read cannot
        run, it says to ``await controller.ahealth()`` instead.
        """
        stats = self._engine.statistics()
        breaker = stats.breaker
        wire = self._engine.wire.describe()
        loop_path = self._engine.loop_path
        return {
            "ok": breaker.state.value not in ("open", "forced_open"),
            "breaker": {
                **{k: v for k, v in asdict(breaker).items() if k != "state"},
                "state": breaker.state.value,
            },
            "pool": asdict(stats.pool),
            "dispatched": stats.dispatched,
            "failed": stats.failed,
            "timed_out": stats.timed_out,
            "overloaded": stats.overloaded,
            "rejected_open": stats.rejected_open,
            "late_completions": stats.late_completions,
            "direct": stats.direct,
            "bounded_transport": bool(wire.get("bounded", False)),
            "direct_publish": bool(wire.get("direct_publish", False)),
            "wire": wire["wire"],
            "recovery_probe": self._engine.recovery.statistics(),
            "loop_publish": None if loop_path is None else loop_path.describe(),
            "from_loop": stats.from_loop,
            "outbox": _outbox_health(),
        }

    @property
    def durable(self) -> bool:
        """Whether every dispatch is durable by default (see docs/durability.md)."""
        return self._durable

    def _take_durable(self, options: dict[str, Any]) -> bool:
        """Pop the per-call ``durable`` option; ``True`` needs the outbox.

        Raises:
            TypeError: ``durable`` is not a bool.
            django.core.exceptions.ImproperlyConfigured: durable without the outbox.
        """
        durable = options.pop("durable", None)
        if durable is None:
            return self._durable
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be True or False, got {durable!r}")
        if durable:
            require_outbox("durable=True")
        return durable

    async def ahealth(self) -> dict[str, Any]:
        """:meth:`health`, with the outbox's depth read off the loop (on the
        thread-sensitive thread, where Django's database work for async code runs)."""
        report = self.health()
        if report["outbox"].get("enabled"):
            from asgiref.sync import sync_to_async

            from aceleryctl.outbox.status import outbox_status

            report["outbox"] = await sync_to_async(outbox_status, thread_sensitive=True)()
        return report

    def _apply_async_unread(
        self, task: Dispatchable, args: Any, kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Awaitable[Any]:
        """``apply_async`` for a caller that never reads the result (the Django Tasks
        backend, whose result is its own): no ``AsyncResult`` is made for it. Builds
        the dispatch now and returns the engine's coroutine, to be awaited at once
        (one coroutine frame fewer on every suspension and resumption of the call).

        Raises:
            TypeError, ValueError: bad input, when called.
            TaskDispatchError: a subclass, as ``apply_async`` raises, when awaited.
        """
        durable = self._take_durable(options)
        built = self._apply_async_call("apply_async", task, args, kwargs, options)
        if durable:
            return run_durable(self._engine, built)
        return self._engine.run_async(*built, result=False)

    def _probe_timeout(self, timeout: float | None) -> float:
        return self._default_timeout if timeout is None else check_timeout(timeout, name="timeout")

    def _timeout(self, options: dict[str, Any]) -> float:
        override = options.pop("dispatch_timeout", None)
        return self._default_timeout if override is None else check_timeout(override)

    def _delay_call(
        self,
        task: Dispatchable,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        method: str = "delay",
    ) -> Built:
        return build_apply_async(self.app, method, task, args, kwargs, {}, self._default_timeout)

    def _apply_async_call(
        self,
        method: str,
        task: Dispatchable,
        args: Iterable[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> Built:
        timeout = self._timeout(options)
        return build_apply_async(self.app, method, task, args, kwargs, options, timeout)

    def _send_task_call(
        self,
        name: str,
        args: Iterable[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> Built:
        timeout = self._timeout(options)
        return build_send_task(self.app, "send_task", name, args, kwargs, options, timeout)

    @staticmethod
    def _eager(
        task: Dispatchable, args: Iterable[Any] | None, kwargs: dict[str, Any] | None, options: Any
    ) -> Callable[[], Any]:
        leftover = CONTROLLER_OPTIONS.intersection(options)
        if leftover:
            raise TypeError(f"apply() runs in this process; it takes no {sorted(leftover)}")
        apply = getattr(task, "apply", None)
        if apply is None:
            raise TypeError(f"apply() needs a Celery task or signature, got {type(task).__name__}")
        return lambda: apply(args, kwargs, **options)
