"""The stock wire: Celery's own ``apply_async`` / ``send_task``, for every broker and kind.

Everything that no fast path takes goes through here: canvases, links,
compression, custom task classes, non-Redis brokers, zero-argument callables.
On a bounded transport (Redis, kombu's in-memory transport) each publishing
thread hands Celery its own connection and producer
(:class:`~aceleryctl.wires.connections.ThreadPublisher`), with socket and connect
timeouts and Celery's publish retry off unless the caller asked for it; several
dispatches queued together then share one pipelined round trip through kombu's
publish batch. On other transports Celery publishes through its own pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from aceleryctl.compat.kombu_redis import ping_channel, publish_batch
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.wires.base import WireOutcome
from aceleryctl.wires.connections import LeanProducer, ThreadPublisher, classify_failure
from aceleryctl.wires.per_thread import PerThreadWire

__all__ = ["StockWire", "send_with_celery"]


def _sending(options: Any, producer: LeanProducer | None) -> dict[str, Any]:
    """Options for one publish: on the bounded path, this thread's producer, and no
    publish retry unless the caller asked for one (a retried publish can land twice)."""
    if producer is None:
        return dict(options)
    sent = {**options, "producer": producer}
    sent.setdefault("retry", False)
    return sent


def send_with_celery(app: Celery, attempt: Attempt, producer: LeanProducer | None) -> Any:
    """Publish one dispatch the way Celery itself would; return what Celery returns.

    Runs on a publishing thread, inside the caller's context. A dispatch loaded
    from its stored form (no ``target``) is resolved again: a task by name in
    ``app``, a signature or canvas from its dictionary.

    Raises:
        Exception: whatever Celery, kombu or the broker raised.
    """
    dispatch = attempt.dispatch
    kind = dispatch.kind
    if kind is DispatchKind.CALLABLE:
        return dispatch.target()
    options = _sending(dispatch.options, producer)
    if kind is DispatchKind.TASK:
        task = _task_of(app, dispatch)
        if task is None:
            return app.send_task(dispatch.task_name, dispatch.args, dispatch.kwargs, **options)
        return task.apply_async(dispatch.args, dispatch.kwargs, **options)
    signature = dispatch.target
    if signature is None:
        signature = app.signature(dispatch.signature)
    if kind is DispatchKind.CANVAS:
        options["task_id"] = attempt.task_id
    return signature.apply_async(dispatch.args, dispatch.kwargs, **options)


def _task_of(app: Celery, dispatch: Dispatch) -> Any:
    if dispatch.by_name:
        return None
    if dispatch.target is not None:
        return dispatch.target
    return app.tasks.get(dispatch.task_name)


class StockWire(PerThreadWire[ThreadPublisher]):
    """Celery's stock publish, bounded per thread where the transport allows it.

    Args:
        app: the controller's Celery app.
        policy: socket and connect bounds for a bounded transport, or ``None``
            to let Celery publish through its own connection pool.
        clock: monotonic seconds, the engine's clock (deadlines are its readings).
    """

    name = "stock"

    @property
    def bounded(self) -> bool:
        """Whether publishes use this wire's own bounded connections."""
        return self._policy is not None

    @property
    def batches(self) -> bool:
        return self._policy is not None

    def new_publisher(self) -> ThreadPublisher:
        """A bounded connection and producer for this thread (bounded transports only)."""
        assert self._policy is not None
        return ThreadPublisher(self.app, self._policy, self._registry, clock=self._clock)

    def close(self) -> None:
        self._registry.close_all()

    def describe(self) -> dict[str, Any]:
        return {"wire": self.name, "bounded": self.bounded}

    # -- publishing ----------------------------------------------------------------

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        """Publish each attempt with Celery; several at once share one pipelined
        round trip when they can all use this thread's producer. Never raises."""
        if (
            len(attempts) < 2
            or not self.bounded
            or any(a.dispatch.kind is DispatchKind.CALLABLE for a in attempts)
        ):
            return [self.publish_one(attempt) for attempt in attempts]
        publisher = self.publisher()
        try:
            producer = publisher.producer(deadline)
        except Exception:
            # Each one connects, retries a refusal and fails on its own.
            return [self.publish_one(attempt) for attempt in attempts]
        return self._pipelined(publisher, producer, attempts)

    def publish_one(self, attempt: Attempt) -> WireOutcome:
        """Publish one attempt; on a bounded transport a refused connection is
        retried within its deadline (nothing can have been sent). Never raises."""
        queue = attempt.dispatch.queue
        try:
            if self.bounded and attempt.dispatch.kind is not DispatchKind.CALLABLE:
                result = self.publisher().run(
                    lambda producer: attempt.run(send_with_celery, self.app, attempt, producer),
                    attempt.deadline,
                )
            else:
                result = attempt.run(send_with_celery, self.app, attempt, None)
        except BaseException as exc:
            return classify_failure(exc, self.name, queue)
        return WireOutcome(DispatchOutcome.SENT, result, queue=queue, path=self.name)

    def _pipelined(
        self, publisher: ThreadPublisher, producer: LeanProducer, attempts: Sequence[Attempt]
    ) -> list[WireOutcome]:
        # Celery builds every message as usual; kombu's publish batch buffers
        # their Redis commands and sends them in one pipeline (never retried).
        built: list[tuple[bool, Any]] = []
        flush_error: BaseException | None = None
        try:
            with publish_batch(producer, max_size=4 * len(attempts) + 8):
                for attempt in attempts:
                    try:
                        built.append(
                            (True, attempt.run(send_with_celery, self.app, attempt, producer))
                        )
                    except BaseException as exc:
                        built.append((False, exc))
        except BaseException as exc:
            flush_error = exc
            publisher.discard()
        outcomes: list[WireOutcome] = []
        for index, attempt in enumerate(attempts):
            queue = attempt.dispatch.queue
            if index >= len(built):  # not reached: the batch itself failed first
                error = flush_error or RuntimeError("publish batch failed")
                outcomes.append(classify_failure(error, self.name, queue))
                continue
            ok, value = built[index]
            if ok and flush_error is None:
                outcomes.append(
                    WireOutcome(DispatchOutcome.SENT, value, queue=queue, path=self.name)
                )
            else:
                error = flush_error if ok and flush_error is not None else value
                outcomes.append(classify_failure(error, self.name, queue))
        return outcomes

    def probe(self, deadline: float) -> WireOutcome:
        """A connect and a PING on this thread's own connection (bounded), or a
        connection from Celery's pool (stock). Never raises."""
        try:
            if self.bounded:
                self.publisher().run(_ping, deadline)
            else:
                with self.app.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1)
        except BaseException as exc:
            return classify_failure(exc, self.name)
        return WireOutcome(DispatchOutcome.SENT, path=self.name)


def _ping(producer: LeanProducer) -> None:
    ping_channel(producer.channel)  # a round trip even on an established connection
