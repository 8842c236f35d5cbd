"""Read the task messages kombu's Redis transport left in a queue, without consuming.

kombu stores each message as a JSON envelope in a Redis list named after the queue
(``<queue>\\x06\\x16<n>`` for priority ``n`` > 0). This reads them with LRANGE, so
a test can see what the publisher really sent.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, cast

import redis

__all__ = ["BrokerMessage", "queue_keys", "read_queue"]

PRIORITY_SEPARATOR = "\x06\x16"


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One message as stored by kombu: envelope fields and the raw body bytes."""

    key: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str
    content_encoding: str
    body: bytes

    @property
    def task_id(self) -> str:
        """The Celery task id (protocol 2 keeps it in the headers)."""
        return str(self.headers["id"])

    @property
    def task_name(self) -> str:
        """The Celery task name."""
        return str(self.headers["task"])


def queue_keys(client: redis.Redis, queue: str) -> list[str]:
    """The Redis keys holding ``queue``'s messages (the plain key and priority keys)."""
    keys = [queue]
    for raw in client.scan_iter(match=f"{queue}{PRIORITY_SEPARATOR}*", count=1000):
        keys.append(raw.decode() if isinstance(raw, bytes) else str(raw))
    return keys


def read_queue(client: redis.Redis, queue: str) -> list[BrokerMessage]:
    """Every message waiting in ``queue`` (all priorities), oldest first per key."""
    messages: list[BrokerMessage] = []
    for key in queue_keys(client, queue):
        raw_items = cast("list[bytes]", client.lrange(key, 0, -1))
        for raw in reversed(raw_items):  # LPUSH: the newest is first
            envelope = json.loads(raw)
            properties = envelope.get("properties", {})
            body = envelope["body"]
            if properties.get("body_encoding") == "base64":
                body_bytes = base64.b64decode(body)
            else:
                body_bytes = body.encode() if isinstance(body, str) else bytes(body)
            messages.append(
                BrokerMessage(
                    key=key,
                    headers=envelope.get("headers", {}),
                    properties=properties,
                    content_type=envelope.get("content-type", ""),
                    content_encoding=envelope.get("content-encoding", ""),
                    body=body_bytes,
                )
            )
    return messages
