"""A measurement prototype, not part of the package: publish from the event-loop thread.

It answers one question for the HTTP benchmark: what would a dispatch cost if it
did not hop to a publishing thread at all? The message is the direct path's
(:mod:`aceleryctl._direct`: Celery's ``as_task_v2``, kombu's serializer, the Redis
channel's envelope), built on the loop thread, and written with ``redis.asyncio``
as one ``LPUSH`` per call. The settings snapshot is read once, at first use.

What it leaves out, and why it is not the product: no deadline and no circuit
breaker (a paused Redis would hold every request, so the benchmark's pause
figures skip it), no batching, no ``before_task_publish``/``after_task_publish``
receivers beyond what the benchmark site has (none), and every caller's message
building runs on the loop. Loop-thread only; the first call blocks once to open
a kombu channel.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from aceleryctl._direct import DirectMessage, DirectPath, Snapshot
from aceleryctl._ids import new_task_id
from bench.httpsite.tasks import add, app

__all__ = ["publish_add"]


class _Publisher:
    """What one event loop needs: an asyncio Redis client, a kombu channel for
    the envelope functions, and the direct path with its settings snapshot."""

    def __init__(self) -> None:
        self.client = redis.asyncio.Redis.from_url(app.conf.broker_url)
        connection: Any = app.connection_for_write()
        connection.ensure_connection(max_retries=1)
        self.channel = connection.default_channel
        self.direct = DirectPath(app)
        snapshot: Snapshot | None = self.direct.configured()
        if snapshot is None:
            raise RuntimeError("the benchmark app does not qualify for the direct path")
        self.snapshot = snapshot
        self.declared = False


_publishers: dict[asyncio.AbstractEventLoop, _Publisher] = {}


async def publish_add(x: int, y: int) -> str:
    """Build ``add(x, y)``'s message on this loop thread and ``LPUSH`` it.

    Returns:
        The task id.

    Raises:
        redis.RedisError: the write failed.
    """
    loop = asyncio.get_running_loop()
    publisher = _publishers.get(loop)
    if publisher is None:
        publisher = _publishers[loop] = _Publisher()
    task_id = new_task_id()
    message = DirectMessage(add, (x, y), {}, {"task_id": task_id})
    prepared = publisher.direct.prepare(message, publisher.channel, publisher.snapshot)
    if prepared is None:
        raise RuntimeError("the benchmark task does not qualify for the direct path")
    if not publisher.declared:
        prepared.queue.bind(publisher.channel).declare()  # once, as the product does
        publisher.declared = True
    await publisher.client.lpush(prepared.key, prepared.payload)
    return task_id
