"""Celery result-backend internals the awaiting side (``aceleryctl.awaiting``) relies on.

Awaiting a result without a thread means talking to Celery's Redis result backend
with ``redis.asyncio``: same server, same database, same credentials and TLS
settings as the backend's own (blocking) client, which Celery builds from the
undocumented ``RedisBackend.connparams``. And a result whose final state was read
on the event loop is handed back to the caller through the result object's own
cache, so that ``result.state`` / ``result.get()`` afterwards need no round trip.

Each function says what happens when the internal has changed: the awaiting side
then falls back to the backend's public, blocking API run in a thread.
"""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.asyncio
from celery.backends.base import Backend
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.result import AsyncResult

__all__ = ["REDIS_CLIENT_METHODS", "async_redis_pool_kwargs", "set_result_cache"]

#: The ``RedisBackend`` members that make it store a task's meta under
#: ``get_key_for_task(id)`` with one ``SET`` and ``PUBLISH`` it on the same name,
#: through a client built from ``connparams``. A subclass overriding one of them
#: stores or connects differently: it is waited on through its public API instead.
REDIS_CLIENT_METHODS: Final = (
    "get",
    "_set",
    "client",
    "_create_client",
    "_get_client",
    "_get_pool",
    "ConnectionPool",
    "get_key_for_task",
    "_get_key_for",
    "decode_result",
)

#: redis-py's blocking connection classes and their ``redis.asyncio`` twins.
_ASYNC_CONNECTION_CLASSES: Final[dict[type, type]] = {
    redis.SSLConnection: redis.asyncio.SSLConnection,
    redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
    redis.Connection: redis.asyncio.Connection,
}


def async_redis_pool_kwargs(backend: Backend) -> dict[str, Any] | None:
    """Keyword arguments for a ``redis.asyncio.ConnectionPool`` like ``backend``'s own.

    Returns ``None`` when ``backend`` is not Celery's Redis backend storing and
    publishing as ``RedisBackend`` does (another backend, the Sentinel backend, a
    subclass overriding how it stores or connects, a custom connection pool or
    connection class): the caller then uses the backend's blocking API in a
    thread. Pure; raises nothing.

    Internals used: ``RedisBackend.connparams`` (the blocking pool's keyword
    arguments, built from the URL and the ``redis_*`` settings),
    ``RedisBackend._ConnectionPool`` (a custom pool class given to the
    constructor, or redis-py's own once the client is made) and the methods
    named in :data:`REDIS_CLIENT_METHODS`, none overridden below ``RedisBackend``.
    """
    if not isinstance(backend, RedisBackend) or isinstance(backend, SentinelBackend):
        return None
    mro = type(backend).__mro__
    overriders = mro[: mro.index(RedisBackend)]
    if any(name in klass.__dict__ for klass in overriders for name in REDIS_CLIENT_METHODS):
        return None
    # Set lazily to redis-py's own pool class on first use; anything else was
    # given to the constructor.
    if getattr(backend, "_ConnectionPool", None) not in (None, redis.ConnectionPool):
        return None
    params = getattr(backend, "connparams", None)
    if not isinstance(params, dict):
        return None
    kwargs = dict(params)
    connection_class = kwargs.pop("connection_class", redis.Connection)
    async_class = _ASYNC_CONNECTION_CLASSES.get(connection_class)
    if async_class is None:
        return None
    if async_class is not redis.asyncio.Connection:
        kwargs["connection_class"] = async_class
    if kwargs.get("max_connections") is None:
        kwargs.pop("max_connections", None)
    return kwargs


def set_result_cache(result: AsyncResult[Any], meta: dict[str, Any]) -> None:
    """Record a ready task's decoded ``meta`` in ``result``, as ``get()`` would.

    After this, ``result.state``, ``result.result`` and ``result.get()`` answer
    from the object without asking the backend. ``meta`` must be what
    ``backend.decode_result`` returned (its exception already rebuilt) and in a
    ready state. Raises nothing of its own.

    Internal used: ``AsyncResult._maybe_set_cache(meta)``, which Celery's own
    waiting calls with each decoded meta it receives (it caches only ready
    states and fires the result's ``on_ready`` promise). Were it gone, the
    result simply keeps no cache and asks the backend when read.
    """
    setter = getattr(result, "_maybe_set_cache", None)
    if setter is not None:
        setter(meta)
