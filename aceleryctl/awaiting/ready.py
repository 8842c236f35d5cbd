"""Waiting for one task's final meta: listen on Redis, or poll other backends.

On Celery's Redis result backend a wait listens on the task's channel through
the loop's shared :class:`~aceleryctl.awaiting.subscriber.Subscriber`, and once
the subscription is confirmed reads the stored meta: a task that finished
before the subscription is found by the read, one that finishes after it by
the message (Celery stores and publishes in one pipeline). No thread, no
polling. A subscriber connection lost for good is replaced, after a pause,
up to :data:`MAX_RECONNECTS` times in a row.

Other backends are polled (:mod:`aceleryctl.awaiting.polling`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery, states
from celery.backends.base import Backend
from celery.backends.redis import RedisBackend
from celery.backends.rpc import RPCBackend

from aceleryctl.awaiting.backoff import delays
from aceleryctl.awaiting.clients import RedisEndpoint, endpoint_for
from aceleryctl.awaiting.meta import decode_stored, read_stored
from aceleryctl.awaiting.polling import poll_ready_meta
from aceleryctl.awaiting.subscriber import SubscriberLost

__all__ = ["MAX_RECONNECTS", "wait_ready_meta"]

#: Subscriber connections lost in a row (no subscription confirmed in between)
#: before the wait gives up and raises the connection's error.
MAX_RECONNECTS = 5


async def wait_ready_meta(app: Celery, backend: Backend, task_id: str) -> dict[str, Any]:
    """The decoded meta of ``task_id`` once it is ``SUCCESS``, ``FAILURE`` or ``REVOKED``.

    ``backend`` (any thread's instance of the app's result backend) gives the
    key, channel and decoding; ``app`` is used for the polling path, where each
    read runs in the loop's default executor through that thread's backend.
    Waits forever: bound it with ``asyncio.timeout``. Cancelling it
    unsubscribes (Redis) or stops polling, leaving nothing behind.

    Raises: ``NotImplementedError`` for the ``rpc://`` backend (nothing is
    stored to read); the result backend's connection error when Redis cannot be reached
    (after :data:`MAX_RECONNECTS` attempts in a row), the backend's error on
    other backends, kombu's ``ContentDisallowed`` or the serializer's error for
    a meta that cannot be decoded.
    """
    if isinstance(backend, RPCBackend):
        raise NotImplementedError(
            "aget() cannot wait on the rpc:// result backend: its results are messages "
            "sent to the reply queue of the thread that published the task. Use a "
            "result backend that stores results (Redis, a database), or result.get() "
            "on the publishing thread."
        )
    endpoint = endpoint_for(backend)
    if endpoint is None or not isinstance(backend, RedisBackend):
        return await poll_ready_meta(app, task_id)
    pauses = delays()
    lost_in_a_row = 0
    while True:
        wait = _ChannelWait(endpoint, backend, task_id)
        try:
            return await wait.run()
        except SubscriberLost as lost:
            lost_in_a_row = 1 if wait.subscribed else lost_in_a_row + 1
            if lost_in_a_row >= MAX_RECONNECTS:
                raise (lost.__cause__ or lost) from lost
        await asyncio.sleep(next(pauses))


class _ChannelWait:
    """One wait on one task's channel: a listener of the loop's subscriber."""

    def __init__(self, endpoint: RedisEndpoint, backend: RedisBackend, task_id: str) -> None:
        self._endpoint = endpoint
        self._backend = backend
        self._task_id = task_id
        key: bytes | str = backend.get_key_for_task(task_id)  # bytes on Celery's Redis
        self._channel = key.encode() if isinstance(key, str) else key
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reads: set[asyncio.Task[None]] = set()
        #: Whether Redis confirmed this wait's subscription.
        self.subscribed = False

    async def run(self) -> dict[str, Any]:
        subscriber = self._endpoint.subscriber
        try:
            await subscriber.listen(self._channel, self)
            self.subscribed = True
            if not self._ready.done():
                await self._read_stored()
            return await self._ready
        finally:
            subscriber.unlisten(self._channel, self)
            for task in self._reads:
                task.cancel()

    # -- Listener ------------------------------------------------------------------

    def on_message(self, payload: bytes) -> None:
        if self._ready.done():
            return
        try:
            meta = decode_stored(self._backend, payload)
        except Exception as exc:
            self._ready.set_exception(exc)
            return
        self._offer(meta)

    def on_resync(self) -> None:
        if self._ready.done():
            return
        task = asyncio.get_running_loop().create_task(self._read_stored())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def on_lost(self, error: SubscriberLost) -> None:
        if not self._ready.done():
            self._ready.set_exception(error)

    # -- reading the stored meta -----------------------------------------------------

    async def _read_stored(self) -> None:
        try:
            meta = await read_stored(self._endpoint, self._backend, self._task_id)
        except Exception as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            return
        self._offer(meta)

    def _offer(self, meta: dict[str, Any] | None) -> None:
        if meta is None or self._ready.done():
            return
        if meta.get("status") in states.READY_STATES:
            self._ready.set_result(meta)
