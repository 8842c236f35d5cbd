"""The AMQP wire: Celery's own messages, pipelined on one confirm-mode channel per thread.

Each publishing thread keeps one py-amqp connection and channel
(:class:`~aceleryctl.wires.amqp_confirms.AmqpPublisher`): connect, reads and writes
bounded by the controller's deadline, publisher confirms selected once. A batch is
written message after message (plain task calls built by
:class:`~aceleryctl.wires.amqp_message.AmqpDirectPath`, everything else by Celery's
own ``apply_async`` on the same producer), every message ``mandatory``; then the
broker's acknowledgements are awaited together, until the batch's deadline.

What the caller is told, per dispatch:

* every message acknowledged: sent (the broker holds it);
* ``basic.nack``: :class:`~aceleryctl.exceptions.BrokerError`, nothing was stored
  (counts against the breaker);
* returned as unroutable (no queue bound for it): ``BrokerError``, nothing was
  stored (the caller's routing, not the broker's health: the breaker is not told);
* no answer before the deadline: :class:`~aceleryctl.exceptions.DispatchTimeout`,
  outcome unknown; the connection is dropped;
* the connection failed after a message was written: ``BrokerError``, the message
  may exist; messages of the batch not yet written: nothing was sent.

Nothing is ever published twice: a refused connection is retried within the
deadline (nothing can have been sent), nothing else is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import amqp.exceptions
from celery import Celery
from celery.signals import after_task_publish

from aceleryctl._clock import Clock
from aceleryctl.compat.amqp import FrameBuffer, round_trip
from aceleryctl.compat.celery import has_receivers
from aceleryctl.dispatch.failures import Failures
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, DispatchKind
from aceleryctl.exceptions import BrokerError
from aceleryctl.wires.amqp_confirms import (
    NACKED,
    AmqpPublisher,
    Confirms,
    ConfirmTimeout,
    collect,
)
from aceleryctl.wires.amqp_message import AmqpDirectPath
from aceleryctl.wires.base import WireOutcome
from aceleryctl.wires.connections import (
    BROKER_ERRORS,
    SERIALIZATION_ERRORS,
    LeanProducer,
    TransportPolicy,
    classify_failure,
)
from aceleryctl.wires.per_thread import PerThreadWire
from aceleryctl.wires.redis_message import DirectPath, Prepared, Snapshot
from aceleryctl.wires.stock import send_with_celery

__all__ = ["AmqpWire", "PublishNacked"]

#: Failures of the connection or channel (py-amqp raises its own for channel errors).
AMQP_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, amqp.exceptions.AMQPError)

#: The path listeners see for messages Celery's ``apply_async`` built on this wire
#: (confirmed all the same); the direct path's is :attr:`AmqpWire.name`.
STOCK_PATH = "stock"

SENT, NOT_SENT, UNKNOWN = DispatchOutcome.SENT, DispatchOutcome.NOT_SENT, DispatchOutcome.UNKNOWN


class PublishNacked(Exception):
    """The broker answered ``basic.nack``: it did not store the message."""


class AmqpWire(PerThreadWire[AmqpPublisher]):
    """Confirmed, pipelined publishes on RabbitMQ (any AMQP 0-9-1 broker with
    publisher confirms).

    Args:
        app: the controller's Celery app (its broker is ``amqp://`` / ``pyamqp://``).
        policy: socket and connect bounds of the publishing connections.
        direct: build plain task calls' messages here (``False``: every call takes
            Celery's ``apply_async``, still confirmed, on the same connections).
        clock: monotonic seconds, the engine's clock.
    """

    name = "amqp"

    def __init__(
        self,
        app: Celery,
        policy: TransportPolicy,
        *,
        direct: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(app, policy, clock=clock)
        #: The message builder, or ``None`` when the direct path is turned off.
        self.direct = AmqpDirectPath(app) if direct else None

    @property
    def batches(self) -> bool:
        return True

    def new_publisher(self) -> AmqpPublisher:
        """A connection, channel and confirms for this publishing thread."""
        assert self._policy is not None  # always given (see __init__)
        return AmqpPublisher(self.app, self._policy, self._registry, clock=self._clock)

    def close(self) -> None:
        self._registry.close_all(collect)

    def describe(self) -> dict[str, Any]:
        return {
            "wire": self.name,
            "bounded": True,
            "confirmed": True,
            "direct_publish": self.direct is not None,
        }

    def probe(self, deadline: float) -> WireOutcome:
        """Connect if needed, then one ``basic.qos`` round trip, all before
        ``deadline``. Never raises."""
        publisher = self.publisher()
        try:
            producer = publisher.producer(deadline)
            round_trip(producer.channel, max(deadline - self._clock(), 0.001))
        except BaseException as exc:
            publisher.discard()
            return classify_failure(exc, self.name)
        return WireOutcome(SENT, path=self.name)

    # -- publishing ----------------------------------------------------------------

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        """Write every attempt's message(s), then await their confirms until
        ``deadline``. Never raises."""
        publisher = self.publisher()
        publisher.check_idle()
        try:
            producer = publisher.producer(deadline)
        except BaseException as exc:
            return [classify_failure(exc, self.name, a.dispatch.queue) for a in attempts]
        confirms = publisher.confirms
        frames = publisher.frames
        assert frames is not None  # set whenever a producer is
        direct = self.direct
        snapshot = direct.configured() if direct is not None else None
        first = confirms.published + 1
        written: list[tuple[range, Any]] = []
        failed: dict[int, WireOutcome] = {}
        broken: BaseException | None = None
        for index, attempt in enumerate(attempts):
            if broken is not None:  # the connection failed: nothing more is written
                failed[index] = _outcome(NOT_SENT, broken, True, attempt, self.name)
                continue
            start = confirms.published + 1
            try:
                value = self._publish_one(attempt, producer, frames, confirms, direct, snapshot)
            except BaseException as exc:
                tags = range(start, confirms.published + 1)
                failed[index] = self._failure(exc, attempt, bool(tags))
                if isinstance(exc, AMQP_ERRORS):
                    broken = exc
                    publisher.discard()
                continue
            written.append((range(start, confirms.published + 1), value))
        if broken is None:
            try:
                frames.flush()  # the buffered direct messages, in one sendall
            except BaseException as exc:
                broken = exc
                publisher.discard()
        batch = range(first, confirms.published + 1)
        waited: BaseException | None = broken
        if broken is None:
            try:
                publisher.await_confirms(batch, deadline)
            except BaseException as exc:
                waited = exc
        outcomes = self._settle(attempts, failed, written, confirms, waited)
        confirms.forget(batch)
        return outcomes

    def _publish_one(
        self,
        attempt: Attempt,
        producer: LeanProducer,
        frames: FrameBuffer,
        confirms: Confirms,
        direct: AmqpDirectPath | None,
        snapshot: Snapshot | None,
    ) -> Any:
        # Returns the Prepared message (direct path: buffered, numbered now, written
        # with the batch) or what Celery returned (written at once, after whatever
        # is buffered, so that delivery tags follow the order of the writes).
        dispatch = attempt.dispatch
        if dispatch.kind is DispatchKind.CALLABLE:
            return attempt.run(send_with_celery, self.app, attempt, None)
        if direct is not None and snapshot is not None and direct.takes(attempt):
            d = dispatch
            prepared = attempt.run(
                direct.prepare, d.target, d.args, d.kwargs, d.options, producer.channel, snapshot
            )
            if prepared is not None:
                producer.declare_once(prepared.queue)  # a round trip, once per connection
                frames.publish(prepared.payload, "", prepared.routing_key)
                confirms.count(prepared.payload)
                return prepared
        frames.flush()
        return attempt.run(send_with_celery, self.app, attempt, producer)

    def _failure(self, exc: BaseException, attempt: Attempt, wrote: bool) -> WireOutcome:
        # A publish raised. Nothing of it was written: its own failure (a broker
        # error then proves nothing was sent); something was: unknown.
        if isinstance(exc, AMQP_ERRORS):
            outcome = UNKNOWN if wrote else NOT_SENT
            return _outcome(outcome, exc, True, attempt, self.name)
        if wrote and not isinstance(exc, SERIALIZATION_ERRORS):
            return _outcome(UNKNOWN, exc, False, attempt, self.name)
        return classify_failure(exc, self.name, attempt.dispatch.queue)

    def _settle(
        self,
        attempts: Sequence[Attempt],
        failed: dict[int, WireOutcome],
        written: list[tuple[range, Any]],
        confirms: Confirms,
        waited: BaseException | None,
    ) -> list[WireOutcome]:
        announce = has_receivers(after_task_publish)
        done = iter(written)
        outcomes: list[WireOutcome] = []
        for index, attempt in enumerate(attempts):
            if index in failed:
                outcomes.append(failed[index])
                continue
            tags, value = next(done)
            outcome = self._confirmed(attempt, tags, value, confirms, waited)
            if announce and outcome.sent and isinstance(value, Prepared):
                attempt.run(DirectPath.announce, (value,))
            outcomes.append(outcome)
        return outcomes

    def _confirmed(
        self,
        attempt: Attempt,
        tags: range,
        value: Any,
        confirms: Confirms,
        waited: BaseException | None,
    ) -> WireOutcome:
        name = self.name
        direct = isinstance(value, Prepared)
        queue = value.routing_key if direct else attempt.dispatch.queue
        settled = confirms.settled
        returned = [confirms.returned[t] for t in tags if t in confirms.returned]
        nacked = [t for t in tags if settled.get(t) is NACKED]
        unsettled = [t for t in tags if t not in settled]
        if not unsettled and not nacked and not returned:
            if direct:
                return WireOutcome(SENT, None, None, False, queue, name, value.task_id)
            return WireOutcome(SENT, value, queue=queue, path=STOCK_PATH)
        refused = len(set(nacked) | {t for t in tags if t in confirms.returned})
        if unsettled:
            if isinstance(waited, ConfirmTimeout) or waited is None:
                error: BaseException = Failures.timed_out(attempt)
            else:
                error = waited
            return _outcome(UNKNOWN, error, True, attempt, name, queue)
        if returned:
            error = BrokerError(
                f"the broker could not route {attempt.dispatch.task_name}: no queue is bound "
                f"for it ({returned[0]}); nothing was stored. Declare the queue (or route "
                "the task to one that exists)",
                task_name=attempt.dispatch.task_name,
                task_id=attempt.task_id,
                message_may_exist=refused != len(tags),
            )
            outcome = NOT_SENT if refused == len(tags) else UNKNOWN
            return _outcome(outcome, error, False, attempt, name, queue)
        error = PublishNacked(
            f"the broker refused {len(nacked)} of {len(tags)} message(s) (basic.nack)"
        )
        outcome = NOT_SENT if refused == len(tags) else UNKNOWN
        return _outcome(outcome, error, True, attempt, name, queue)


def _outcome(
    outcome: DispatchOutcome,
    error: BaseException,
    broker_fault: bool,
    attempt: Attempt,
    path: str,
    queue: str | None = None,
) -> WireOutcome:
    return WireOutcome(
        outcome, None, error, broker_fault, queue or attempt.dispatch.queue, path, None
    )
