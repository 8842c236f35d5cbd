"""The websocket wire protocol of :class:`aceleryctl.consumers.TaskEventsConsumer`.

Frames are JSON text, one object each. Client to server::

    {"type": "subscribe", "task_id": "<id>", "token": "<token>", "after": <order> | null,
     "late": true | false}
    {"type": "unsubscribe", "task_id": "<id>"}

Server to client::

    {"type": "snapshot", "task_id": "<id>", "event": {...} | null}
    {"type": "event", "event": {...}}
    {"type": "error", "code": <int>, "message": "<text>", "task_id": "<id>" | null}

This module only parses and builds frames; it does no I/O and runs on any thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from aceleryctl.events import TaskEvent, group_name, split_order

__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_MALFORMED",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_TOKEN_MISSING",
    "CLOSE_TOO_LARGE",
    "CLOSE_TRY_AGAIN",
    "ERROR_ALREADY_SUBSCRIBED",
    "ERROR_SNAPSHOT_UNAVAILABLE",
    "ERROR_TOO_MANY_SUBSCRIPTIONS",
    "ProtocolError",
    "Subscribe",
    "Unsubscribe",
    "encode",
    "error_frame",
    "event_frame",
    "parse_client_frame",
    "snapshot_frame",
]

# Close codes (also the ``code`` of the error frame sent just before the close).
#: Too many malformed frames on one connection.
CLOSE_MALFORMED: Final = 4400
#: A subscribe frame without a token.
CLOSE_TOKEN_MISSING: Final = 4401
#: A tampered token, one for another task or another user/session; a foreign Origin.
CLOSE_FORBIDDEN: Final = 4403
#: A frame larger than ``WEBSOCKET_MAX_FRAME_BYTES``.
CLOSE_TOO_LARGE: Final = 4413
#: An expired token: fetch a new one, then reconnect.
CLOSE_TOKEN_EXPIRED: Final = 4419
#: The server cannot keep up (this client fell behind, or the channel layer is
#: unavailable): reconnect after a backoff and resume with ``after``.
CLOSE_TRY_AGAIN: Final = 1013

# Error codes that leave the connection open.
#: Also sent, without closing, for each malformed frame below the limit.
_ERROR_MALFORMED: Final = CLOSE_MALFORMED
ERROR_ALREADY_SUBSCRIBED: Final = 4409
ERROR_TOO_MANY_SUBSCRIPTIONS: Final = 4429
#: The result backend did not answer: the snapshot's ``event`` is what live events
#: said so far (often ``null``); live events keep coming.
ERROR_SNAPSHOT_UNAVAILABLE: Final = 4503


class ProtocolError(ValueError):
    """A client frame that does not follow the protocol; the message is safe to send back."""

    code = _ERROR_MALFORMED


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A client's request to follow ``task_id`` (events with an order above ``after``;
    with ``late``, also those that arrive after a newer one: every event once)."""

    task_id: str
    token: object
    after: int | None
    late: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A client's request to stop following ``task_id``."""

    task_id: str


def _task_id(data: dict[str, Any]) -> str:
    task_id = data.get("task_id")
    if not isinstance(task_id, str):
        raise ProtocolError("task_id must be a string")
    try:
        group_name(task_id)
    except ValueError:
        raise ProtocolError("task_id must be 1-83 ASCII letters, digits, '-', '_' or '.'") from None
    return task_id


def parse_client_frame(text: str) -> Subscribe | Unsubscribe:
    """Parse one client text frame (already checked for size).

    Raises:
        ProtocolError: not JSON, not an object, an unknown ``type``, or a bad field.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("frames must be JSON objects") from None
    if not isinstance(data, dict):
        raise ProtocolError("frames must be JSON objects")
    kind = data.get("type")
    if kind == "subscribe":
        after = data.get("after")
        if after is not None:
            try:
                split_order(after)  # an int in range whose phase digit exists
            except ValueError:
                raise ProtocolError(
                    "after must be null or an order key from a previous event"
                ) from None
        late = data.get("late", False)
        if not isinstance(late, bool):
            raise ProtocolError("late must be true or false")
        return Subscribe(_task_id(data), data.get("token"), after, late)
    if kind == "unsubscribe":
        return Unsubscribe(_task_id(data))
    raise ProtocolError("type must be 'subscribe' or 'unsubscribe'")


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON text of a server frame."""
    return json.dumps(frame, separators=(",", ":"))


def snapshot_frame(task_id: str, event: TaskEvent | None) -> str:
    """``{"type": "snapshot", "task_id": ..., "event": ... | null}`` as JSON text."""
    body = None if event is None else event.to_dict()
    return encode({"type": "snapshot", "task_id": task_id, "event": body})


def event_frame(event: TaskEvent) -> str:
    """``{"type": "event", "event": {...}}`` as JSON text."""
    return encode({"type": "event", "event": event.to_dict()})


def error_frame(code: int, message: str, task_id: str | None = None) -> str:
    """``{"type": "error", "code": ..., "message": ..., "task_id": ...}`` as JSON text."""
    return encode({"type": "error", "code": code, "message": message, "task_id": task_id})
