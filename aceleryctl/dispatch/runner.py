"""The pool's batch runner: hand the attempts that queued up together to the wire.

Runs on publishing threads only. For each batch it stamps the attempts' start
and end (the one place an :class:`~aceleryctl.dispatch.record.Attempt` is
written after it is queued), freezes canvases that have no id yet, asks the
wire to publish, and settles every job's future with the wire's
:class:`~aceleryctl.wires.base.WireOutcome`. Jobs that are not publishes (broker
probes) run one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """

    __slots__ = ("_clock", "_wire")

    def __init__(self, wire: Wire, clock: Clock) -> None:
        self._wire = wire
        self._clock = clock

    def __call__(self, jobs: Sequence[BatchJob]) -> None:
        """Publish ``jobs`` and settle every one of their futures. Never raises."""
        publishes: list[BatchJob] = []
        others: list[BatchJob] = []
        for job in jobs:
            (publishes if isinstance(job.fn, PublishJob) else others).append(job)
        if publishes:
            attempts = []
            for job in publishes:
                attempt = job.fn.attempt  # type: ignore[attr-defined]
                attempt.context = job.context  # the caller's, copied by the pool at submit
                attempts.append(attempt)
            for job, outcome in zip(publishes, self.publish(attempts), strict=True):
                job.future.set_result(outcome)
        if others:
            run_each(others)

    def publish(self, attempts: Sequence[Attempt]) -> list[WireOutcome]:
        """Stamp, freeze canvases, publish; one outcome per attempt. Never raises."""
        started = self._clock()
        todo: list[Attempt] = []
        failed: dict[int, WireOutcome] = {}
        for index, attempt in enumerate(attempts):
            attempt.started_at = started
            if attempt.dispatch.kind is DispatchKind.CANVAS and attempt.task_id is None:
                try:
                    attempt.task_id = attempt.run(_freeze, attempt)
                except Exception as exc:
                    failed[index] = WireOutcome(DispatchOutcome.NOT_SENT, error=exc, path="")
                    continue
            todo.append(attempt)
        deadline = min((a.deadline for a in todo), default=started)
        try:
            published = iter(self._wire.publish_batch(todo, deadline) if todo else ())
        except BaseException as exc:  # a wire must not raise; make sure of it
            published = iter([WireOutcome(DispatchOutcome.UNKNOWN, error=exc)] * len(todo))
        finished = self._clock()
        outcomes: list[WireOutcome] = []
        for index, attempt in enumerate(attempts):
            outcome = failed.get(index) or next(published)
            attempt.finished_at = finished
            attempt.path = outcome.path or None
            attempt.queue = outcome.queue
            outcomes.append(outcome)
        return outcomes


def _freeze(attempt: Attempt) -> Any:
    # Freezing assigns every id in the canvas. It runs on the publishing thread
    # (the controller's app current) before connecting, and the id is recorded
    # on the attempt, so that a deadline passing mid-connect or mid-publish can
    # still name the id the canvas is sent under.
    return freeze_canvas(attempt.dispatch.target, attempt.dispatch.options.get("task_id"))
