"""The task event schema: what a worker publishes and a browser receives.

One :class:`TaskEvent` is one step of one task's life. Workers publish it to the
channel-layer group :func:`group_name` ``(task_id)`` as
:meth:`TaskEvent.to_layer_message`; the websocket consumer validates it with
:meth:`TaskEvent.from_dict` and forwards :meth:`TaskEvent.to_dict` to the browser.
Every field is JSON-safe; no event ever carries a traceback or the task's
arguments.

The order key
-------------
Events of one task come from several processes (the web process sends, the
worker's main process receives, a pool child runs the task) over several Redis
connections, so they may arrive in any order. Each carries ``order``, one integer
that is strictly increasing along the task's life, so that a client keeps the
newest state and drops what is older or a duplicate::

    order = attempt * 10**10 + phase * 10**9 + seq

* ``attempt`` is Celery's ``request.retries``: 0 for the first run, 1 for the first
  retry, ... (saturates at :data:`MAX_ATTEMPT`).
* ``phase`` ranks the step inside one attempt (:class:`Phase`): sent 0, received 1,
  started 2, progress 3, retried 4, and every terminal event 5 (succeeded, failed,
  revoked, rejected), so a terminal event sorts after everything else of its
  attempt, and the retry of attempt *n* before anything of attempt *n + 1*.
* ``seq`` numbers progress reports within one attempt, from 1 (0 for the other
  phases; saturates at :data:`MAX_SEQ`). Progress is only ever reported by the
  process running the attempt, so a per-process counter is enough.

The largest key, ``order_key(MAX_ATTEMPT, Phase.TERMINAL, MAX_SEQ)``, is below
``2**53``: JavaScript compares keys exactly as plain numbers. The decimal layout
keeps keys readable: ``23000000005`` is attempt 2, progress, report 5.

Only the first publish of a task produces ``task.sent``: the message a retry
publishes (``retries > 0``) is announced by ``task.retried`` instead, which the
worker emits just *before* publishing it (so that it reaches subscribers before
anything of the next attempt; see docs/events.md).

A durable dispatch the broker did not take is announced by ``task.deferred``
(order ``0``: attempt 0, phase sent, seq 0; its error fields say why it was
stored); when the outbox's relay later publishes it, its ``task.sent`` has seq 1
(order ``1``), so that it sorts after the ``task.deferred``.

The values inside an event (phases and order keys, group names, size limits,
summaries and the checks of single fields) are built in
:mod:`aceleryctl._event_fields` and exported from here; this module holds the
event classes and the type tables. It imports only the standard library, that
module and :mod:`aceleryctl.correlation`'s id check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aceleryctl._event_fields import (
    ATTEMPT_STRIDE,
    GROUP_PREFIX,
    MAX_ATTEMPT,
    MAX_ORDER,
    MAX_RESULT_BYTES,
    MAX_SEQ,
    MAX_TEXT_LENGTH,
    PHASE_OF_TYPE,
    PHASE_STRIDE,
    TRACEBACK_MARKER,
    Phase,
    check_eta,
    check_json,
    check_text,
    clip_text,
    group_name,
    is_int,
    is_number,
    order_key,
    require_mapping,
    split_order,
    summarize_error,
    summarize_result,
)
from aceleryctl._event_fields import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from aceleryctl.correlation import is_valid_correlation_id

__all__ = [
    "ATTEMPT_STRIDE",
    "EVENT_TYPES",
    "GROUP_PREFIX",
    "MAX_ATTEMPT",
    "MAX_ORDER",
    "MAX_RESULT_BYTES",
    "MAX_SEQ",
    "MAX_TEXT_LENGTH",
    "PHASE_OF_TYPE",
    "PHASE_STRIDE",
    "STATE_OF_TYPE",
    "TERMINAL_TYPES",
    "Phase",
    "Progress",
    "RetryInfo",
    "TaskEvent",
    "clip_text",
    "group_name",
    "is_valid_correlation_id",
    "order_key",
    "split_order",
    "summarize_error",
    "summarize_result",
]

EVENT_TYPES: Final[tuple[str, ...]] = (
    "task.deferred",
    "task.sent",
    "task.received",
    "task.started",
    "task.progress",
    "task.retried",
    "task.succeeded",
    "task.failed",
    "task.revoked",
    "task.rejected",
)
TERMINAL_TYPES: Final[frozenset[str]] = frozenset(
    {"task.succeeded", "task.failed", "task.revoked", "task.rejected"}
)

#: Celery state string of each event type (``PROGRESS`` is the state
#: :func:`aceleryctl.signals.report_progress` stores).
STATE_OF_TYPE: Final[Mapping[str, str]] = {
    "task.deferred": "PENDING",
    "task.sent": "PENDING",
    "task.received": "RECEIVED",
    "task.started": "STARTED",
    "task.progress": "PROGRESS",
    "task.retried": "RETRY",
    "task.succeeded": "SUCCESS",
    "task.failed": "FAILURE",
    "task.revoked": "REVOKED",
    "task.rejected": "REJECTED",
}


@dataclass(frozen=True, slots=True)
class Progress:
    """What :func:`aceleryctl.signals.report_progress` reported.

    Attributes:
        current: work done so far, in the task's own unit (a finite number).
        total: work in all, in the same unit, or ``None`` when unknown.
        message: a short human-readable status, at most :data:`MAX_TEXT_LENGTH` characters.

    Raises:
        ValueError: a field is out of range.
    """

    current: float
    total: float | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if not is_number(self.current):
            raise ValueError(f"progress current must be a finite number, got {self.current!r}")
        if self.total is not None and not is_number(self.total):
            raise ValueError(f"progress total must be a finite number or None, got {self.total!r}")
        check_text("progress message", self.message, MAX_TEXT_LENGTH)

    def to_dict(self) -> dict[str, Any]:
        """``{"current": ..., "total": ..., "message": ...}``."""
        return {"current": self.current, "total": self.total, "message": self.message}

    @classmethod
    def from_dict(cls, data: object) -> Progress:
        """Parse :meth:`to_dict`'s output. Raises ValueError on bad input."""
        data = require_mapping("progress", data)
        return cls(data.get("current"), data.get("total"), data.get("message"))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """Why and when a task runs again.

    Attributes:
        attempt: the number of the retry being scheduled, from 1 (the task's
            ``request.retries + 1``).
        max_retries: the task's limit, or ``None`` for no limit.
        reason: the exception or message that caused the retry (scrubbed, clipped).
        eta: when the retry is due, an ISO 8601 string, or ``None`` for "now".

    Raises:
        ValueError: a field is out of range.
    """

    attempt: int
    max_retries: int | None = None
    reason: str | None = None
    eta: str | None = None

    def __post_init__(self) -> None:
        if not is_int(self.attempt) or self.attempt < 1:
            raise ValueError(f"retry attempt must be an int >= 1, got {self.attempt!r}")
        if self.max_retries is not None and (not is_int(self.max_retries) or self.max_retries < 0):
            raise ValueError(f"max_retries must be an int >= 0 or None, got {self.max_retries!r}")
        check_text("retry reason", self.reason, MAX_TEXT_LENGTH)
        if self.eta is not None:
            check_eta(self.eta, "retry eta")

    def to_dict(self) -> dict[str, Any]:
        """``{"attempt", "max_retries", "reason", "eta"}``."""
        return {
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "reason": self.reason,
            "eta": self.eta,
        }

    @classmethod
    def from_dict(cls, data: object) -> RetryInfo:
        """Parse :meth:`to_dict`'s output. Raises ValueError on bad input."""
        data = require_mapping("retry", data)
        return cls(
            data.get("attempt"),  # type: ignore[arg-type]
            data.get("max_retries"),
            data.get("reason"),
            data.get("eta"),
        )


