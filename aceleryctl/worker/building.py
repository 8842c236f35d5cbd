"""Task events built from what Celery's signals hand out: pure functions, no I/O.

Runs on whichever thread fires the signal; nothing here keeps state or imports
the emitter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aceleryctl.compat.celery_worker import unpickleable_exception_name
from aceleryctl.correlation import correlation_id, correlation_id_from
from aceleryctl.events import (
    MAX_NAME_LENGTH,
    PHASE_OF_TYPE,
    STATE_OF_TYPE,
    RetryInfo,
    TaskEvent,
    clip_text,
    order_key,
    summarize_error,
)

__all__ = [
    "attempt_number",
    "build_event",
    "error_type_of",
    "headers_of",
    "retry_details",
    "task_correlation",
]


def attempt_number(value: object) -> int:
    """Celery's ``retries`` as a non-negative int (0 when missing or odd)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def task_correlation(request: object) -> str | None:
    """The correlation id of a running task: its header, else the current one."""
    return correlation_id_from(request) or correlation_id.get()


def build_event(
    type_: str, task_id: object, task_name: object, attempt: int, seq: int = 0, **fields: Any
) -> TaskEvent:
    """A :class:`TaskEvent` stamped now, its state and order key derived from
    ``type_``, ``attempt`` and ``seq``.

    Raises:
        ValueError: a field is invalid (the receivers' guard logs it).
    """
    name = task_name if isinstance(task_name, str) else None
    return TaskEvent(
        type=type_,
        task_id=str(task_id),
        task_name=None if name is None else clip_text(name, MAX_NAME_LENGTH),
        state=STATE_OF_TYPE[type_],
        timestamp=time.time(),
        order=order_key(attempt, PHASE_OF_TYPE[type_], seq),
        **fields,
    )


def error_type_of(error: object) -> str:
    # Celery wraps exceptions it cannot pickle; name the original class.
    return unpickleable_exception_name(error) or type(error).__name__


def headers_of(message: object) -> Mapping[str, Any]:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, Mapping) else {}


def retry_details(task: Any, request: Any, reason: Any) -> tuple[RetryInfo, str | None]:
    """``(retry info, error type)`` from a ``task_retry`` signal's arguments.

    ``reason`` is Celery's ``Retry`` (``.exc`` the cause, ``.when`` a countdown in
    seconds or a datetime), or ``None`` when the worker requeues a lost task.
    """
    exc = getattr(reason, "exc", None)
    if exc is not None:
        text: str | None = summarize_error(exc)
        error_type: str | None = error_type_of(exc)
    else:
        text = summarize_error(reason) if reason is not None else None
        error_type = None
    when = getattr(reason, "when", None)
    eta: datetime | None = None
    if isinstance(when, datetime):
        eta = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    elif isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
        eta = datetime.now(UTC) + timedelta(seconds=max(float(when), 0.0))
    max_retries = getattr(task, "max_retries", None)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        max_retries = None
    info = RetryInfo(
        attempt=attempt_number(getattr(request, "retries", 0)) + 1,
        max_retries=max_retries,
        reason=text or None,
        eta=None if eta is None else eta.isoformat(),
    )
    return info, error_type
