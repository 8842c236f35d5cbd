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

from celery import Celery
from celery.signals import after_task_publish

from aceleryctl._clock import Clock
from aceleryctl.compat.celery import has_receivers
from aceleryctl.compat.kombu_redis import ping_channel, send_lpushes, wait_for_replicas
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt
from aceleryctl.wires.base import Wire, WireOutcome
from aceleryctl.wires.connections import (
    LeanProducer,
    ReplicaAckTimeout,
    TransportPolicy,
    classify_failure,
)
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
        replica_acks: after each direct write, wait (Redis ``WAIT``, within the
            batch's deadline) until this many replicas hold it; a batch they do not
            acknowledge in time is reported unknown (:class:`ReplicaAckTimeout`).
            0 (the default) returns as soon as the primary replied.
    """

    name = "redis"

    def __init__(
        self,
        app: Celery,
        policy: TransportPolicy,
        *,
        direct: bool = True,
        clock: Clock = time.monotonic,
        replica_acks: int = 0,
    ) -> None:
        super().__init__(app)
        self.stock = StockWire(app, policy, clock=clock)
        self._clock = clock
        #: The longest ``WAIT`` (seconds): shorter than a socket read may block.
        self._max_wait = policy.socket_timeout * 0.8
        self.replica_acks = replica_acks
        #: The message builder, or ``None`` when the direct path is turned off.
        self.direct = DirectPath(app) if direct else None
        #: The kombu channel of the latest successful direct write (any thread's):
        #: the loop path borrows its envelope functions, which only read settings.
        self.envelope_channel: Any = None

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
        return {
            "wire": self.name,
            "bounded": True,
            "direct_publish": self.direct is not None,
            "replica_acks": self.replica_acks,
        }

    def probe(self, deadline: float) -> WireOutcome:
        """A connect and a ``PING``; with ``replica_acks``, also a ``WAIT`` that the
        replicas must answer before ``deadline``. Never raises."""
        if not self.replica_acks:
            return self.stock.probe(deadline)
        try:
            acked = self.stock.publisher().run(lambda p: self._ping_replicas(p, deadline), deadline)
        except BaseException as exc:
            return classify_failure(exc, self.name)
        if acked < self.replica_acks:
            error = ReplicaAckTimeout(self.replica_acks, acked, self._wait_ms(deadline) / 1000)
            return WireOutcome(DispatchOutcome.UNKNOWN, error=error, path=self.name)
        return WireOutcome(DispatchOutcome.SENT, path=self.name)

    def _ping_replicas(self, producer: LeanProducer, deadline: float) -> int:
        ping_channel(producer.channel)
        connection = producer.redis_connection()
        try:
            return wait_for_replicas(connection, self.replica_acks, self._wait_ms(deadline))
        except BaseException:
            producer.drop_redis_connection()
            raise

    def _wait_ms(self, deadline: float) -> int:
        """Milliseconds a ``WAIT`` may block: what is left before ``deadline``, at
        most :attr:`_max_wait`, at least 1."""
        left = min(deadline - self._clock(), self._max_wait)
        return max(1, int(left * 1000))

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        """Write the direct calls in one round trip, the rest through the stock wire.
        Never raises."""
        direct = self.direct
        chosen = [] if direct is None else [a for a in attempts if direct.takes(a)]
        # The app's settings are read once per batch, and only when needed.
        snapshot = direct.configured() if direct is not None and chosen else None
        if direct is None or snapshot is None:
            return self.stock.publish_batch(attempts, deadline)
        written = self._write_direct(direct, chosen, snapshot, deadline)
        if len(written) == len(attempts):
            return [written[id(a)] for a in attempts]
        rest = [a for a in attempts if id(a) not in written]
        stocked = iter(self.stock.publish_batch(rest, deadline))
        return [written[id(a)] if id(a) in written else next(stocked) for a in attempts]

    def _write_direct(
        self,
        direct: DirectPath,
        chosen: list[Attempt],
        snapshot: Snapshot,
        deadline: float,
    ) -> dict[int, WireOutcome]:
        """Build and write the chosen attempts; their outcomes by ``id(attempt)``.
        Those whose destination is not a plain direct queue are left out (they
        take the stock wire)."""
        outcomes: dict[int, WireOutcome] = {}
        publisher = self.stock.publisher()
        try:
            producer = publisher.producer(deadline)
        except BaseException as exc:
            for attempt in chosen:
                outcomes[id(attempt)] = classify_failure(exc, self.name, attempt.dispatch.queue)
            return outcomes
        channel = producer.channel
        prepare = direct.prepare
        ready: list[tuple[Attempt, Prepared]] = []
        for attempt in chosen:
            d = attempt.dispatch
            try:  # in the caller's context (and a stored dispatch's trace), for the signals
                prepared = attempt.run(
                    prepare, d.target, d.args, d.kwargs, d.options, channel, snapshot
                )
            except BaseException as exc:
                outcomes[id(attempt)] = classify_failure(exc, self.name, d.queue)
                continue
            if prepared is not None:
                ready.append((attempt, prepared))
        if not ready:
            return outcomes
        wanted = self.replica_acks
        wait = (wanted, self._wait_ms(deadline)) if wanted else None
        try:
            acked = publisher.run(lambda p: _write(p, [item for _, item in ready], wait), deadline)
        except BaseException as exc:
            for attempt, item in ready:
                outcomes[id(attempt)] = classify_failure(exc, self.name, item.routing_key)
            return outcomes
        if wait is not None and (acked or 0) < wanted:
            behind = ReplicaAckTimeout(wanted, acked or 0, wait[1] / 1000)
            for attempt, item in ready:  # the primary holds them; a replica may not
                outcomes[id(attempt)] = WireOutcome(
                    DispatchOutcome.UNKNOWN, None, behind, True, item.routing_key, self.name
                )
            return outcomes
        self.envelope_channel = channel
        announce = DirectPath.announce if has_receivers(after_task_publish) else None
        sent = DispatchOutcome.SENT
        name = self.name
        for attempt, item in ready:
            if announce is not None:
                attempt.run(announce, (item,))
            outcomes[id(attempt)] = WireOutcome(
                sent, None, None, False, item.routing_key, name, item.task_id
            )
        return outcomes


def _write(
    producer: LeanProducer, items: list[Prepared], wait: tuple[int, int] | None
) -> int | None:
    """One round trip: an ``LPUSH`` of every message per list key, in call order,
    then ``WAIT replicas ms`` when ``wait`` is given; returns ``WAIT``'s reply.

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
        return send_lpushes(connection, by_key, wait)
    except BaseException:
        producer.drop_redis_connection()  # replies may be left unread: never reuse it
        raise
