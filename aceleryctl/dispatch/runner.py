"""The pool's batch runner: hand the attempts that queued up together to the wire.

Runs on publishing threads only. For each batch it stamps the attempts' start
and end (the one place an :class:`~aceleryctl.dispatch.record.Attempt` is
written after it is queued), freezes canvases that have no id yet, asks the
wire to publish, and settles every job's future with the wire's
:class:`~aceleryctl.wires.base.WireOutcome`. Jobs that are not publishes (broker
probes) run one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aceleryctl._clock import Clock
from aceleryctl.compat.celery import freeze_canvas
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.pool import BatchJob, run_each
from aceleryctl.dispatch.record import Attempt, DispatchKind
from aceleryctl.wires.base import Wire, WireOutcome

__all__ = ["BatchRunner", "PublishJob"]


class PublishJob:
    """A pool job publishing one attempt; the batch runner reads ``attempt``.

    Called on its own (by a pool without a batch runner), it publishes alone.
    """

    __slots__ = ("attempt", "runner")

    def __init__(self, runner: BatchRunner, attempt: Attempt) -> None:
        self.runner = runner
        self.attempt = attempt

    def __call__(self) -> WireOutcome:
        # Run on its own by a pool without a batch runner, inside the caller's context.
        return self.runner.publish([self.attempt])[0]


class BatchRunner:
    """Publishes batches of attempts through one wire. Thread-safe (no state of its own).

    Args:
        wire: the controller's wire.
        clock: monotonic seconds, the engine's clock.
        admit: asked about each attempt as its batch starts; an outcome it
            returns settles the attempt without publishing it (``None``: publish).
        broker_fault: called (on the publishing thread, before the outcomes are
            handed back) when a batch had an outcome that counts against the breaker.
    """

    __slots__ = ("_admit", "_broker_fault", "_clock", "_wire")

    def __init__(
        self,
        wire: Wire,
        clock: Clock,
        admit: Callable[[Attempt], WireOutcome | None] | None = None,
        broker_fault: Callable[[], None] | None = None,
    ) -> None:
        self._wire = wire
        self._clock = clock
        self._admit = admit
        self._broker_fault = broker_fault

    def __call__(self, jobs: Sequence[BatchJob]) -> None:
        """Publish ``jobs`` and settle every one of their futures. Never raises."""
        attempts: list[Attempt] = []
        publishes: list[BatchJob] = []
        others: list[BatchJob] = []
        for job in jobs:
            fn = job.fn
            if type(fn) is PublishJob:
                attempt = fn.attempt
                attempt.context = job.context  # the caller's, copied by the pool at submit
                attempts.append(attempt)
                publishes.append(job)
            else:
                others.append(job)
        admit = self._admit
        if admit is not None and publishes:
            kept = []
            for job, attempt in zip(publishes, attempts, strict=True):
                refused = admit(attempt)
                if refused is None:
                    kept.append(job)
                else:
                    job.future.set_result(refused)
            if len(kept) != len(publishes):
                publishes = kept
                attempts = [job.fn.attempt for job in kept]  # type: ignore[attr-defined]
        if publishes:
            for job, outcome in zip(publishes, self.publish(attempts), strict=True):
                job.future.set_result(outcome)
        if others:
            run_each(others)

    def publish(self, attempts: Sequence[Attempt]) -> list[WireOutcome]:
        """Stamp, freeze canvases, publish; one outcome per attempt. Never raises."""
        started = self._clock()
        unfrozen = False
        for attempt in attempts:
            attempt.started_at = started
            if attempt.task_id is None and attempt.dispatch.kind is DispatchKind.CANVAS:
                unfrozen = True
        if unfrozen:
            outcomes = self._publish_with_canvases(attempts, started)
        else:
            outcomes = self._publish(attempts, started)
        finished = self._clock()
        faulted = False
        for attempt, outcome in zip(attempts, outcomes, strict=True):
            attempt.finished_at = finished
            attempt.path = outcome.path or None
            attempt.queue = outcome.queue
            faulted = faulted or outcome.broker_fault
        if faulted and self._broker_fault is not None:
            self._broker_fault()  # must not raise (RecoveryProbe.prepare does not)
        return outcomes

    def _publish(self, attempts: Sequence[Attempt], started: float) -> list[WireOutcome]:
        if not attempts:
            return []
        deadline = min(a.deadline for a in attempts)
        try:
            outcomes = self._wire.publish_batch(attempts, deadline)
        except BaseException as exc:  # a wire must not raise; make sure of it
            return [WireOutcome(DispatchOutcome.UNKNOWN, error=exc)] * len(attempts)
        if len(outcomes) != len(attempts):
            error = RuntimeError(f"{type(self._wire).__name__} returned a wrong number of outcomes")
            return [WireOutcome(DispatchOutcome.UNKNOWN, error=error)] * len(attempts)
        return outcomes

    def _publish_with_canvases(
        self, attempts: Sequence[Attempt], started: float
    ) -> list[WireOutcome]:
        # Canvases get their ids here, before the wire connects; one that cannot
        # be frozen fails alone (nothing was sent for it).
        failed: dict[int, WireOutcome] = {}
        todo: list[Attempt] = []
        for index, attempt in enumerate(attempts):
            if attempt.task_id is None and attempt.dispatch.kind is DispatchKind.CANVAS:
                try:
                    attempt.task_id = attempt.run(_freeze, attempt)
                except Exception as exc:
                    failed[index] = WireOutcome(DispatchOutcome.NOT_SENT, error=exc)
                    continue
            todo.append(attempt)
        published = iter(self._publish(todo, started))
        return [failed.get(index) or next(published) for index in range(len(attempts))]


def _freeze(attempt: Attempt) -> Any:
    # Freezing assigns every id in the canvas. It runs on the publishing thread
    # (the controller's app current) before connecting, and the id is recorded
    # on the attempt, so that a deadline passing mid-connect or mid-publish can
    # still name the id the canvas is sent under.
    return freeze_canvas(attempt.dispatch.target, attempt.dispatch.options.get("task_id"))
