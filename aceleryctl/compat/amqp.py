"""py-amqp internals the AMQP wire relies on, each behind one function.

The AMQP wire publishes with publisher confirms on its own channel and waits for
the broker's acknowledgements itself, within each call's deadline, rather than
through py-amqp's ``confirm_publish`` mode (which waits after every single message,
without a bound unless kombu is handed one per publish). That needs the channel's
event callbacks (``Channel.events``: documented by use in kombu, not in py-amqp),
a hook on the channel instance's ``basic_publish`` (so that Celery's own publishes
on the stock path are counted and sent ``mandatory`` like the direct ones: py-amqp
replaces the same attribute for its own confirm mode), and a bounded wait for one
method (``AbstractChannel.wait`` with ``timeout``). Each docstring says what happens
when the internal is missing; ``tests/unit/test_compat.py`` checks their shape.

Everything here runs on the publishing thread that owns the channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqp import spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

__all__ = ["FrameBuffer", "count_publishes", "drain", "listen_for_confirms", "round_trip"]


def listen_for_confirms(
    channel: Any,
    on_ack: Callable[[int, bool], None],
    on_nack: Callable[[int, bool], None],
    on_return: Callable[[Any, str, str, Any], None],
) -> None:
    """Put ``channel`` in confirm mode (one round trip) and route its
    ``basic.ack`` / ``basic.nack`` (delivery tag, multiple) and ``basic.return``
    (exception, exchange, routing key, message) to the callbacks.

    py-amqp dispatches those methods to the sets in ``channel.events`` (a
    ``defaultdict(set)``); without a ``basic_return`` callback it would raise the
    return as an exception from whichever read received it. Were ``events``
    renamed, connecting raises ``AttributeError`` and every publish on this wire
    fails as "nothing was sent"; ``tests/unit/test_compat.py`` fails first.
    """
    events = channel.events
    events["basic_ack"].add(on_ack)
    events["basic_nack"].add(on_nack)
    events["basic_return"].add(on_return)
    channel.confirm_select()


def count_publishes(channel: Any, counted: Callable[[Any], None]) -> None:
    """Make every ``basic_publish`` on ``channel`` (kombu's and Celery's included)
    ``mandatory`` and call ``counted(message)`` once it has been written.

    Replaces the instance's ``basic_publish`` attribute, as py-amqp itself does in
    its confirm mode. The count gives each publish its delivery tag (RabbitMQ
    numbers the messages of a confirm-mode channel 1, 2, ...). A publish whose
    write raised is counted too: part of it may have reached the broker.
    """
    publish = channel.basic_publish

    def publish_counted(message: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["mandatory"] = True
        kwargs.pop("confirm_timeout", None)
        try:
            return publish(message, *args, **kwargs)
        finally:
            counted(message)

    channel.basic_publish = publish_counted


class FrameBuffer:
    """The frames of several ``basic.publish`` calls on one channel, written to the
    socket with one ``sendall``.

    py-amqp writes each publish with its own ``sendall`` and, before it, reads the
    socket without waiting in case the broker sent ``connection.blocked``: two
    system calls and a raised ``socket.timeout`` per message, each letting the
    event loop's thread take the GIL. This builds the same frames with py-amqp's
    own ``method_framing.frame_writer`` (undocumented; its closure writes through
    the object it is given, here this buffer) and ``serialization.dumps``, as
    ``Channel._basic_publish`` does, always ``mandatory``. One per connection (the
    writer holds a frame-sized buffer); only its publishing thread uses it. Were
    the writer's signature to change, connecting raises and every publish fails
    as "nothing was sent"; ``tests/unit/test_compat.py`` fails first.
    """

    __slots__ = ("_channel_id", "_chunks", "_transport", "_write_frame")

    def __init__(self, channel: Any) -> None:
        connection = channel.connection
        self._channel_id: int = channel.channel_id
        self._transport = connection.transport
        self._chunks: list[bytes] = []
        self._write_frame = frame_writer(connection, self)

    def write(self, data: Any) -> None:
        """Called by the frame writer with a view of its shared buffer: copied."""
        self._chunks.append(bytes(data))

    def publish(self, message: Any, exchange: str, routing_key: str) -> None:
        """Add one ``mandatory`` publish of ``message`` (an ``amqp.Message``)."""
        args = dumps("Bssbb", (0, exchange, routing_key, True, False))
        self._write_frame(1, self._channel_id, spec.Basic.Publish, args, message)

    def flush(self) -> None:
        """Write what was added, in order, with one ``sendall``.

        Raises:
            OSError: the write failed; any of the messages may have reached the broker.
        """
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._transport.write(data)


def drain(channel: Any, timeout: float) -> None:
    """Read and dispatch what the broker sent on ``channel``'s connection, waiting at
    most ``timeout`` seconds (``connection.drain_events``, public in py-amqp).

    Raises:
        socket.timeout: nothing arrived in time.
        amqp.exceptions.AMQPError, OSError: the connection or channel failed.
    """
    channel.connection.drain_events(timeout=timeout)


def round_trip(channel: Any, timeout: float) -> None:
    """One cheap request and its reply on ``channel`` (``basic.qos`` with no limits,
    which a publishing channel does not use), waiting at most ``timeout`` seconds.

    ``Channel.basic_qos`` would wait without a bound; the method is sent with
    ``send_method`` and its reply awaited with ``wait(..., timeout=)`` (py-amqp's
    ``AbstractChannel`` API, undocumented). The recovery probe calls this.

    Raises:
        socket.timeout: no reply in time.
        amqp.exceptions.AMQPError, OSError: the connection or channel failed.
    """
    channel.send_method(spec.Basic.Qos, "lBb", (0, 0, False))
    channel.wait(spec.Basic.QosOk, timeout=timeout)
