"""redis-py's asyncio connections, as the loop writer uses them.

The loop writer (:mod:`aceleryctl.wires.loop_writer`) writes already-encoded
commands on one ``redis.asyncio`` connection and reads one reply per command.
It needs three things redis-py does not document: the blocking pool's
``connection_class`` and ``connection_kwargs`` (to make an asyncio connection
like the publishing threads' own), the connection's stream writer (whose
transport the writer takes over once the handshake is done, so that "written"
is exact and replies are parsed as they arrive; the public ``send_packed_command``
writes a step later and reconnects on its own), and a synchronous close
(``_close``), for a writer dropping its connection inside a callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["LOOP_CONNECTION_KEYS", "async_connection_factory", "close_now", "stream_writer"]

#: redis-py's blocking connection classes and their ``redis.asyncio`` twins; any
#: other class (Sentinel's managed connection, a custom one) has no loop writer.
_ASYNC_TWINS: Final[dict[type, type]] = {
    redis.SSLConnection: redis.asyncio.SSLConnection,
    redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
    redis.Connection: redis.asyncio.Connection,
}

#: The blocking connection's arguments carried over: where, who, TLS and the
#: socket bounds. Retries and health checks are left out on purpose (a write is
#: never repeated, and the writer checks nothing between commands).
LOOP_CONNECTION_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "client_name",
        "protocol",
        "encoding",
        "encoding_errors",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


def async_connection_factory(pool: Any) -> tuple[Callable[[], Any] | None, str]:
    """A maker of unconnected ``redis.asyncio`` connections like ``pool``'s own
    blocking ones, and an empty reason; or ``None`` and why there is none.

    Internals used: ``ConnectionPool.connection_class`` and ``connection_kwargs``
    (undocumented; see also :func:`aceleryctl.compat.kombu_redis.new_pool_connection`).
    Were they renamed, there is no factory and every dispatch keeps the publishing
    threads. Pure; raises nothing.
    """
    connection_class = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    twin = _ASYNC_TWINS.get(connection_class) if isinstance(connection_class, type) else None
    if twin is None or not isinstance(kwargs, dict):
        name = getattr(connection_class, "__name__", repr(connection_class))
        return None, f"the broker's connection class {name} has no asyncio twin here"
    given = {k: v for k, v in kwargs.items() if k in LOOP_CONNECTION_KEYS}
    if twin is redis.asyncio.UnixDomainSocketConnection:
        given.pop("host", None)
        given.pop("port", None)

    def new_connection() -> Any:
        return twin(retry=Retry(NoBackoff(), 0), retry_on_timeout=False, **given)

    return new_connection, ""


def stream_writer(connection: Any) -> asyncio.StreamWriter:
    """The connected ``redis.asyncio`` connection's stream writer (``_writer``).

    Raises:
        ConnectionError: the connection is not connected (any more).
    """
    writer = getattr(connection, "_writer", None)
    if writer is None:
        raise ConnectionError("the Redis connection is closed")
    return writer  # type: ignore[no-any-return]


def close_now(connection: Any) -> None:
    """Close a ``redis.asyncio`` connection at once, without awaiting (``_close``:
    closes its stream writer and forgets its streams, so that it does not warn of
    an unclosed connection when collected). Never raises."""
    closer = getattr(connection, "_close", None)
    try:
        if callable(closer):
            closer()
        else:  # the method is gone: close the transport at least
            writer = getattr(connection, "_writer", None)
            if writer is not None:
                writer.close()
    except Exception:  # closing what is already broken
        pass
