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

This module imports only the standard library and :mod:`aceleryctl._logging`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Final

from aceleryctl._logging import Redactor, scrub_credentials
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


class Phase(IntEnum):
    """Rank of an event inside one attempt (the middle digit of the order key)."""

    SENT = 0
    RECEIVED = 1
    STARTED = 2
    PROGRESS = 3
    RETRIED = 4
    TERMINAL = 5


PHASE_OF_TYPE: Final[Mapping[str, Phase]] = {
    "task.sent": Phase.SENT,
    "task.received": Phase.RECEIVED,
    "task.started": Phase.STARTED,
    "task.progress": Phase.PROGRESS,
    "task.retried": Phase.RETRIED,
    "task.succeeded": Phase.TERMINAL,
    "task.failed": Phase.TERMINAL,
    "task.revoked": Phase.TERMINAL,
    "task.rejected": Phase.TERMINAL,
}

PHASE_STRIDE: Final = 10**9
ATTEMPT_STRIDE: Final = 10 * PHASE_STRIDE
MAX_SEQ: Final = PHASE_STRIDE - 1
MAX_ATTEMPT: Final = 900_000
MAX_ORDER: Final = MAX_ATTEMPT * ATTEMPT_STRIDE + Phase.TERMINAL * PHASE_STRIDE + MAX_SEQ

#: Bytes of the JSON encoding of a result summary, at most.
MAX_RESULT_BYTES: Final = 2048
#: Characters of a progress message, an error message or a retry reason, at most.
MAX_TEXT_LENGTH: Final = 500
#: Characters of a task id or task name, at most.
MAX_NAME_LENGTH: Final = 255

GROUP_PREFIX: Final = "aceleryctl.task."
_GROUP_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")
_MAX_GROUP_LENGTH: Final = 99  # channels requires len(name) < 100
_TRACEBACK_MARKER = "Traceback (most recent call last)"


def group_name(task_id: str) -> str:
    """The channel-layer group of a task: ``aceleryctl.task.<task_id>``.

    Raises:
        ValueError: the resulting name is not a valid channels group name (ASCII
            letters, digits, ``-``, ``_`` and ``.``, fewer than 100 characters);
            Celery's own uuid4 task ids always fit.
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"a task id must be a non-empty string, got {task_id!r}")
    name = GROUP_PREFIX + task_id
    if len(name) > _MAX_GROUP_LENGTH or not _GROUP_NAME.match(name):
        raise ValueError(
            f"task id {task_id[:120]!r} cannot name a channel-layer group: use ASCII "
            f"letters, digits, '-', '_' or '.', at most {_MAX_GROUP_LENGTH - len(GROUP_PREFIX)} "
            "characters"
        )
    return name


def order_key(attempt: int, phase: int, seq: int = 0) -> int:
    """The order key of an event (see the module docstring).

    ``attempt`` and ``seq`` saturate at :data:`MAX_ATTEMPT` and :data:`MAX_SEQ`.

    Raises:
        ValueError: a negative ``attempt`` or ``seq``, or ``phase`` not a :class:`Phase`.
    """
    if attempt < 0 or seq < 0:
        raise ValueError(f"attempt and seq must be >= 0, got {attempt!r} and {seq!r}")
    if not Phase.SENT <= phase <= Phase.TERMINAL:
        raise ValueError(f"phase must be 0-5, got {phase!r}")
    return min(attempt, MAX_ATTEMPT) * ATTEMPT_STRIDE + phase * PHASE_STRIDE + min(seq, MAX_SEQ)


def split_order(order: int) -> tuple[int, Phase, int]:
    """``(attempt, phase, seq)`` of an order key; the inverse of :func:`order_key`.

    Raises:
        ValueError: ``order`` is not a key :func:`order_key` can produce.
    """
    if not _is_int(order) or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an int in [0, {MAX_ORDER}], got {order!r}")
    attempt, rest = divmod(order, ATTEMPT_STRIDE)
    phase, seq = divmod(rest, PHASE_STRIDE)
    if phase > Phase.TERMINAL:
        raise ValueError(f"order {order} has phase digit {phase}; phases are 0-5")
    return attempt, Phase(phase), seq


def clip_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """``text`` cut to at most ``limit`` characters, marking the cut with ``...(+N)``."""
    if len(text) <= limit:
        return text
    keep = max(limit - len(f"...(+{len(text)})"), 0)
    return (text[:keep] + f"...(+{len(text) - keep})")[:limit]


def summarize_error(message: object, limit: int = MAX_TEXT_LENGTH) -> str:
    """An exception message fit for an event: credentials in URLs masked, anything
    from an embedded ``Traceback (most recent call last)`` on dropped, clipped to
    ``limit`` characters. Never raises."""
    try:
        text = message if isinstance(message, str) else str(message)
    except Exception:
        text = f"<unprintable {type(message).__name__}>"
    cut = text.find(_TRACEBACK_MARKER)
    if cut >= 0:
        text = text[:cut].rstrip()
    return clip_text(scrub_credentials(text), limit)


_SUMMARY_TIERS: Final = ((200, 50, 4), (64, 16, 3), (32, 8, 2), (16, 4, 1))


def summarize_result(
    value: object, redactor: Redactor | None = None, max_bytes: int = MAX_RESULT_BYTES
) -> Any:
    """A JSON-safe picture of a task's return value whose JSON encoding fits
    ``max_bytes`` (UTF-8 bytes).

    Values under secret-looking keys are masked (``redactor``'s keys; default
    :data:`aceleryctl.DEFAULT_REDACT_KEYS`), strings and containers truncated
    harder until the summary fits; as a last resort it is the clipped JSON text.
    Non-finite floats become strings. Never raises.
    """
    keys = (redactor or Redactor()).keys
    for length, items, depth in _SUMMARY_TIERS:
        limited = Redactor(keys=keys, max_value_length=length, max_items=items, max_depth=depth)
        summary = _finite(limited.sanitize(value))
        text = _dumps(summary)
        if text is not None and len(text.encode()) <= max_bytes:
            return summary
    text = _dumps(summary) or "<unrepresentable>"
    clipped = clip_text(text, max_bytes // 4)  # up to 4 bytes a character, plus quotes
    while len(json.dumps(clipped).encode()) > max_bytes:
        clipped = clip_text(clipped, len(clipped) // 2)
    return clipped


def _dumps(value: object) -> str | None:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


# -- validation helpers -------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_text(name: str, value: object, limit: int, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(
            f"{name} must be a string of at most {limit} characters, got {value!r:.80}"
        )


def _check_json(value: object, depth: int = 0) -> None:
    if depth > 32:
        raise ValueError("result is nested too deep")
    if value is None or isinstance(value, bool | str) or _is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("result contains a non-finite float")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("result has a non-string key")
            _check_json(item, depth + 1)
        return
    raise ValueError(f"result contains a {type(value).__name__}, which is not JSON")


def _require_mapping(name: str, data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be an object, got {type(data).__name__}")
    return data


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
        if not _is_number(self.current):
            raise ValueError(f"progress current must be a finite number, got {self.current!r}")
        if self.total is not None and not _is_number(self.total):
            raise ValueError(f"progress total must be a finite number or None, got {self.total!r}")
        _check_text("progress message", self.message, MAX_TEXT_LENGTH)

    def to_dict(self) -> dict[str, Any]:
        """``{"current": ..., "total": ..., "message": ...}``."""
        return {"current": self.current, "total": self.total, "message": self.message}

    @classmethod
    def from_dict(cls, data: object) -> Progress:
        """Parse :meth:`to_dict`'s output. Raises ValueError on bad input."""
        data = _require_mapping("progress", data)
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
        if not _is_int(self.attempt) or self.attempt < 1:
            raise ValueError(f"retry attempt must be an int >= 1, got {self.attempt!r}")
        if self.max_retries is not None and (not _is_int(self.max_retries) or self.max_retries < 0):
            raise ValueError(f"max_retries must be an int >= 0 or None, got {self.max_retries!r}")
        _check_text("retry reason", self.reason, MAX_TEXT_LENGTH)
        if self.eta is not None:
            _check_text("retry eta", self.eta, 64)
            try:
                datetime.fromisoformat(self.eta)
            except ValueError:
                raise ValueError(f"retry eta must be ISO 8601, got {self.eta!r}") from None

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
        data = _require_mapping("retry", data)
        return cls(
            data.get("attempt"),  # type: ignore[arg-type]
            data.get("max_retries"),
            data.get("reason"),
            data.get("eta"),
        )


