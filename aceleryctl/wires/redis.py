"""The Redis wire: Celery's own message, one ``LPUSH`` per queue per batch.

Plain task calls that :class:`~aceleryctl.wires.redis_message.DirectPath`
accepts are built with Celery's and kombu's own functions and written in one
round trip on this publishing thread's own redis-py connection; everything
else in the batch goes through the stock wire on the same connection. A write
that fails takes all of its messages with it: each of them may or may not have
reached Redis, and their callers are told so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task

from aceleryctl._clock import Clock
from aceleryctl.compat.kombu_redis import send_lpushes
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, DispatchKind
from aceleryctl.wires.base import Wire, WireOutcome
from aceleryctl.wires.connections import LeanProducer, TransportPolicy, classify_failure
from aceleryctl.wires.redis_message import DirectPath, Prepared, Snapshot
from aceleryctl.wires.stock import StockWire

__all__ = ["RedisWire"]


class RedisWire(Wire):
    """Direct writes for plain task calls, the stock wire for the rest.

    Args:
        app: the controller's Celery app (its broker is Redis).
        policy: socket and connect bounds of the publishing connections.
        direct: build plain task calls' messages here (``False``: every call
            takes the stock wire, still on bounded connections).
        clock: monotonic seconds, the engine's clock.
    """

    name = "redis"

    def __init__(
        self,
        app: Celery,
        policy: TransportPolicy,
        *,
        direct: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(app)
        self.stock = StockWire(app, policy, clock=clock)
        #: The message builder, or ``None`` when the direct path is turned off.
        self.direct = DirectPath(app) if direct else None

    @property
    def batches(self) -> bool:
        return True

    def connected(self) -> bool:
        return self.stock.connected()

    def release_thread(self) -> None:
        self.stock.release_thread()

    def close(self) -> None:
        self.stock.close()

    def describe(self) -> dict[str, Any]:
        return {"wire": self.name, "bounded": True, "direct_publish": self.direct is not None}

    def probe(self, deadline: float) -> WireOutcome:
        return self.stock.probe(deadline)

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        """Write the direct calls in one round trip, the rest through the stock wire.
        Never raises."""
        outcomes: list[WireOutcome | None] = [None] * len(attempts)
        direct = self.direct
        if direct is not None:
            chosen = [i for i, a in enumerate(attempts) if self._accepts(direct, a)]
            if chosen:
                # The app's settings are read once per batch, and only when needed.
                snapshot = direct.configured()
                if snapshot is not None:
                    self._write_direct(direct, attempts, chosen, snapshot, deadline, outcomes)
        rest = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if rest:
            stocked = self.stock.publish_batch([attempts[i] for i in rest], deadline)
            for i, outcome in zip(rest, stocked, strict=True):
                outcomes[i] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _accepts(self, direct: DirectPath, attempt: Attempt) -> bool:
        dispatch = attempt.dispatch
        task = dispatch.target
        return (
            dispatch.kind is DispatchKind.TASK
            and not dispatch.by_name
            and isinstance(task, Task)
            and task.app is self.app
            and direct.accepts(task, dispatch.options)
        )

    def _write_direct(
        self,
        direct: DirectPath,
        attempts: Sequence[Attempt],
        chosen: list[int],
        snapshot: Snapshot,
        deadline: float,
        outcomes: list[WireOutcome | None],
    ) -> None:
        """Build and write the chosen attempts; fill their outcomes. Those whose
        destination is not a plain direct queue stay ``None`` (stock wire)."""
        publisher = self.stock.publisher()
        try:
            producer = publisher.producer(deadline)
        except BaseException as exc:
            for i in chosen:
                outcomes[i] = classify_failure(exc, self.name, attempts[i].dispatch.queue)
            return
        ready: list[tuple[int, Prepared]] = []
        for i in chosen:
            attempt = attempts[i]
            dispatch = attempt.dispatch
            try:
                prepared = attempt.run(
                    direct.prepare,
                    dispatch.target,
                    dispatch.args,
                    dispatch.kwargs,
                    dispatch.options,
                    producer.channel,
                    snapshot,
                )
            except BaseException as exc:
                outcomes[i] = classify_failure(exc, self.name, dispatch.queue)
                continue
            if prepared is not None:
                ready.append((i, prepared))
        if not ready:
            return
        try:
            publisher.run(lambda p: _write(p, [item for _, item in ready]), deadline)
        except BaseException as exc:
            for i, item in ready:
                outcomes[i] = classify_failure(exc, self.name, item.routing_key)
            return
        for i, item in ready:
            attempts[i].run(DirectPath.announce, (item,))
            outcomes[i] = WireOutcome(
                DispatchOutcome.SENT, queue=item.routing_key, path=self.name, sent_id=item.task_id
            )


def _write(producer: LeanProducer, items: list[Prepared]) -> None:
    """One round trip: an ``LPUSH`` of every message per list key, in call order.

    ``LPUSH key a b c`` leaves the list as ``c b a``; workers pop from the right,
    so ``a`` is taken first, as if each had been pushed on its own. The commands
    go out in one ``sendall`` (redis-py would send large values piece by piece,
    and every socket call lets the event loop thread take the GIL). Never retried.

    Raises:
        redis.RedisError: the write failed; any of the messages may have landed.
    """
    by_key: dict[str, list[str]] = {}
    for item in items:
        payloads = by_key.get(item.key)
        if payloads is None:
            producer.declare_once(item.queue)  # once per queue and connection
            payloads = by_key[item.key] = []
        payloads.append(item.payload)
    connection = producer.redis_connection()
    try:
        send_lpushes(connection, by_key)
    except BaseException:
        producer.drop_redis_connection()  # replies may be left unread: never reuse it
        raise
