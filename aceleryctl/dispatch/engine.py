"""The dispatch engine shared by the async controller and its sync facade.

One :class:`DispatchEngine` owns a publish pool, a circuit breaker, a wire (the
broker seam), the deadline, the mapping of wire outcomes onto
:mod:`aceleryctl.exceptions`, the failure log and the listeners.
:meth:`~DispatchEngine.run_async`, :meth:`~DispatchEngine.run_sync` and
:meth:`~DispatchEngine.run_many_sync` (the outbox relay's) are the ways in for a
caller who waits; :meth:`~DispatchEngine.submit_detached` for an on-commit publish
nobody waits for. All follow the same steps:

1. ask the breaker (an open breaker costs microseconds: no thread, no socket);
2. queue the attempt on the pool (a full queue is refused at once);
3. wait for it, at most the dispatch's deadline;
4. tell the breaker, the listeners and (on failure) the log what happened, and
   rebuild the result in the caller's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from celery import Celery

from aceleryctl import compat
from aceleryctl._clock import Clock
from aceleryctl._logging import Redactor
from aceleryctl.breaker import BreakerState, CircuitBreaker, StateChange
from aceleryctl.dispatch.failures import (
    Failures,
    Permit,
    Settled,
    outcome_of,
    settle_unobserved,
)
from aceleryctl.dispatch.jobs import AnyFuture
from aceleryctl.dispatch.listener import (
    DispatchListener,
    DispatchOutcome,
    Listeners,
    PoolChange,
    event_of,
)
from aceleryctl.dispatch.loop_path import LoopPath
from aceleryctl.dispatch.pool import PoolClosed, PoolSaturated, PublishPool, WaitOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch
from aceleryctl.dispatch.recovery import RecoveryProbe
from aceleryctl.dispatch.results import rebind
from aceleryctl.dispatch.runner import BatchRunner, PublishJob
from aceleryctl.dispatch.statistics import ControllerStatistics, StatisticsListener
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError
from aceleryctl.wires.base import Wire, WireOutcome

__all__ = ["DispatchEngine", "Settled"]

_OPEN_STATES = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class DispatchEngine:
    """Runs dispatches under a deadline, a breaker and a bounded pool, through one wire.

    Thread-safety: every method may be called from any thread; ``run_async`` only
    from a coroutine.

    Args:
        app: the Celery app every publish uses (made current on pool threads).
        wire: the broker seam (:func:`aceleryctl.wires.wire_for`).
        max_workers, max_pending: see :class:`aceleryctl.dispatch.pool.PublishPool`.
        breaker: shared by every caller of this engine.
        redactor: sanitizes arguments for the failure log.
        max_batch: dispatches a thread takes at once (only for wires that batch).
        listeners: told about every settled dispatch, pool and breaker change.
        clock: monotonic seconds; deadlines and attempt times are its readings.
        loop_publish: coroutine calls that qualify publish from their event loop's
            thread (:mod:`aceleryctl.dispatch.loop_path`); ``connect_timeout``
            (seconds) bounds that path's connects.
    """

    def __init__(
        self,
        app: Celery,
        wire: Wire,
        *,
        max_workers: int,
        max_pending: int,
        breaker: CircuitBreaker,
        redactor: Redactor,
        max_batch: int = 16,
        listeners: tuple[DispatchListener, ...] = (),
        clock: Clock = time.monotonic,
        loop_publish: bool = False,
        connect_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.wire = wire
        self.breaker = breaker
        self.clock = clock
        # The statistics are the first listener; the engine counts into them
        # directly and builds a DispatchEvent only when other listeners exist.
        self._stats = StatisticsListener()
        self._listeners = Listeners(listeners)
        self._failures = Failures(app, redactor)
        # A broker fault readies the probe's thread on the publishing thread (not the loop's).
        recovery = self.recovery = RecoveryProbe(wire, breaker, clock=clock)
        self._runner = BatchRunner(wire, clock, admit=self._admit, broker_fault=recovery.prepare)
        self.pool = PublishPool(
            max_workers=max_workers,
            max_pending=max_pending,
            name="aceleryctl",
            initializer=self._thread_started,
            finalizer=self._thread_stopped,
            max_batch=max_batch if wire.batches else 1,
            batch_runner=self._runner,
            batch_ready=wire.connected,
            clock=clock,
        )
        breaker.add_listener(self)
        self.loop_path = (
            LoopPath(
                wire,
                self.pool,
                clock=clock,
                listeners=lambda: self._listeners,
                broker_fault=recovery.prepare,
                connect_timeout=connect_timeout,
            )
            if loop_publish
            else None
        )

    # -- listeners ---------------------------------------------------------

    def add_listener(self, listener: DispatchListener) -> None:
        """Tell ``listener`` about every dispatch settled from now on. Thread-safe."""
        self._listeners = self._listeners.added(listener)

    def remove_listener(self, listener: DispatchListener) -> None:
        """Stop telling ``listener``; a no-op if it was not added."""
        self._listeners = self._listeners.removed(listener)

    @property
    def listeners(self) -> Listeners:
        """The listeners added (the engine's own statistics are counted apart)."""
        return self._listeners

    # -- the ways in -------------------------------------------------------

    async def run_async(self, dispatch: Dispatch, parent: Any = None, result: bool = True) -> Any:
        """Publish ``dispatch`` on the pool and await it on the event loop. Returns
        its result object, or ``True`` when ``result`` is false and no parent task
        needs it (a caller that never reads one is spared making it).

        Raises:
            TaskDispatchError: a subclass saying what happened (see exceptions).
            asyncio.CancelledError: the awaiting task was cancelled; a publish that
                had not started never will, one already running finishes on its own.
        """
        loop_path = self.loop_path
        if loop_path is not None and loop_path.takes(dispatch):
            attempt, permit = self._admitted(dispatch, parent)
            on_loop = await loop_path.run(attempt, lambda f: self._cancelled(attempt, permit, f))
            if on_loop is not None:
                return self._finish(attempt, permit, on_loop, result)
            future = self._submit(attempt, permit)
        else:
            attempt, permit, future = self._begin(dispatch, parent)
        try:
            outcome = await self.pool.wait_async(future, dispatch.timeout)
        except asyncio.CancelledError:
            self._cancelled(attempt, permit, future)
            raise
        return self._finish(attempt, permit, outcome, result)

    def _cancelled(self, attempt: Attempt, permit: Permit, future: AnyFuture[WireOutcome]) -> None:
        # Nobody will read the outcome, but the breaker must still hear it:
        # an unsettled half-open probe would keep the breaker half-open.
        if future.cancelled():
            permit.release()
        else:
            future.add_done_callback(lambda f: settle_unobserved(attempt, permit, f))

    def run_sync(self, dispatch: Dispatch, parent: Any = None) -> Any:
        """Publish ``dispatch`` on the pool and block the calling thread until it is done.

        Raises:
            TaskDispatchError: a subclass saying what happened (see exceptions).
        """
        attempt, permit, future = self._begin(dispatch, parent)
        outcome = self.pool.wait(future, dispatch.timeout)
        return self._finish(attempt, permit, outcome)

    def submit_detached(
        self, dispatch: Dispatch, parent: Any = None, settled: Settled | None = None
    ) -> None:
        """Publish ``dispatch`` without anyone waiting (on-commit dispatch).

        Runs on whatever thread commits the transaction and never blocks it.
        Failures cannot reach a caller any more: they are counted and logged as
        one record, like any other dispatch failure, and handed to ``settled``
        (the outbox keeps the row then). A detached publish still queued when its
        deadline passes, or when the breaker has opened meanwhile, is not sent.
        Never raises.
        """
        try:
            kept = settled is not None
            attempt, permit, future = self._begin(dispatch, parent, on_commit=True, kept=kept)
        except CircuitOpenError as exc:
            # Counted, never logged per call; but a refusal after the commit loses
            # the task unless an outbox keeps it: the digest makes that visible.
            self._failures.refusals.add(dispatch.task_name, lost=settled is None)
            if settled is not None:
                settled(DispatchOutcome.NOT_SENT, exc)
            return
        except TaskDispatchError as exc:  # already counted and logged by _begin
            if settled is not None:
                settled(DispatchOutcome.NOT_SENT, exc)
            return

        def done(_: Future[Any]) -> None:
            cancelled = future.cancelled()  # by a shutdown that ran out of time
            outcome, error = DispatchOutcome.SENT, None
            try:
                self._finish(attempt, permit, WaitOutcome(future, not cancelled, cancelled))
            except TaskDispatchError as exc:  # logged by _finish
                outcome, error = outcome_of(exc), exc
            if settled is not None:
                settled(outcome, error)

        future.add_done_callback(done)

    def run_many_sync(self, dispatches: Sequence[Dispatch], *, relayed: bool = False) -> list[Any]:
        """Publish ``dispatches`` together and block the calling thread until each
        has settled (the relay's way in). Where the wire batches, dispatches queued
        together go out in one round trip per publishing thread.

        Returns:
            One entry per dispatch, in order: its result (``True`` when
            ``relayed``: the relay needs no result object), or the
            :class:`~aceleryctl.exceptions.TaskDispatchError` a caller would have
            got. Once the breaker refuses one, the rest are refused with the same
            error without asking it again.
        """
        begun: list[tuple[Attempt, Permit, Future[WireOutcome]] | TaskDispatchError] = []
        refused: CircuitOpenError | None = None
        for dispatch in dispatches:
            try:
                begun.append(refused or self._begin(dispatch, None, relayed=relayed))
            except TaskDispatchError as exc:
                refused = exc if isinstance(exc, CircuitOpenError) else None
                begun.append(exc)
        results: list[Any] = []
        for entry in begun:
            if isinstance(entry, TaskDispatchError):
                results.append(entry)
                continue
            attempt, permit, future = entry  # all queued together: the waits overlap
            waited = self.pool.wait(future, attempt.deadline - self.clock())
            try:
                results.append(self._finish(attempt, permit, waited, not relayed))
            except TaskDispatchError as exc:
                results.append(exc)
        return results

    def _admit(self, attempt: Attempt) -> WireOutcome | None:
        """Before a batch (publishing thread): refuse a detached attempt whose deadline
        passed in the queue or whose breaker opened meanwhile (a waiter abandons its own)."""
        if not attempt.on_commit:
            return None
        if self.breaker.state in _OPEN_STATES:
            retry_after = self.breaker.statistics().retry_after
            error: TaskDispatchError = self._failures.opened_meanwhile(attempt, retry_after)
        elif self.clock() > attempt.deadline:
            error = self._failures.never_started(attempt, closed=False)
        else:
            return None
        return WireOutcome(DispatchOutcome.NOT_SENT, error=error)

    # -- steps -------------------------------------------------------------

    def _begin(
        self,
        dispatch: Dispatch,
        parent: Any,
        on_commit: bool = False,
        relayed: bool = False,
        kept: bool = False,
    ) -> tuple[Attempt, Permit, Future[WireOutcome]]:
        attempt, permit = self._admitted(dispatch, parent)
        attempt.on_commit, attempt.relayed, attempt.kept = on_commit, relayed, kept
        return attempt, permit, self._submit(attempt, permit)

    def _admitted(self, dispatch: Dispatch, parent: Any) -> tuple[Attempt, Permit]:
        """A new attempt and the breaker's permit for it (raises CircuitOpenError)."""
        now = self.clock()
        attempt = Attempt(dispatch, now + dispatch.timeout, now, None, dispatch.task_id, parent)
        try:
            return attempt, self.breaker.acquire()
        except CircuitOpenError as exc:
            # Not logged per call: the breaker logged its opening once, and a
            # storm of rejections must stay cheap. Counted by the listeners.
            exc.task_name = dispatch.task_name
            exc.task_id = dispatch.task_id
            self._settled(attempt, DispatchOutcome.NOT_SENT, exc)
            raise

    def _submit(self, attempt: Attempt, permit: Permit) -> Future[WireOutcome]:
        try:
            return self.pool.submit(PublishJob(self._runner, attempt))
        except (PoolSaturated, PoolClosed) as exc:
            permit.release()
            error = self._failures.refused(attempt, exc, closed=isinstance(exc, PoolClosed))
            self._fail(attempt, error, exc, DispatchOutcome.NOT_SENT)
            raise error from exc

    def _finish(
        self,
        attempt: Attempt,
        permit: Permit,
        waited: WaitOutcome[WireOutcome],
        result: bool = True,
    ) -> Any:
        future = waited.future
        if waited.done:
            outcome = future.result()
            if outcome.sent:
                permit.record_success(attempt.duration)
                self._settled(attempt, DispatchOutcome.SENT, None)
                if result or attempt.parent is not None:  # the parent's trail needs it
                    return self._result(attempt, outcome)
                return True
            error = self._failures.from_wire(attempt, outcome, permit)
            self._fail(attempt, error, outcome.error, outcome.outcome)
            raise error from error.__cause__
        if waited.never_started:
            permit.release()
            closed = self.pool.statistics().closed
            error = self._failures.never_started(attempt, closed=closed)
            self._fail(attempt, error, None, DispatchOutcome.NOT_SENT)
            raise error
        # Still running: the broker may or may not have the message.
        permit.record_failure(attempt.dispatch.timeout)
        future.add_done_callback(lambda f: self._late(attempt, f))
        error = self._failures.timed_out(attempt)
        self._fail(attempt, error, None, DispatchOutcome.UNKNOWN)
        raise error

    def _result(self, attempt: Attempt, outcome: WireOutcome) -> Any:
        if outcome.sent_id is not None:  # the wire wrote the message itself
            result: Any = self.app.AsyncResult(outcome.sent_id)
        else:
            result = rebind(outcome.result, self.app)
        if attempt.parent is not None:
            attempt.parent.add_trail(result)
        return result

    def _fail(
        self,
        attempt: Attempt,
        error: TaskDispatchError,
        cause: BaseException | None,
        outcome: DispatchOutcome,
    ) -> None:
        self._failures.attach_cause(error, cause)
        self._failures.log_attempt(attempt, error, self._failures.log_outcome(error, outcome))
        self._settled(attempt, outcome, error)

    def _settled(
        self,
        attempt: Attempt,
        outcome: DispatchOutcome,
        error: BaseException | None,
        late: bool = False,
    ) -> None:
        error_type = None if error is None else type(error).__name__
        self._stats.count(outcome, error_type, attempt.path, late)
        listeners = self._listeners
        if not listeners:
            return
        listeners.dispatch_settled(event_of(attempt, outcome, error_type, late, self.clock))

    def _late(self, attempt: Attempt, future: AnyFuture[Any]) -> None:
        # The publish ended after its caller was given DispatchTimeout.
        if future.cancelled():
            return
        outcome: WireOutcome = future.result()
        self._settled(attempt, outcome.outcome, outcome.error, late=True)

    # -- observation and shutdown -----------------------------------------

    def statistics(self) -> ControllerStatistics:
        """A snapshot of the counters, the pool and the breaker."""
        return self._stats.snapshot(self.pool.statistics(), self.breaker.statistics())

    def close(self, timeout: float) -> bool:
        """Stop accepting dispatches; let queued and running publishes finish for up
        to ``timeout`` seconds, then release the broker connections. Blocks the
        calling thread. Returns ``True`` if drained."""
        self.recovery.close()
        if self.loop_path is not None:
            self.loop_path.close(timeout)
        drained = self.pool.shutdown(timeout)
        self._listeners.pool_changed(PoolChange.CLOSED)
        self._failures.refusals.close()
        if drained:
            self.wire.close()
        return drained

    def state_changed(self, change: StateChange) -> None:
        """The breaker changed state: tell the recovery probe and the listeners."""
        self.recovery.state_changed(change)
        self._listeners.breaker_changed(change)

    # -- on pool threads ---------------------------------------------------

    def _thread_started(self) -> None:
        compat.prepare_publishing_thread(self.app)
        self._listeners.pool_changed(PoolChange.THREAD_STARTED)

    def _thread_stopped(self) -> None:
        # Close what this thread opened, rather than leaving sockets for the GC.
        self.wire.release_thread()
        compat.release_thread_backend(self.app)
        self._listeners.pool_changed(PoolChange.THREAD_STOPPED)
