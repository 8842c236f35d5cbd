"""One ``redis.asyncio`` client per (event loop, Redis result backend).

Awaiting a result on the Redis result backend happens on the caller's event
loop, with ``redis.asyncio``: no thread is held. The connections belong to the
loop that made them (asyncio streams cannot move between loops), so the
clients are kept per loop, keyed by the backend's connection parameters: every
``aget`` and ``aread_meta`` on one loop against one backend shares one
connection pool, one batch of reads and one subscriber connection (see
:mod:`aceleryctl.awaiting.subscriber`).

A closed loop's endpoints are forgotten on the next call from any loop; close
them before the loop ends with :func:`aclose_endpoints` (the ASGI lifespan of
:func:`aceleryctl.asgi.with_lifespan` does), or their sockets are left to the
garbage collector.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import TYPE_CHECKING, Any

import redis.asyncio
from celery.backends.base import Backend

from aceleryctl.awaiting.reads import BatchedReads
from aceleryctl.compat.celery_results import async_redis_pool_kwargs

if TYPE_CHECKING:
    from aceleryctl.awaiting.subscriber import Subscriber

__all__ = ["RedisEndpoint", "aclose_endpoints", "endpoint_for"]

#: Connection parameters that only label the client; two backends differing
#: only in them share an endpoint.
_LABELS = frozenset({"driver_info", "lib_name", "lib_version"})


class RedisEndpoint:
    """A Redis result backend as seen from one event loop: client, reads, subscriber.

    Built by :func:`endpoint_for`; used only on its loop's thread.
    """

    def __init__(self, pool_kwargs: dict[str, Any]) -> None:
        self.pool_kwargs = pool_kwargs
        self.client: redis.asyncio.Redis = redis.asyncio.Redis(
            connection_pool=redis.asyncio.ConnectionPool(**pool_kwargs)
        )
        #: Reads of stored metas, batched per loop turn.
        self.reads = BatchedReads(self.client)
        self._subscriber: Subscriber | None = None

    @property
    def subscriber(self) -> Subscriber:
        """The endpoint's shared subscriber, made on first use and after it failed."""
        from aceleryctl.awaiting.subscriber import Subscriber

        if self._subscriber is None or self._subscriber.closed:
            self._subscriber = Subscriber(self.client)
        return self._subscriber

    async def aclose(self) -> None:
        """Stop the subscriber and the reads; close every connection of this endpoint."""
        if self._subscriber is not None:
            await self._subscriber.aclose()
        await self.reads.aclose()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


_lock = threading.Lock()
_endpoints: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RedisEndpoint]] = (
    weakref.WeakKeyDictionary()
)


def endpoint_for(backend: Backend) -> RedisEndpoint | None:
    """The running loop's endpoint for ``backend``, or ``None`` if it is not Redis.

    ``None`` means: not Celery's Redis backend as it stores and publishes
    results (see :func:`aceleryctl.compat.celery_results.async_redis_pool_kwargs`),
    so the caller falls back to the backend's blocking API in a thread. Must be
    called on a running event loop (``RuntimeError`` otherwise). Makes no
    connection: the client connects on its first command.
    """
    loop = asyncio.get_running_loop()
    kwargs = async_redis_pool_kwargs(backend)
    if kwargs is None:
        return None
    key = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k not in _LABELS))
    with _lock:
        # An endpoint's tasks hold its loop, so the weak key alone never lets a
        # loop go: forget closed loops here (their sockets go to the collector).
        for closed in [other for other in _endpoints if other.is_closed()]:
            del _endpoints[closed]
        per_loop = _endpoints.setdefault(loop, {})
        endpoint = per_loop.get(key)
        if endpoint is None:
            endpoint = per_loop[key] = RedisEndpoint(kwargs)
    return endpoint


async def aclose_endpoints() -> None:
    """Close the running loop's Redis endpoints (clients and subscribers).

    Waits in progress on them fail with the connection error; later waits open
    new connections. Call it before the loop ends (tests, lifespan shutdown).
    """
    loop = asyncio.get_running_loop()
    with _lock:
        endpoints = list(_endpoints.pop(loop, {}).values())
    for endpoint in endpoints:
        await endpoint.aclose()
