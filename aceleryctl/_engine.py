"""The dispatch engine shared by the async controller and its sync facade.

One :class:`DispatchEngine` owns a publish pool, a circuit breaker, the deadline
logic, the mapping of library exceptions onto :mod:`aceleryctl.exceptions`, and
the failure log. :meth:`run_async` and :meth:`run_sync` are the only two ways
in: the first awaits on the event loop, the second blocks the calling thread.
Both follow the same steps:

1. ask the breaker (an open breaker costs microseconds: no thread, no socket);
2. queue the publish on the pool (a full queue is refused at once);
3. wait for it, at most the call's deadline;
4. tell the breaker what happened, log a failure once, rebuild the result in the
   caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import kombu.exceptions
from celery import Celery
from celery.backends.redis import RedisBackend

from aceleryctl._batching import BatchRunner
from aceleryctl._calls import Call
from aceleryctl._direct import DirectPath
from aceleryctl._logging import Redactor, log_dispatch_failure
from aceleryctl._pool import (
    PoolClosed,
    PoolSaturated,
    PoolStatistics,
    PublishPool,
    WaitOutcome,
)
from aceleryctl._results import rebind
from aceleryctl._transport import (
    BOUNDED_DRIVERS,
    BROKER_ERRORS,
    ConnectFailed,
    ConnectionRegistry,
    ThreadPublisher,
    TransportPolicy,
    nothing_sent,
    transport_driver,
)
from aceleryctl.breaker import BreakerStatistics, CircuitBreaker
from aceleryctl.exceptions import (
    BrokerError,
    CircuitOpenError,
    ControllerClosed,
    DispatchOverloaded,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
)

__all__ = ["ControllerStatistics", "DispatchEngine"]

_SERIALIZATION_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.EncodeError,
    kombu.exceptions.ContentDisallowed,
)


class _Permit(Protocol):
    """What the engine needs of a breaker permit (see ``aceleryctl.breaker.Permit``)."""

    def record_success(self, duration: float) -> None: ...
    def record_failure(self, duration: float) -> None: ...
    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ControllerStatistics:
    """A snapshot of a controller's counters, its pool and its breaker.

    Attributes:
        dispatched: publishes that returned a result.
        failed: calls that raised a :class:`TaskDispatchError` of any kind.
        timed_out: calls that raised :class:`DispatchTimeout`.
        overloaded: calls refused because no thread was free in time or the queue was full.
        rejected_open: calls refused by the open circuit breaker.
        late_completions: publishes that finished on their thread after their
            caller had already been given :class:`DispatchTimeout`.
        direct: dispatches (among ``dispatched``) sent on the direct path
            (:mod:`aceleryctl._direct`); the rest went through Celery's stock
            ``apply_async``.
        pool: the publish pool's own snapshot.
        breaker: the circuit breaker's own snapshot.
    """

    dispatched: int
    failed: int
    timed_out: int
    overloaded: int
    rejected_open: int
    late_completions: int
    direct: int
    pool: PoolStatistics
    breaker: BreakerStatistics


class _Counters:
    __slots__ = (
        "direct",
        "dispatched",
        "failed",
        "late_completions",
        "lock",
        "overloaded",
        "rejected_open",
        "timed_out",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dispatched = 0
        self.failed = 0
        self.timed_out = 0
        self.overloaded = 0
        self.rejected_open = 0
        self.late_completions = 0
        self.direct = 0


class DispatchEngine:
    """Runs prepared :class:`Call` objects under a deadline, a breaker and a bounded pool.

    Thread-safety: every method may be called from any thread; ``run_async`` only
    from a coroutine.

    Args:
        app: the Celery app every publish uses (made current on pool threads).
        max_workers, max_pending: see :class:`aceleryctl._pool.PublishPool`.
        breaker: shared by every caller of this engine.
        redactor: sanitizes arguments for the failure log.
        transport: socket and connect bounds of the publishing connections (Redis).
        max_batch: publishes a thread takes at once and sends in one pipelined
            round trip (bounded Redis path only).
        direct_publish: build plain task messages on the direct path (Redis
            only; see :mod:`aceleryctl._direct`); ``False`` sends every call
            through Celery's stock ``apply_async``.
    """

    def __init__(
        self,
        app: Celery,
        *,
        max_workers: int,
        max_pending: int,
        breaker: CircuitBreaker,
        redactor: Redactor,
        transport: TransportPolicy,
        max_batch: int = 16,
        direct_publish: bool = True,
    ) -> None:
        self.app = app
        self.transport = transport
        driver = transport_driver(app)
        self.bounded = driver in BOUNDED_DRIVERS
        #: The direct publish path, or ``None`` (not Redis, or turned off).
        self.direct = DirectPath(app) if direct_publish and driver == "redis" else None
        self._local = threading.local()
        self._connections = ConnectionRegistry()
        self.breaker = breaker
        self.redactor = redactor
        self.pool = PublishPool(
            max_workers=max_workers,
            max_pending=max_pending,
            name="aceleryctl",
            initializer=lambda: _prepare_publishing_thread(app),
            finalizer=lambda: self._release_publishing_thread(),
            max_batch=max_batch if self.bounded else 1,
            batch_runner=BatchRunner(self.direct, self._publisher),
            batch_ready=self._connected,
        )
        self._counters = _Counters()

    # -- the two ways in ---------------------------------------------------

    async def run_async(self, call: Call) -> Any:
        """Publish ``call`` on the pool and await it on the event loop.

        Raises:
            TaskDispatchError: a subclass saying what happened (see exceptions).
            asyncio.CancelledError: the awaiting task was cancelled; a publish that
                had not started never will, one already running finishes on its own.
        """
        permit, future = self._begin(call)
        try:
            outcome = await self.pool.wait_async(future, call.timeout)
        except asyncio.CancelledError:
            # Nobody will read the outcome, but the breaker must still hear it:
            # an unsettled half-open probe would keep the breaker half-open.
            if future.cancelled():
                permit.release()
            else:
                future.add_done_callback(lambda f: self._settle_unobserved(call, permit, f))
            raise
        return self._finish(call, permit, outcome)

    def run_sync(self, call: Call) -> Any:
        """Publish ``call`` on the pool and block the calling thread until it is done.

        Raises:
            TaskDispatchError: a subclass saying what happened (see exceptions).
        """
        permit, future = self._begin(call)
        outcome = self.pool.wait(future, call.timeout)
        return self._finish(call, permit, outcome)

    def submit_detached(self, call: Call) -> None:
        """Publish ``call`` without anyone waiting (on-commit dispatch).

        Runs on whatever thread commits the transaction and never blocks it.
        Failures cannot reach a caller any more: they are counted and logged as
        one record, like any other dispatch failure. Never raises.
        """
        try:
            permit, future = self._begin(call)
        except CircuitOpenError as exc:
            # _begin does not log rejections (they are cheap and counted), but a
            # rejected on-commit dispatch is a task lost after its data committed:
            # that must be visible.
            self._log(call, exc, "not_sent")
            return
        except TaskDispatchError:
            return  # already counted and logged by _begin

        def done(_: Future[Any]) -> None:
            try:
                cancelled = future.cancelled()  # by a shutdown that ran out of time
                self._finish(call, permit, WaitOutcome(future, not cancelled, cancelled))
            except TaskDispatchError:
                pass  # logged by _finish

        future.add_done_callback(done)

    # -- steps -------------------------------------------------------------

    def _begin(self, call: Call) -> tuple[_Permit, Future[Any]]:
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as exc:
            # Not logged per call: the breaker logged its opening once, and a
            # storm of rejections must stay cheap. Counted in statistics.
            exc.task_name = call.task_name
            exc.task_id = call.task_id
            with self._counters.lock:
                self._counters.rejected_open += 1
                self._counters.failed += 1
            raise
        try:
            call.deadline = time.monotonic() + call.timeout
            future = self.pool.submit(_PublishJob(self, call))
        except PoolSaturated as exc:
            permit.release()
            raise self._fail(
                call,
                DispatchOverloaded(
                    f"could not dispatch {call.task_name}: {exc}; nothing was sent",
                    task_name=call.task_name,
                    task_id=call.task_id,
                ),
                exc,
                "not_sent",
            ) from exc
        except PoolClosed as exc:
            permit.release()
            raise self._fail(
                call,
                ControllerClosed(
                    f"could not dispatch {call.task_name}: the controller is closed; "
                    "nothing was sent",
                    task_name=call.task_name,
                    task_id=call.task_id,
                ),
                exc,
                "not_sent",
            ) from exc
        return permit, future

    def _finish(self, call: Call, permit: _Permit, outcome: WaitOutcome[Any]) -> Any:
        future = outcome.future
        if outcome.done:
            exc = future.exception()
            if exc is None:
                permit.record_success(call.finished_at - call.started_at)
                if call.counted:
                    with self._counters.lock:
                        self._counters.dispatched += 1
                        self._counters.direct += call.sent_direct
                if call.sent_direct:
                    result = self.app.AsyncResult(future.result())
                else:
                    result = rebind(future.result(), self.app)
                if call.parent_task is not None:
                    call.parent_task.add_trail(result)
                return result
            error, outcome_name = self._classify(call, permit, exc)
            failure = self._fail(call, error, exc, outcome_name)
            raise failure from failure.__cause__
        if outcome.never_started:
            permit.release()
            closed = self.pool.statistics().closed
            error_type = ControllerClosed if closed else DispatchOverloaded
            reason = (
                "the controller closed before a publishing thread took it"
                if closed
                else f"no publishing thread became free within {call.timeout:g} s"
            )
            raise self._fail(
                call,
                error_type(
                    f"could not dispatch {call.task_name}: {reason}; nothing was sent",
                    task_name=call.task_name,
                    task_id=call.task_id,
                ),
                None,
                "not_sent",
            )
        # Still running: the broker may or may not have the message.
        permit.record_failure(call.timeout)
        if call.counted:
            future.add_done_callback(self._late_completion)
            with self._counters.lock:
                self._counters.timed_out += 1
        id_note = f" under task id {call.task_id}" if call.task_id else ""
        raise self._fail(
            call,
            DispatchTimeout(
                f"dispatching {call.task_name}{id_note} did not finish within "
                f"{call.timeout:g} s; the outcome is unknown: the message may still reach "
                "the broker and the task may run",
                timeout=call.timeout,
                task_name=call.task_name,
                task_id=call.task_id,
            ),
            None,
            "unknown",
        )

    def _classify(
        self, call: Call, permit: _Permit, exc: BaseException
    ) -> tuple[TaskDispatchError, str]:
        name, task_id = call.task_name, call.task_id
        if isinstance(exc, _SERIALIZATION_ERRORS):
            permit.release()
            return (
                TaskSerializationError(
                    f"the arguments of {name} cannot be serialized ({exc}); "
                    "pass JSON-serializable values (ids instead of objects), or set a "
                    "serializer that accepts them; nothing was sent",
                    task_name=name,
                    task_id=task_id,
                ),
                "not_sent",
            )
        if isinstance(exc, TaskDispatchError):  # raised by a zero-argument dispatcher
            permit.release()
            return exc, "failed"
        if isinstance(exc, (ConnectFailed, *BROKER_ERRORS)):
            permit.record_failure(call.finished_at - call.started_at)
            if nothing_sent(exc):
                note, outcome = "nothing was sent", "not_sent"
            else:
                note, outcome = "the message may or may not have reached the broker", "failed"
            shown = exc.__cause__ if isinstance(exc, ConnectFailed) and exc.__cause__ else exc
            return (
                BrokerError(
                    f"the broker failed while dispatching {name}: {type(shown).__name__}: "
                    f"{shown}; {note}",
                    task_name=name,
                    task_id=task_id,
                    message_may_exist=outcome != "not_sent",
                ),
                outcome,
            )
        permit.release()
        return (
            TaskDispatchError(
                f"could not dispatch {name}: {type(exc).__name__}: {exc}",
                task_name=name,
                task_id=task_id,
            ),
            "failed",
        )

    def _fail(
        self,
        call: Call,
        error: TaskDispatchError,
        cause: BaseException | None,
        outcome: str,
    ) -> TaskDispatchError:
        if isinstance(cause, ConnectFailed) and cause.__cause__ is not None:
            cause = cause.__cause__  # the broker's own error, not our internal marker
        if error is not cause:
            error.__cause__ = cause
        if call.counted:  # probes are neither dispatches nor failures
            with self._counters.lock:
                self._counters.failed += 1
                if isinstance(error, DispatchOverloaded):
                    self._counters.overloaded += 1
            self._log(call, error, outcome)
        return error

    def _log(self, call: Call, error: TaskDispatchError, outcome: str) -> None:
        log_dispatch_failure(
            redactor=self.redactor,
            task_name=call.task_name,
            task_id=call.task_id,
            args=call.args,
            kwargs=call.kwargs,
            error=error,
            outcome=outcome,
            dispatch_method=call.method,
            signature_of=call.signature_of,
        )

    def _settle_unobserved(self, call: Call, permit: _Permit, future: Future[Any]) -> None:
        # The caller was cancelled while its publish ran; tell the breaker how the
        # publish ended, without logging or raising (there is no caller).
        if future.cancelled():
            permit.release()
            return
        exc = future.exception()
        if exc is None:
            permit.record_success(call.finished_at - call.started_at)
        elif isinstance(exc, (ConnectFailed, *BROKER_ERRORS)):
            permit.record_failure(call.finished_at - call.started_at)
        else:
            permit.release()

    def _late_completion(self, future: Future[Any]) -> None:
        if not future.cancelled():
            with self._counters.lock:
                self._counters.late_completions += 1

    # -- observation and shutdown -----------------------------------------

    def statistics(self) -> ControllerStatistics:
        """A snapshot of the counters, the pool and the breaker."""
        with self._counters.lock:
            c = self._counters
            counts = (
                c.dispatched,
                c.failed,
                c.timed_out,
                c.overloaded,
                c.rejected_open,
                c.late_completions,
                c.direct,
            )
        return ControllerStatistics(
            *counts, pool=self.pool.statistics(), breaker=self.breaker.statistics()
        )

    def close(self, timeout: float) -> bool:
        """Stop accepting calls; let queued and running publishes finish for up to
        ``timeout`` seconds, then release the broker connections. Blocks the calling
        thread. Returns ``True`` if drained."""
        drained = self.pool.shutdown(timeout)
        if drained:
            self._connections.close_all()
        return drained

    def probe_call(self, timeout: float) -> Call:
        """A call that connects the way a publish would and publishes nothing.

        On the bounded path that is a connect and a PING on the thread's own
        connection (or nothing, when it is already connected); on the stock path
        a connection from Celery's pool.
        """

        def connect(producer: Any) -> None:
            if producer is None:
                with self.app.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1)
                return
            client = getattr(producer.channel, "client", None)
            if client is not None:
                client.ping()  # a round trip even on an established connection

        return Call("probe", "broker probe", None, (), {}, timeout, connect, counted=False)

    async def run_probe_async(self, call: Call) -> float:
        """Run a :meth:`probe_call` on the pool, bypassing the breaker; await it.

        Returns:
            Seconds the connect took.

        Raises:
            TaskDispatchError: a subclass saying why the broker did not answer.
        """
        call.deadline = time.monotonic() + call.timeout
        future = self.pool.submit(lambda: self._publish(call))
        self._finish(call, _NoPermit(), await self.pool.wait_async(future, call.timeout))
        return call.finished_at - call.started_at

    def run_probe_sync(self, call: Call) -> float:
        """:meth:`run_probe_async`, blocking the calling thread."""
        call.deadline = time.monotonic() + call.timeout
        future = self.pool.submit(lambda: self._publish(call))
        self._finish(call, _NoPermit(), self.pool.wait(future, call.timeout))
        return call.finished_at - call.started_at

    # -- on a pool thread ----------------------------------------------------

    def _publish(self, call: Call) -> Any:
        # The stamps measure the publish alone (not the wait for a thread), which
        # is what the breaker's slow-call rule should see.
        call.started_at = time.monotonic()
        try:
            if call.prepare is not None:
                call.prepare()
            if self.bounded and call.accepts_producer:
                return self._publisher().run(call.publish, call.deadline)
            return call.publish(None)
        finally:
            call.finished_at = time.monotonic()

    def _connected(self) -> bool:
        # On a pool thread: whether it holds a live producer (batches only then).
        publisher: ThreadPublisher | None = getattr(self._local, "publisher", None)
        return publisher is not None and publisher.connected

    def _release_publishing_thread(self) -> None:
        # Runs on a publishing thread as it exits: close what it opened, rather than
        # leaving sockets for the garbage collector.
        publisher: ThreadPublisher | None = getattr(self._local, "publisher", None)
        if publisher is not None:
            publisher.discard()
        _release_thread_backend(self.app)

    def _publisher(self) -> ThreadPublisher:
        publisher: ThreadPublisher | None = getattr(self._local, "publisher", None)
        if publisher is None:
            publisher = ThreadPublisher(self.app, self.transport, self._connections)
            self._local.publisher = publisher
        return publisher


def _prepare_publishing_thread(app: Celery) -> None:
    """Runs once on each new publishing thread, before its first publish.

    Makes the controller's app current here (a ``@shared_task`` resolves against
    the thread's current app). And for a Redis result backend, stops Celery from
    subscribing this thread to every task it publishes: Celery keeps a result
    backend per thread, and ``on_task_call`` subscribes that backend's pub/sub
    connection to each task id (a SUBSCRIBE and later an UNSUBSCRIBE per dispatch,
    on a connection nothing closes). The result built here is thrown away and
    rebuilt in the caller's thread, whose backend subscribes when someone waits
    on it and then reads the stored state, so nothing is lost.
    """
    app.set_current()
    backend = app.backend  # this thread's own instance
    if isinstance(backend, RedisBackend):
        backend.on_task_call = _no_subscription  # type: ignore[method-assign]


def _release_thread_backend(app: Celery) -> None:
    """Close the calling thread's result backend connections, if it made any.

    Celery keeps a result backend per thread (``app._local.backend``) and nothing
    closes it when the thread ends. Only a Redis backend is handled here (its
    client pool and pub/sub consumer); others are left to their own cleanup.
    """
    backend = getattr(getattr(app, "_local", None), "backend", None)
    if not isinstance(backend, RedisBackend):
        return
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.subscribed_to.clear()
        consumer.stop()
    client = backend.__dict__.get("client")  # a cached property: only if ever used
    if client is not None:
        client.connection_pool.disconnect()


def _no_subscription(producer: Any, task_id: str) -> None:
    """Stands in for ``RedisBackend.on_task_call`` on publishing threads."""


class _PublishJob:
    """A pool job that publishes one call; the batch runner reads ``call``."""

    __slots__ = ("call", "engine")

    def __init__(self, engine: DispatchEngine, call: Call) -> None:
        self.engine = engine
        self.call = call

    def __call__(self) -> Any:
        return self.engine._publish(self.call)


class _NoPermit:
    """Stands in for a breaker permit where the breaker is not consulted (probes)."""

    def record_success(self, duration: float) -> None:
        """Ignored."""

    def record_failure(self, duration: float) -> None:
        """Ignored."""

    def release(self) -> None:
        """Ignored."""
