"""Broker probes: a pool job that connects as a publish would and publishes nothing.

Not a dispatch: neither the breaker, the statistics, the listeners nor the failure
log hear of it. Runs on a publishing thread; its caller waits on the pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aceleryctl.dispatch.pool import WaitOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.wires.base import WireOutcome

if TYPE_CHECKING:
    from aceleryctl.dispatch.engine import DispatchEngine

__all__ = ["Probe", "run_probe_async", "run_probe_sync"]


class Probe:
    """A pool job that connects as a publish would: not a dispatch, so neither the
    breaker, the statistics, the listeners nor the failure log hear of it."""

    __slots__ = ("_attempt", "_engine")

    def __init__(self, engine: DispatchEngine, timeout: float) -> None:
        self._engine = engine
        now = engine.clock()
        dispatch = Dispatch(
            DispatchKind.CALLABLE, "broker probe", None, (), {}, {}, timeout, "probe"
        )
        self._attempt = Attempt(dispatch, now + timeout, now)

    def __call__(self) -> WireOutcome:
        engine, attempt = self._engine, self._attempt
        attempt.started_at = engine.clock()
        try:
            return engine.wire.probe(attempt.deadline)
        finally:
            attempt.finished_at = engine.clock()

    def result(self, waited: WaitOutcome[WireOutcome]) -> float:
        """Seconds the connect took, or the error saying why the broker did not answer."""
        failures, attempt = self._engine._failures, self._attempt
        if waited.done:
            outcome = waited.future.result()
            if outcome.sent:
                return attempt.duration
            error = failures.from_wire(attempt, outcome, _NO_PERMIT)
        elif waited.never_started:
            error = failures.never_started(attempt, closed=self._engine.pool.statistics().closed)
        else:
            error = failures.timed_out(attempt)
        failures.attach_cause(error, waited.future.result().error if waited.done else None)
        raise error


class _NoPermit:
    """Stands in for a breaker permit where the breaker is not consulted (probes)."""

    def record_success(self, duration: float) -> None:
        """Ignored."""

    def record_failure(self, duration: float) -> None:
        """Ignored."""

    def release(self) -> None:
        """Ignored."""


_NO_PERMIT = _NoPermit()


def run_probe_sync(engine: DispatchEngine, timeout: float) -> float:
    """Connect the way a publish of ``engine`` would, publish nothing; block the
    calling thread at most ``timeout`` seconds. Bypasses the breaker and the statistics.

    Returns:
        Seconds the connect took.

    Raises:
        TaskDispatchError: a subclass saying why the broker did not answer.
    """
    probe = Probe(engine, timeout)
    return probe.result(engine.pool.wait(engine.pool.submit(probe), timeout))


async def run_probe_async(engine: DispatchEngine, timeout: float) -> float:
    """:func:`run_probe_sync`, awaited on the event loop."""
    probe = Probe(engine, timeout)
    return probe.result(await engine.pool.wait_async(engine.pool.submit(probe), timeout))
