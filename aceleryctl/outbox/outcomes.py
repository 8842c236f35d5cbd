"""Telling a controller's dispatch listeners what became of a dispatch in the
outbox: stored (a durable dispatch the broker did not take) or dead-lettered (the
relay gave up). Relayed publishes are ordinary dispatches with ``relayed=True``,
told by the engine itself. Runs on the calling thread; never raises (a raising
listener is logged once and skipped, as for every dispatch event).
"""

from __future__ import annotations

from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.listener import DispatchEvent, DispatchOutcome
from aceleryctl.dispatch.record import Dispatch

__all__ = ["tell_dead_lettered", "tell_stored"]


def _tell(
    engine: DispatchEngine,
    outcome: DispatchOutcome,
    *,
    task_name: str,
    task_id: str | None,
    method: str,
    kind: str,
    queue: str | None,
    error_type: str | None,
    correlation_id: str | None,
    relayed: bool,
) -> None:
    listeners = engine.listeners
    if not listeners:
        return
    now = engine.clock()
    listeners.dispatch_settled(
        DispatchEvent(
            task_name,
            task_id,
            method,
            kind,
            queue,
            None,
            outcome,
            error_type,
            correlation_id,
            now,
            None,
            now,
            relayed=relayed,
        )
    )


def tell_stored(engine: DispatchEngine, dispatch: Dispatch, error: BaseException) -> None:
    """``dispatch`` was stored in the outbox after ``error``."""
    _tell(
        engine,
        DispatchOutcome.STORED,
        task_name=dispatch.task_name,
        task_id=dispatch.task_id,
        method=dispatch.method,
        kind=dispatch.kind.value,
        queue=dispatch.queue,
        error_type=type(error).__name__,
        correlation_id=dispatch.correlation_id,
        relayed=False,
    )


def tell_dead_lettered(
    engine: DispatchEngine, task_name: str, task_id: str, dispatch: Dispatch | None
) -> None:
    """The relay dead-lettered the row of ``task_id`` (``dispatch`` ``None``: the
    row did not decode)."""
    _tell(
        engine,
        DispatchOutcome.DEAD_LETTERED,
        task_name=task_name,
        task_id=task_id or None,
        method="relay" if dispatch is None else dispatch.method,
        kind="task" if dispatch is None else dispatch.kind.value,
        queue=None if dispatch is None else dispatch.queue,
        error_type=None,
        correlation_id=None if dispatch is None else dispatch.correlation_id,
        relayed=True,
    )
