"""The values inside a task event: order keys, group names, limits, summaries, field checks.

The pieces :class:`~aceleryctl.events.TaskEvent` is built from and validated
with, apart from the event classes themselves: the :class:`Phase` of each event
type and the order key it yields (described in :mod:`aceleryctl.events`, "The
order key"), the channel-layer group of a task, the size limits, the scrubbed and
clipped summaries of messages, errors and results, and the checks of single
values. Private: the public names are imported from :mod:`aceleryctl.events`.

This module imports only the standard library and :mod:`aceleryctl._logging`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any, Final

from aceleryctl._logging import Redactor, scrub_credentials

__all__ = [
    "ATTEMPT_STRIDE",
    "GROUP_PREFIX",
    "MAX_ATTEMPT",
    "MAX_NAME_LENGTH",
    "MAX_ORDER",
    "MAX_RESULT_BYTES",
    "MAX_SEQ",
    "MAX_TEXT_LENGTH",
    "PHASE_OF_TYPE",
    "PHASE_STRIDE",
    "TRACEBACK_MARKER",
    "Phase",
    "check_eta",
    "check_json",
    "check_text",
    "clip_text",
    "group_name",
    "is_int",
    "is_number",
    "order_key",
    "require_mapping",
    "split_order",
    "summarize_error",
    "summarize_result",
]


class Phase(IntEnum):
    """Rank of an event inside one attempt (the middle digit of the order key)."""

    SENT = 0
    RECEIVED = 1
    STARTED = 2
    PROGRESS = 3
    RETRIED = 4
    TERMINAL = 5


PHASE_OF_TYPE: Final[Mapping[str, Phase]] = {
    "task.deferred": Phase.SENT,
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
TRACEBACK_MARKER = "Traceback (most recent call last)"


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
    """The order key of an event (see :mod:`aceleryctl.events`, "The order key").

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
    if not is_int(order) or not 0 <= order <= MAX_ORDER:
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
    cut = text.find(TRACEBACK_MARKER)
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


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_text(name: str, value: object, limit: int, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(
            f"{name} must be a string of at most {limit} characters, got {value!r:.80}"
        )


def check_eta(value: object, name: str = "eta") -> None:
    """Check an eta: ISO 8601 text of at most 64 characters. Raises ValueError."""
    check_text(name, value, 64)
    try:
        datetime.fromisoformat(value)  # type: ignore[arg-type]  # a str: checked above
    except ValueError:
        raise ValueError(f"{name} must be ISO 8601, got {value!r}") from None


def check_json(value: object, depth: int = 0) -> None:
    if depth > 32:
        raise ValueError("result is nested too deep")
    if value is None or isinstance(value, bool | str) or is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("result contains a non-finite float")
        return
    if isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("result has a non-string key")
            check_json(item, depth + 1)
        return
    raise ValueError(f"result contains a {type(value).__name__}, which is not JSON")


def require_mapping(name: str, data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be an object, got {type(data).__name__}")
    return data
