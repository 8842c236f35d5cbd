"""The last events of a task's attempt handed to the emitter: the held progress
report first, then the outcome (``task.succeeded``, ``task.retried``...).

Runs on the thread that fires the outcome signal; never blocks on the network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aceleryctl.events import RetryInfo, TaskEvent
from aceleryctl.worker.building import build_event, task_correlation
from aceleryctl.worker.config import worker_config
from aceleryctl.worker.layer import default_emitter
from aceleryctl.worker.progress_gate import process_gate

__all__ = ["emit_retried", "finish"]


def finish(task_id: str, attempt: int, terminal: Callable[[], TaskEvent]) -> None:
    """The attempt ended: send its held progress report, then ``terminal()``."""
    held = process_gate(worker_config().progress_interval).finish(task_id, attempt)
    current = default_emitter()
    if current is None:
        return
    if held is not None:
        current.emit(held)
    current.emit(terminal())


def emit_retried(task: Any, request: Any, info: RetryInfo, error_type: str | None) -> None:
    """Send the attempt's held progress report, then its ``task.retried``."""
    task_id = request.id
    finish(
        task_id,
        info.attempt - 1,
        lambda: build_event(
            "task.retried",
            task_id,
            task.name,
            info.attempt - 1,
            retry=info,
            error_type=error_type,
            error_message=info.reason,
            correlation_id=task_correlation(request),
        ),
    )
