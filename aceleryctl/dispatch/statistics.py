"""The controller's statistics: counters kept by a dispatch listener, and their snapshot."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aceleryctl.breaker import BreakerStatistics, StateChange
from aceleryctl.dispatch.listener import DispatchEvent, DispatchOutcome, PoolChange
from aceleryctl.dispatch.pool import PoolStatistics

__all__ = ["ControllerStatistics", "StatisticsListener"]

#: The ``path`` names of dispatches a wire wrote itself (its direct path).
_DIRECT_PATHS = frozenset({"redis", "amqp", "redis-loop"})


@dataclass(frozen=True, slots=True)
class ControllerStatistics:
    """A snapshot of a controller's counters, its pool and its breaker.

    Attributes:
        dispatched: publishes that returned a result.
        failed: calls that raised a :class:`TaskDispatchError` of any kind.
        timed_out: calls that raised :class:`DispatchTimeout`.
        overloaded: calls refused because no thread was free in time or the queue was full.
        rejected_open: calls refused by the open circuit breaker.
        late_completions: publishes that finished on their thread after their
            caller had already been given :class:`DispatchTimeout`.
        direct: dispatches (among ``dispatched``) written on a wire's direct path
            (Redis, AMQP); the rest went through Celery's stock ``apply_async``.
        pool: the publish pool's own snapshot.
        breaker: the circuit breaker's own snapshot.
        from_loop: dispatches (among ``direct``) written from the caller's event
            loop thread (``loop_publish``), without a publishing thread.
    """

    dispatched: int
    failed: int
    timed_out: int
    overloaded: int
    rejected_open: int
    late_completions: int
    direct: int
    pool: PoolStatistics
    breaker: BreakerStatistics
    from_loop: int = 0


class StatisticsListener:
    """Counts settled dispatches. The engine's first listener; thread-safe."""

    __slots__ = (
        "_direct",
        "_dispatched",
        "_failed",
        "_from_loop",
        "_late",
        "_lock",
        "_overloaded",
        "_rejected_open",
        "_timed_out",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dispatched = self._failed = self._timed_out = self._overloaded = 0
        self._rejected_open = self._late = self._direct = self._from_loop = 0

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Count one outcome (called on the settling thread; takes a lock briefly)."""
        self.count(event.outcome, event.error_type, event.path, event.late)

    def count(
        self, outcome: DispatchOutcome, error_type: str | None, path: str | None, late: bool
    ) -> None:
        """:meth:`dispatch_settled` without an event: the engine calls this directly,
        so that a dispatch nobody else listens to builds no event at all."""
        with self._lock:
            if late:
                self._late += 1
            elif error_type is None:
                self._dispatched += 1
                if path in _DIRECT_PATHS and outcome is DispatchOutcome.SENT:
                    self._direct += 1
                    if path == "redis-loop":
                        self._from_loop += 1
            else:
                self._failed += 1
                if error_type == "DispatchTimeout":
                    self._timed_out += 1
                elif error_type == "DispatchOverloaded":
                    self._overloaded += 1
                elif error_type == "CircuitOpenError":
                    self._rejected_open += 1

    def pool_changed(self, change: PoolChange) -> None:
        """Not counted: the pool keeps its own statistics."""

    def breaker_changed(self, change: StateChange) -> None:
        """Not counted: the breaker keeps its own statistics."""

    def snapshot(self, pool: PoolStatistics, breaker: BreakerStatistics) -> ControllerStatistics:
        """A consistent copy of the counters with the given pool and breaker snapshots."""
        with self._lock:
            return ControllerStatistics(
                self._dispatched,
                self._failed,
                self._timed_out,
                self._overloaded,
                self._rejected_open,
                self._late,
                self._direct,
                pool=pool,
                breaker=breaker,
                from_loop=self._from_loop,
            )
