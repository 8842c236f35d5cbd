"""kombu and redis-py internals aceleryctl relies on, each behind one function.

The Redis wire writes Celery's message itself, so it must reproduce what kombu's
Redis channel does to a message before its ``LPUSH`` (virtual-channel methods and
two underscored ones) and talk to redis-py's connection below its client API.
The stock wire batches publishes with an API older kombu versions lack. The
worker's progress store encodes with kombu's serializer registry directly. The
worker's run-once guard tells copies of a message apart by what the Redis
transport keeps when it gives an unacked message back. Each
docstring says what is relied on, why, and what happens when it is missing;
``tests/unit/test_compat.py`` checks each one's shape without a network.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from kombu import serialization

__all__ = [
    "channel_pool",
    "encoded_body",
    "message_copy",
    "new_pool_connection",
    "ping_channel",
    "publish_batch",
    "redis_envelope",
    "send_lpushes",
    "serializer_codec",
    "serializer_encoder",
    "take_connection",
    "wait_for_replicas",
]


def redis_envelope(
    channel: Any, routing_key: str, delivery_tag: str, *message: Any
) -> tuple[str, dict[str, Any]]:
    """The Redis list key and the envelope kombu's Redis channel would push for a
    message published through the anonymous exchange.

    Does what ``Producer.publish`` and the channel's ``basic_publish`` / ``_put``
    do, with the channel's own methods: ``prepare_message`` (the channel
    interface), ``encode_body`` with the channel's ``body_encoding`` and the
    ``delivery_info`` augmentation (kombu's virtual channel), then the list key
    from the private ``_get_message_priority`` and ``_q_for_pri`` (the Redis
    channel's priority lists). ``message`` is what ``prepare_message`` takes: body,
    priority, content type, content encoding, headers and properties; the
    properties become the envelope's and are updated in place. The delivery tag is
    the caller's (kombu draws one from ``os.urandom`` per message). The key
    carries the channel's ``global_keyprefix`` (a transport option; kombu's
    prefixed client adds it to every key it writes), so that workers reading the
    prefixed lists find the message.

    Runs per message on the direct path: one call instead of the same calls
    inline. Were any of these renamed, the direct path raises ``AttributeError``
    for the messages it builds (their callers get the error, nothing is sent);
    ``tests/unit/test_compat.py`` fails first.
    """
    envelope: dict[str, Any] = channel.prepare_message(*message)
    envelope["body"], body_encoding = channel.encode_body(envelope["body"], channel.body_encoding)
    props = envelope["properties"]
    props.update(body_encoding=body_encoding, delivery_tag=delivery_tag)
    props["delivery_info"].update(exchange="", routing_key=routing_key)
    key: str = channel._q_for_pri(routing_key, channel._get_message_priority(envelope))
    prefix = channel.global_keyprefix
    return (prefix + key if prefix else key), envelope


def encoded_body(channel: Any, data: Any) -> Any:
    """A serialized body as :func:`redis_envelope` writes it into the envelope:
    encoded with the channel's ``body_encoding`` (base64 on Redis) by the virtual
    channel's ``encode_body``, as kombu's ``basic_publish`` does. For the direct
    path's templates, which write the envelope's other fields from a template.
    Missing, the direct path raises ``AttributeError`` for the messages it
    renders (their callers get the error, nothing is sent).
    """
    return channel.encode_body(data, channel.body_encoding)[0]


def channel_pool(channel: Any) -> Any:
    """The redis-py connection pool of a kombu Redis channel (its ``pool`` property).

    Undocumented; the pool is created on first use and closed by kombu with the
    channel, so connections taken from it live no longer than the channel. The
    Redis wire keeps one of its connections per publishing thread.
    """
    return channel.pool


def take_connection(pool: Any) -> Any:
    """A connection from a redis-py pool, however this redis-py wants it asked for.

    redis-py before 5.3 requires a command name (``get_connection(command_name,
    *keys)``); from 5.3 on the argument is deprecated and warns. The pool's
    signature is read (once per pool class) to choose.
    """
    if _needs_command_name(type(pool)):
        return pool.get_connection("LPUSH")
    return pool.get_connection()


_COMMAND_NAME_REQUIRED: dict[Any, bool] = {}


def _needs_command_name(pool_type: Any) -> bool:
    known = _COMMAND_NAME_REQUIRED.get(pool_type)
    if known is None:
        parameter = inspect.signature(pool_type.get_connection).parameters.get("command_name")
        known = parameter is not None and parameter.default is inspect.Parameter.empty
        _COMMAND_NAME_REQUIRED[pool_type] = known
    return known


def send_lpushes(
    connection: Any,
    by_key: Mapping[str, Sequence[str]],
    wait: tuple[int, int] | None = None,
) -> int | None:
    """``LPUSH key *payloads`` for each key, then optionally ``WAIT replicas ms``,
    in one ``sendall``, and read each reply.

    Uses redis-py's connection-level methods below the client:
    ``pack_command(*args)`` (a list of byte chunks), ``send_packed_command(
    command, check_health=False)`` and ``read_response()``. Going below the client
    sends one buffer instead of several socket writes per large value, and skips
    the health-check ``PING`` (the connection answered recently). A reply that is
    an error is raised by ``read_response``.

    ``wait`` is ``(replicas, timeout_ms)``: Redis's ``WAIT`` blocks this
    connection until that many replicas acknowledged its writes, or for
    ``timeout_ms`` milliseconds (at least 1: ``WAIT`` with 0 never returns).

    Returns:
        The number of replicas that acknowledged the writes (``WAIT``'s reply), or
        ``None`` without ``wait``.

    Raises:
        redis.RedisError, OSError: the write or a reply failed; any of the
            messages may have landed, and replies may be left unread.
    """
    packed = [
        chunk
        for key, payloads in by_key.items()
        for chunk in connection.pack_command("LPUSH", key, *payloads)
    ]
    if wait is not None:
        replicas, timeout_ms = wait
        packed.extend(connection.pack_command("WAIT", replicas, max(1, timeout_ms)))
    connection.send_packed_command([b"".join(packed)], check_health=False)
    for _ in by_key:
        connection.read_response()
    if wait is None:
        return None
    return int(connection.read_response())


def wait_for_replicas(connection: Any, replicas: int, timeout_ms: int) -> int:
    """``WAIT replicas timeout_ms`` on a redis-py connection (see :func:`send_lpushes`);
    the number of replicas that hold every write this connection made so far.

    Raises:
        redis.RedisError, OSError: the round trip failed.
    """
    command = connection.pack_command("WAIT", replicas, max(1, timeout_ms))
    connection.send_packed_command([b"".join(command)], check_health=False)
    return int(connection.read_response())


def ping_channel(channel: Any) -> None:
    """A ``PING`` round trip on a kombu Redis channel's client, if it has one.

    The channel's ``client`` property is undocumented; channels of other
    transports (kombu's in-memory one) have none, and then nothing is sent.
    """
    client = getattr(channel, "client", None)
    if client is not None:
        client.ping()


def publish_batch(producer: Any, max_size: int) -> contextlib.AbstractContextManager[Any]:
    """kombu's ``Producer.batch(max_size=...)``, or a context that batches nothing.

    kombu 5.7 added the publish batch: publishes inside it are buffered and sent
    in one pipeline when the block exits (never retried). Older kombu has no
    such method; there each publish goes out on its own, on the same producer,
    as Celery's stock path does.
    """
    batch = getattr(producer, "batch", None)
    if batch is None:
        return contextlib.nullcontext()
    manager: contextlib.AbstractContextManager[Any] = batch(max_size=max_size)
    return manager


#: The registry's dict of encoders (one object for the process: ``register``
#: adds to it), or an empty dict when kombu lays its registry out otherwise.
_ENCODERS: dict[str, Any] = getattr(getattr(serialization, "registry", None), "_encoders", {})


def serializer_codec(name: str) -> tuple[str, str, Any] | None:
    """What kombu's serializer registry holds for ``name``: its content type,
    content encoding and encoder function (``json``: ``kombu.utils.json.dumps``),
    or ``None``.

    ``kombu.serialization.registry`` is not in kombu's type stubs and its
    ``_encoders`` (name to ``codec(content_type, content_encoding, encoder)``) is
    private. The progress store and the direct path's body encoding call the
    encoder directly: the registry's ``dumps`` look-up and its error-wrapping
    context manager cost more than encoding a small value. ``None`` when the
    registry is not laid out so; callers then go through the registry's public
    ``dumps`` (or the result backend's own ``encode``). One dict look-up a call.
    """
    codec = _ENCODERS.get(name)
    if not (isinstance(codec, tuple) and len(codec) == 3 and callable(codec[2])):
        return None
    return codec[0], codec[1], codec[2]


def serializer_encoder(name: str) -> Any:
    """The encoder function of :func:`serializer_codec`, or ``None``."""
    codec = serializer_codec(name)
    return None if codec is None else codec[2]


def new_pool_connection(pool: Any) -> Any:
    """A new, unconnected redis-py connection made like ``pool``'s own (same class
    and arguments: server, database, credentials, TLS, timeouts), owned by the
    caller rather than the pool.

    ``ConnectionPool.connection_class`` and ``connection_kwargs`` are undocumented
    attributes. The worker's progress store keeps such connections and talks to
    them with the connection-level ``send_command`` / ``read_response`` (as
    :func:`send_lpushes` does), skipping the pool's and client's per-command
    bookkeeping. Were they renamed, the store's first write raises
    ``AttributeError`` and every report falls back to ``update_state``. Runs once
    per connection made.
    """
    return pool.connection_class(**pool.connection_kwargs)


def message_copy(message: Any, driver_type: str) -> tuple[str | None, bool]:
    """Which publish a delivered message came from, and whether it was delivered before.

    Returns ``(copy, redelivered)``. ``copy`` is the message's ``delivery_tag`` when
    the broker is Redis (``driver_type == "redis"``), else ``None``: kombu's Redis
    transport draws the tag when the message is published (a new one per publish,
    so two publishes of one task are two copies) and keeps it in the stored
    envelope, and every way it gives an unacked message back (``reject(requeue=
    True)``, ``restore_unacked`` at a warm shutdown, ``restore_visible`` after the
    visibility timeout; all through the channel's ``_do_restore_message``) re-pushes
    that same envelope, marked ``redelivered``. On RabbitMQ a delivery tag counts
    deliveries on a channel and says nothing about the publish. ``redelivered`` is
    the broker's flag from ``message.delivery_info`` (public on both transports).

    The run-once guard lets a message whose copy matches a running claim take the
    claim over (its earlier delivery never finished). Were kombu to draw a new tag
    on restore, such a message would look like another copy and be skipped until
    the claim expires: ``tests/unit/test_compat.py`` fails first. Runs per message
    on the worker's consumer thread.
    """
    info = getattr(message, "delivery_info", None)
    redelivered = bool(info.get("redelivered")) if isinstance(info, Mapping) else False
    if driver_type != "redis":
        return None, redelivered
    tag = getattr(message, "delivery_tag", None)
    return (str(tag) if tag else None), redelivered
