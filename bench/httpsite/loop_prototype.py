"""Measurement prototypes, not part of the package: publish from the event-loop thread.

They answer one question for the HTTP benchmark: what would a dispatch cost if it
did not hop to a publishing thread at all? The message is the direct path's
(:mod:`aceleryctl.wires.redis_message`: Celery's ``as_task_v2``, kombu's serializer, the Redis
channel's envelope), built on the loop thread with the settings snapshot read
once. Two ways to write it:

* :func:`publish_add` sends one ``LPUSH`` per call with ``redis.asyncio``;
* :func:`publish_add_minimal` hands the message to a minimal Redis protocol on
  the loop (:mod:`bench.httpsite.loop_protocol`) that writes everything queued
  in one loop turn as one ``LPUSH`` per key, in one ``write``.

What they leave out, and why they are not the product: no deadline and no
circuit breaker (a paused Redis would hold every request, so the benchmark's
pause figures skip them), no ``before_task_publish``/``after_task_publish``
receivers beyond what the benchmark site has (none), and every caller's message
building runs on the loop. Loop-thread only; the first call on a loop blocks
once to open a kombu channel and declare the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio

from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.wires.redis_message import DirectPath, Prepared, Snapshot
from bench.httpsite.loop_protocol import LpushWriter
from bench.httpsite.tasks import add, app

__all__ = ["publish_add", "publish_add_minimal"]


class _Publisher:
    """What one event loop needs: a kombu channel for the envelope functions, the
    direct path with its settings snapshot, and the two ways to write."""

    def __init__(self, celery_app: Any = None, task: Any = None) -> None:
        self.app = app if celery_app is None else celery_app
        self.task = add if task is None else task
        connection: Any = self.app.connection_for_write()
        connection.ensure_connection(max_retries=1)
        self.channel = connection.default_channel
        self.direct = DirectPath(self.app)
        snapshot: Snapshot | None = self.direct.configured()
        if snapshot is None:
            raise RuntimeError("the benchmark app does not qualify for the direct path")
        self.snapshot = snapshot
        self.declared = False
        self.client = redis.asyncio.Redis.from_url(self.app.conf.broker_url)
        self.writer: LpushWriter | None = None
        self.connecting: asyncio.Future[LpushWriter] | None = None

    def build(self, x: int, y: int) -> Prepared:
        options = {"task_id": new_task_id()}
        prepared = self.direct.prepare(self.task, (x, y), {}, options, self.channel, self.snapshot)
        if prepared is None:
            raise RuntimeError("the benchmark task does not qualify for the direct path")
        if not self.declared:
            prepared.queue.bind(self.channel).declare()  # once, as the product does
            self.declared = True
        return prepared


async def connect_writer(celery_app: Any) -> LpushWriter:
    """A :class:`LpushWriter` on ``celery_app``'s broker (``redis://HOST:PORT/DB``).

    Raises:
        OSError: the connection failed.
        RuntimeError: ``SELECT`` was refused.
    """
    url = urlsplit(celery_app.conf.broker_url)
    db = int(url.path.strip("/") or 0)
    return await LpushWriter.connect(url.hostname or "127.0.0.1", url.port or 6379, db)


_publishers: dict[asyncio.AbstractEventLoop, _Publisher] = {}


def _publisher() -> _Publisher:
    loop = asyncio.get_running_loop()
    publisher = _publishers.get(loop)
    if publisher is None:
        publisher = _publishers[loop] = _Publisher()
    return publisher


async def publish_add(x: int, y: int) -> str:
    """Build ``add(x, y)``'s message on this loop thread; ``LPUSH`` it with redis.asyncio.

    Returns:
        The task id.

    Raises:
        redis.RedisError: the write failed.
    """
    publisher = _publisher()
    prepared = publisher.build(x, y)
    await publisher.client.lpush(prepared.key, prepared.payload)
    return prepared.task_id


async def publish_add_minimal(x: int, y: int) -> str:
    """Build ``add(x, y)``'s message on this loop thread; write it with the calls
    queued in the same loop turn.

    Returns:
        The task id.

    Raises:
        ConnectionError: the connection was lost before Redis answered.
        RuntimeError: Redis answered with an error.
    """
    publisher = _publisher()
    prepared = publisher.build(x, y)
    writer = publisher.writer
    if writer is None:
        if publisher.connecting is None:  # the first callers share one connect
            publisher.connecting = asyncio.ensure_future(connect_writer(publisher.app))
        writer = publisher.writer = await publisher.connecting
    await writer.push(prepared.key, prepared.payload)
    return prepared.task_id
