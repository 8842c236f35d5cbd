"""``report_progress``, the worker half: the throttled ``task.progress`` event and
the progress stored in the result backend.

Runs on the task's thread (the timer callback on the emitter thread). Loaded on
first use; the public function is :func:`aceleryctl.signals.report_progress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aceleryctl._once import once
from aceleryctl.events import Progress, TaskEvent, clip_text
from aceleryctl.worker.building import attempt_number, build_event, task_correlation
from aceleryctl.worker.config import worker_config
from aceleryctl.worker.emitter import Emitter
from aceleryctl.worker.layer import default_emitter
from aceleryctl.worker.progress_gate import process_gate
from aceleryctl.worker.progress_store import start_progress_write

__all__ = ["report_progress"]


def report_progress(
    task: Any, current: float, total: float | None = None, message: str | None = None
) -> None:
    """The implementation of :func:`aceleryctl.signals.report_progress` (whose
    docstring is the contract: threads, costs, what is raised).

    Raises:
        ValueError: ``message`` is not a string (``Progress`` checks the numbers).
    """
    request = task.request
    task_id = request.id
    if not task_id or request.called_directly:
        return
    if message is not None and not isinstance(message, str):
        raise ValueError(f"message must be a string or None, got {type(message).__name__}")
    progress = Progress(current, total, None if message is None else clip_text(message))
    gate = process_gate(worker_config().progress_interval)
    attempt = attempt_number(request.retries)
    seq, send_now = gate.admit(task_id, attempt, time.monotonic())
    write = None
    if send_now:  # sent now, its reply read once the event is built
        meta = {"current": progress.current, "total": progress.total, "message": progress.message}
        write = start_progress_write(task, task_id, meta)
    emitter = default_emitter()
    event = None
    try:
        if emitter is not None:
            event = build_event(
                "task.progress",
                task_id,
                getattr(task, "name", None),
                attempt,
                seq,
                progress=progress,
                correlation_id=task_correlation(request),
            )
    finally:
        if send_now and (write is None or not write.wait()):
            _store_progress(task, task_id, progress)  # Celery's update_state
    if send_now:
        if emitter is not None and event is not None:
            emitter.emit(event)  # after the store: the emitter thread wakes up now
    elif emitter is not None and event is not None:
        due = gate.hold(event)
        if due is not None:
            emitter.schedule(due, _progress_timer(emitter, task_id, attempt))


def _progress_timer(emitter: Emitter, task_id: str, attempt: int) -> Callable[[], TaskEvent | None]:
    """The callback the emitter thread runs when a held report is due."""

    def fire() -> TaskEvent | None:
        gate = process_gate(worker_config().progress_interval)
        event, retry_at = gate.due(task_id, attempt, time.monotonic())
        if retry_at is not None:
            emitter.schedule(retry_at, fire)
        return event

    return fire


def _store_progress(task: Any, task_id: str, progress: Progress) -> None:
    try:
        task.update_state(
            task_id=task_id,
            state="PROGRESS",
            meta={
                "current": progress.current,
                "total": progress.total,
                "message": progress.message,
            },
        )
    except Exception as exc:
        once("update_state", "aceleryctl could not store a task's progress: %s", exc)
