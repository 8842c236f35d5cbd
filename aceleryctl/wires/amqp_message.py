"""Celery's own task message for RabbitMQ, built as the Redis wire builds it.

:class:`AmqpDirectPath` is the Redis wire's
:class:`~aceleryctl.wires.redis_message.DirectPath` (the same calls accepted, the
same Celery and kombu functions building headers, properties and body, the same
signals) with two differences: the message ends as the ``amqp.Message`` kombu's
py-amqp channel makes (``prepare_message``, the channel's public interface) rather
than a Redis envelope, and queues with arguments (quorum queues, ``x-max-priority``,
expiry, message TTL) are accepted, since RabbitMQ applies those itself when the
queue is declared. Runs on a publishing thread.
"""

from __future__ import annotations

from typing import Any

from kombu import Queue

from aceleryctl.wires.redis_message import DirectPath

__all__ = ["AmqpDirectPath"]


class AmqpDirectPath(DirectPath):
    """Decides which calls take the AMQP direct path and builds their messages."""

    def plain_queue(self, queue: Queue) -> bool:
        """Every direct-exchange queue: its arguments are declared with it."""
        return True

    def encode(
        self,
        channel: Any,
        data: Any,
        priority: Any,
        content_type: str,
        content_encoding: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
        routing_key: str,
    ) -> tuple[str, Any]:
        """The ``amqp.Message`` kombu's ``Producer.publish`` would hand py-amqp."""
        message = channel.prepare_message(
            data, priority, content_type, content_encoding, headers, properties
        )
        return "", message
