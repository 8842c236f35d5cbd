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

__all__ = ["count_publishes", "drain", "listen_for_confirms", "round_trip"]


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
