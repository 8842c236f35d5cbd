"""Publisher confirms on one publishing thread's AMQP channel.

:class:`AmqpPublisher` is a :class:`~aceleryctl.wires.connections.ThreadPublisher`
whose connection is made for py-amqp (bounded socket reads and writes, no
heartbeats, confirms off at the connection) and whose channel is put in confirm
mode once, when it opens; :class:`Confirms` numbers every message published on
that channel (RabbitMQ's delivery tags: 1, 2, ... per channel) and records the
broker's ``basic.ack``, ``basic.nack`` and ``basic.return`` for each, so that a
whole batch is written first and its acknowledgements are awaited together
(pipelined), within the batch's deadline.

Heartbeats are off on these connections: a publishing thread sits idle between
batches and could not answer them, so RabbitMQ would close idle connections and
the next publish would meet a dead socket. A silent broker is caught instead by
the bounded reads and writes and by each batch's deadline; a connection the broker
closed while idle is noticed before a batch is written (:meth:`AmqpPublisher.
check_idle`), when nothing has been sent on it yet.

Everything here runs on the publishing thread that owns the connection.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Celery
from kombu.transport.pyamqp import Transport as PyAmqpTransport

from aceleryctl.compat.amqp import FrameBuffer, count_publishes, drain, listen_for_confirms
from aceleryctl.wires.connections import LeanProducer, ThreadPublisher, TransportPolicy

__all__ = [
    "AmqpPublisher",
    "ConfirmTimeout",
    "Confirms",
    "amqp_transport_options",
    "collect",
    "speaks_py_amqp",
]

#: A message's state once the broker settled it.
ACKED, NACKED = True, False


class ConfirmTimeout(TimeoutError):
    """The deadline passed before the broker confirmed every message of a batch."""


class Confirms:
    """The delivery tags of one confirm-mode channel and what the broker said of each.

    Not thread-safe: the owning publishing thread alone publishes and reads.
    """

    __slots__ = ("_correlation", "pending", "published", "returned", "settled")

    def __init__(self) -> None:
        #: Messages published on the channel so far (the last delivery tag).
        self.published = 0
        #: Tags awaiting the broker's ack or nack, in ascending order.
        self.pending: dict[int, None] = {}
        #: Tag -> :data:`ACKED` or :data:`NACKED`, until :meth:`forget`.
        self.settled: dict[int, bool] = {}
        #: Tag -> the broker's reply text for an unroutable (returned) message.
        self.returned: dict[int, str] = {}
        self._correlation: dict[int, Any] = {}

    def count(self, message: Any) -> None:
        """A message was written (or may have been): give it the next tag."""
        self.published += 1
        tag = self.published
        self.pending[tag] = None
        properties = getattr(message, "properties", None)
        if isinstance(properties, dict):
            self._correlation[tag] = properties.get("correlation_id")

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        """``basic.ack`` from the broker: the message(s) are stored."""
        self._settle(delivery_tag, multiple, ACKED)

    def nack(self, delivery_tag: int, multiple: bool) -> None:
        """``basic.nack`` from the broker: the message(s) were not stored."""
        self._settle(delivery_tag, multiple, NACKED)

    def returned_message(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        """``basic.return``: no queue took the message (``mandatory``). RabbitMQ sends
        it before the message's ack, so the earliest pending tag with the message's
        correlation id (its task id) is the one returned."""
        properties = getattr(message, "properties", None)
        correlation = properties.get("correlation_id") if isinstance(properties, dict) else None
        for tag in self.pending:
            if tag not in self.returned and self._correlation.get(tag) == correlation:
                self.returned[tag] = f"{exc}; exchange {exchange!r}, routing key {routing_key!r}"
                return

    def _settle(self, delivery_tag: int, multiple: bool, state: bool) -> None:
        if not multiple:
            if self.pending.pop(delivery_tag, False) is None:
                self.settled[delivery_tag] = state
            return
        done = []
        for tag in self.pending:
            if tag > delivery_tag:
                break  # ascending: the rest are later
            done.append(tag)
        for tag in done:
            del self.pending[tag]
            self.settled[tag] = state

    def forget(self, tags: range) -> None:
        """Drop what is known of ``tags`` (their batch has been answered)."""
        for tag in tags:
            self.settled.pop(tag, None)
            self.returned.pop(tag, None)
            self._correlation.pop(tag, None)
            self.pending.pop(tag, None)

    def awaiting(self, tags: range) -> bool:
        """Whether any of ``tags`` is still unconfirmed."""
        pending = self.pending
        return any(tag in pending for tag in tags)


def speaks_py_amqp(app: Celery) -> bool:
    """Whether ``app``'s broker transport is kombu's py-amqp one (``amqp://``,
    ``pyamqp://``), whose channels the AMQP wire drives. Opens no connection."""
    connection = app.connection_for_write()
    try:
        return isinstance(connection.transport, PyAmqpTransport)
    finally:
        connection.release()


def amqp_transport_options(policy: TransportPolicy, base: dict[str, Any]) -> dict[str, Any]:
    """The user's ``broker_transport_options`` with ``policy``'s bounds laid over
    them, for py-amqp: ``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on the socket (a blocking
    read or write on a silent broker gives up), one connect attempt in kombu
    (refusals are retried by the publisher, under the call's deadline), and
    publisher confirms off at the connection level: the wire selects confirms on
    its own channel and waits for them itself, within each call's deadline."""
    return {
        **base,
        "read_timeout": policy.socket_timeout,
        "write_timeout": policy.socket_timeout,
        "max_retries": 0,
        "confirm_publish": False,
    }


def collect(connection: Any) -> None:
    """Close a kombu connection's socket without a closing handshake (kombu's
    public ``Connection.collect``). Never raises: a broken connection is gone
    either way."""
    with contextlib.suppress(Exception):
        connection.collect()


class AmqpPublisher(ThreadPublisher):
    """One publishing thread's py-amqp connection, channel in confirm mode, producer
    and :class:`Confirms`. Not thread-safe: one per thread."""

    __slots__ = ("confirms", "frames")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.confirms = Confirms()
        #: The direct path's publishes of a batch, written with one ``sendall``.
        self.frames: FrameBuffer | None = None

    def _connect(self) -> LeanProducer:
        app = self._app
        policy = self._policy
        options = amqp_transport_options(policy, dict(app.conf.broker_transport_options or {}))
        connection = app.connection_for_write(
            transport_options=options, connect_timeout=policy.connect_timeout, heartbeat=0
        )
        self._connection = connection
        self._registry.add(connection)
        channel = connection.default_channel  # connects (bounded), opens the channel
        confirms = self.confirms = Confirms()
        listen_for_confirms(channel, confirms.ack, confirms.nack, confirms.returned_message)
        count_publishes(channel, confirms.count)
        self.frames = FrameBuffer(channel)
        self._producer = LeanProducer(channel)
        return self._producer

    def discard(self) -> None:
        """Drop the connection without talking to the broker; the next publish
        reconnects. Also how a publishing thread's connection is closed when the
        thread exits: py-amqp's graceful close waits for the broker's answer, and a
        read that stops mid-frame is retried without a bound, so on a silent broker
        it could hold the thread for ever; RabbitMQ treats the closed socket as a
        client that went away."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            self._registry.remove(connection)
            collect(connection)

    def check_idle(self) -> None:
        """Read what the broker sent while the connection was idle, without waiting:
        a close (``stop_app``, a broker restart) is seen here, before anything of
        the next batch is written, and the connection is dropped (the batch then
        reconnects, and a refusal proves nothing was sent)."""
        producer = self._producer
        if producer is None:
            return
        try:
            drain(producer.channel, 0)
        except TimeoutError:
            return  # nothing to read: the connection is as it was
        except Exception:
            self.discard()

    def await_confirms(self, tags: range, deadline: float) -> None:
        """Read the broker's answers until every tag in ``tags`` is settled.

        ``deadline`` is a reading of the injected clock (seconds). Blocks the
        calling thread at most until then.

        Raises:
            ConfirmTimeout: the deadline passed first (the connection is dropped:
                late answers must not be read against later tags).
            Exception: the connection failed (dropped too).
        """
        confirms = self.confirms
        producer = self._producer
        if producer is None or not confirms.awaiting(tags):
            return
        channel = producer.channel
        try:
            while confirms.awaiting(tags):
                left = deadline - self._clock()
                if left <= 0:
                    raise ConfirmTimeout("no confirm from the broker before the deadline")
                try:
                    drain(channel, left)
                except TimeoutError:
                    continue  # the loop's deadline check decides
        except BaseException:
            self.discard()
            raise
