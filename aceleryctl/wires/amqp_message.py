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

from collections.abc import Mapping
from typing import Any, Final

from celery import Celery, Task
from kombu import Queue

from aceleryctl.compat.celery import routing_keeps_none
from aceleryctl.wires.redis_message import DirectPath, Prepared, Snapshot

__all__ = ["AmqpDirectPath"]

#: (task name, queue option) pairs whose priority rule is cached, at most.
_MAX_ROUTES: Final = 1024


class AmqpDirectPath(DirectPath):
    """Decides which calls take the AMQP direct path and builds their messages.

    Thread-safety: as :class:`DirectPath`; the priority cache is filled without a
    lock (a race computes the same value twice).
    """

    #: An ``amqp.Message`` is no text to cut: every message is built in full.
    templates = False

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        self._priority_kept: dict[tuple[str, str | None], bool] = {}

    def prepare(
        self,
        task: Task,  # type: ignore[type-arg]
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        given: Mapping[str, Any],
        channel: Any,
        snapshot: Snapshot,
        cached_only: bool = False,
    ) -> Prepared | None:
        """:meth:`DirectPath.prepare`, with Celery's priority quirk: a call without a
        priority reaches kombu's ``Producer.publish`` with ``priority=None`` (no
        priority property) only when the caller named a queue that no route
        overrides; otherwise Celery's router drops the ``None`` and kombu's default,
        0, is sent. Raises what :meth:`DirectPath.prepare` raises."""
        prepared = super().prepare(task, args, kwargs, given, channel, snapshot, cached_only)
        if prepared is None:
            return None
        properties = prepared.payload.properties
        if properties.get("priority") is None and not self._keeps_none(task, given.get("queue")):
            properties["priority"] = 0
        return prepared

    def _keeps_none(self, task: Any, queue: Any) -> bool:
        key = (task.name, queue if isinstance(queue, str) else None)
        kept = self._priority_kept.get(key)
        if kept is None:
            kept = routing_keeps_none(self._app, key[0], key[1], task)
            if len(self._priority_kept) < _MAX_ROUTES:
                self._priority_kept[key] = kept
        return kept

    def plain_queue(self, queue: Queue) -> bool:
        """Every direct-exchange queue: its arguments are declared with it."""
        return True

    def encode(
        self, channel: Any, routing_key: str, *message: Any, tag: str | None = None
    ) -> tuple[str, Any]:
        """The ``amqp.Message`` kombu's ``Producer.publish`` would hand py-amqp
        (RabbitMQ assigns delivery tags: ``tag`` is not used)."""
        return "", channel.prepare_message(*message)