_ERROR_TYPES: Final = frozenset({"task.failed", "task.retried", "task.revoked", "task.rejected"})


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

    def __post_init__(self) -> None:
        expected_state = STATE_OF_TYPE.get(self.type) if isinstance(self.type, str) else None
        if expected_state is None:
            raise ValueError(f"unknown event type {self.type!r}; the types are {EVENT_TYPES}")
        if self.state != expected_state:
            raise ValueError(f"{self.type} has state {expected_state!r}, got {self.state!r}")
        _check_text("task_id", self.task_id, MAX_NAME_LENGTH, optional=False)
        if not self.task_id:
            raise ValueError("task_id must not be empty")
        _check_text("task_name", self.task_name, MAX_NAME_LENGTH)
        if not _is_number(self.timestamp) or self.timestamp < 0:
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
            _check_json(self.result)
            size = len(json.dumps(self.result, ensure_ascii=False).encode())
            if size > MAX_RESULT_BYTES:
                raise ValueError(f"result is {size} bytes of JSON; at most {MAX_RESULT_BYTES}")
        if (self.error_type is not None or self.error_message is not None) and (
            self.type not in _ERROR_TYPES
        ):
            raise ValueError(f"error fields are not allowed on {self.type}")
        _check_text("error_type", self.error_type, MAX_NAME_LENGTH)
        _check_text("error_message", self.error_message, MAX_TEXT_LENGTH)
        if self.error_message is not None and _TRACEBACK_MARKER in self.error_message:
            raise ValueError("error_message must not contain a traceback")
        if self.correlation_id is not None and not is_valid_correlation_id(self.correlation_id):
            raise ValueError(f"correlation_id is not a sane token: {self.correlation_id!r:.80}")

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
        data = _require_mapping("event", data)
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
        )

    def to_layer_message(self) -> dict[str, Any]:
        """The channel-layer message: ``{"type": <event type>, "event": to_dict()}``."""
        return {"type": self.type, "event": self.to_dict()}