_ERROR_TYPES: Final = frozenset(
    {"task.deferred", "task.failed", "task.retried", "task.revoked", "task.rejected"}
)
#: The types that may carry ``eta``: what the publisher knows of a countdown or eta.
_ETA_TYPES: Final = frozenset({"task.deferred", "task.sent"})


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One step of one task's life. Immutable, JSON-safe, validated on construction.

    Attributes:
        type: one of :data:`EVENT_TYPES` (also the channel-layer message type).
        task_id: the Celery task id.
        task_name: the registered task name, when known.
        state: the Celery state of ``type`` (:data:`STATE_OF_TYPE`).
        timestamp: ``time.time()`` when the step happened, seconds since the epoch.
        order: the per-task order key (module docstring, :func:`order_key`).
        progress: only on ``task.progress`` (required there).
        result: only on ``task.succeeded``: a JSON value of at most
            :data:`MAX_RESULT_BYTES` bytes (:func:`summarize_result`).
        error_type: exception class name, on failed, retried, revoked and rejected
            events (``"Terminated"``/``"Expired"``/``"Revoked"`` for revocations).
        error_message: its message, scrubbed and clipped (:func:`summarize_error`);
            never a traceback.
        retry: only on ``task.retried`` (required there).
        correlation_id: the request's correlation id, when one was propagated.
        eta: only on ``task.sent`` and ``task.deferred``: when the task is due
            (its ``countdown`` or ``eta``), ISO 8601 with a UTC offset; ``None``
            when it runs as soon as a worker takes it.

    Raises:
        ValueError: a field is missing, of the wrong type, or not allowed on ``type``.
    """

    type: str
    task_id: str
    task_name: str | None
    state: str
    timestamp: float
    order: int
    progress: Progress | None = None
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    retry: RetryInfo | None = None
    correlation_id: str | None = None
    eta: str | None = None

    def __post_init__(self) -> None:
        expected_state = STATE_OF_TYPE.get(self.type) if isinstance(self.type, str) else None
        if expected_state is None:
            raise ValueError(f"unknown event type {self.type!r}; the types are {EVENT_TYPES}")
        if self.state != expected_state:
            raise ValueError(f"{self.type} has state {expected_state!r}, got {self.state!r}")
        check_text("task_id", self.task_id, MAX_NAME_LENGTH, optional=False)
        if not self.task_id:
            raise ValueError("task_id must not be empty")
        check_text("task_name", self.task_name, MAX_NAME_LENGTH)
        if not is_number(self.timestamp) or self.timestamp < 0:
            raise ValueError(f"timestamp must be finite seconds >= 0, got {self.timestamp!r}")
        _, phase, _ = split_order(self.order)
        if phase != PHASE_OF_TYPE[self.type]:
            raise ValueError(f"order {self.order} has phase {phase.name}, not that of {self.type}")
        if (self.progress is not None) != (self.type == "task.progress"):
            raise ValueError("progress is required on task.progress and allowed nowhere else")
        if self.progress is not None and not isinstance(self.progress, Progress):
            raise ValueError("progress must be a Progress")
        if (self.retry is not None) != (self.type == "task.retried"):
            raise ValueError("retry is required on task.retried and allowed nowhere else")
        if self.retry is not None and not isinstance(self.retry, RetryInfo):
            raise ValueError("retry must be a RetryInfo")
        if self.result is not None:
            if self.type != "task.succeeded":
                raise ValueError("result is allowed on task.succeeded only")
            check_json(self.result)
            size = len(json.dumps(self.result, ensure_ascii=False).encode())
            if size > MAX_RESULT_BYTES:
                raise ValueError(f"result is {size} bytes of JSON; at most {MAX_RESULT_BYTES}")
        if (self.error_type is not None or self.error_message is not None) and (
            self.type not in _ERROR_TYPES
        ):
            raise ValueError(f"error fields are not allowed on {self.type}")
        check_text("error_type", self.error_type, MAX_NAME_LENGTH)
        check_text("error_message", self.error_message, MAX_TEXT_LENGTH)
        if self.error_message is not None and TRACEBACK_MARKER in self.error_message:
            raise ValueError("error_message must not contain a traceback")
        if self.correlation_id is not None and not is_valid_correlation_id(self.correlation_id):
            raise ValueError(f"correlation_id is not a sane token: {self.correlation_id!r:.80}")
        if self.eta is not None:
            if self.type not in _ETA_TYPES:
                raise ValueError(
                    f"eta is allowed on task.sent and task.deferred only, not {self.type}"
                )
            check_eta(self.eta)

    @property
    def is_terminal(self) -> bool:
        """Whether nothing follows this event (:data:`TERMINAL_TYPES`)."""
        return self.type in TERMINAL_TYPES

    @property
    def attempt(self) -> int:
        """The attempt the event belongs to (``request.retries``), from the order key."""
        return split_order(self.order)[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe wire form: every field, nested ones as objects or ``null``."""
        return {
            "type": self.type,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "state": self.state,
            "timestamp": self.timestamp,
            "order": self.order,
            "progress": None if self.progress is None else self.progress.to_dict(),
            "result": self.result,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "retry": None if self.retry is None else self.retry.to_dict(),
            "correlation_id": self.correlation_id,
            "eta": self.eta,
        }

    @classmethod
    def from_dict(cls, data: object) -> TaskEvent:
        """Parse and validate :meth:`to_dict`'s output.

        The required keys are ``type``, ``task_id``, ``state``, ``timestamp`` and
        ``order``; the others default to ``null``. Unknown keys are ignored, so that
        a consumer keeps working while workers are upgraded to a newer schema.

        Raises:
            ValueError: ``data`` is not a mapping, a required key is missing, or
                any field is invalid.
        """
        data = require_mapping("event", data)
        missing = [k for k in ("type", "task_id", "state", "timestamp", "order") if k not in data]
        if missing:
            raise ValueError(f"event is missing {', '.join(missing)}")
        progress = data.get("progress")
        retry = data.get("retry")
        return cls(
            type=data["type"],
            task_id=data["task_id"],
            task_name=data.get("task_name"),
            state=data["state"],
            timestamp=data["timestamp"],
            order=data["order"],
            progress=None if progress is None else Progress.from_dict(progress),
            result=data.get("result"),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
            retry=None if retry is None else RetryInfo.from_dict(retry),
            correlation_id=data.get("correlation_id"),
            eta=data.get("eta"),
        )

    def to_layer_message(self) -> dict[str, Any]:
        """The channel-layer message: ``{"type": <event type>, "event": to_dict()}``."""
        return {"type": self.type, "event": self.to_dict()}
