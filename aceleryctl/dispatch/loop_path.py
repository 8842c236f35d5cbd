"""Publishing from the event loop's thread (``LOOP_PUBLISH``): no thread hop at all.

With ``loop_publish=True`` a coroutine's plain task call on the Redis direct path
is built on the event loop's own thread, by the same functions the publishing
threads use (:class:`~aceleryctl.wires.redis_message.DirectPath`), and handed to
that loop's :class:`~aceleryctl.wires.loop_writer.LoopWriter`, which writes
everything queued in one loop turn in one write. The caller waits on the loop
for the reply, at most its deadline, under the same breaker, with the same
outcomes, log record and listeners as on the publishing threads: the engine
settles it with the same code.

A call takes this path only when all of these hold, and the publishing threads
otherwise (decided per call, in about a microsecond):

* the wire is Redis with the direct path on and without ``REPLICA_ACKS``, and its
  connections have an asyncio twin (plain TCP, Unix socket or TLS; not Sentinel);
* a direct write has already succeeded on a publishing thread in this process,
  for this task and queue (that write declared the queue and cached its route,
  and its kombu channel lends the envelope functions, which only read settings);
* every ``before_task_publish`` and ``after_task_publish`` receiver is known to
  be loop-safe (aceleryctl's own, or one marked with
  :func:`aceleryctl.dispatch.listener.mark_loop_safe`): any other receiver is user
  code that may block or touch the ORM, which must not run on the loop;
* the call is awaited by a coroutine (the sync facade, on-commit publishes and
  the outbox relay keep the threads).

Loop thread only, except :meth:`LoopPath.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

from celery import signals

from aceleryctl._clock import Clock
from aceleryctl.compat.celery import all_receivers, has_receivers
from aceleryctl.compat.kombu_redis import channel_pool
from aceleryctl.compat.redis_async import async_connection_factory
from aceleryctl.dispatch.jobs import AnyFuture, WaitOutcome
from aceleryctl.dispatch.listener import DispatchOutcome, Listeners, is_loop_safe, publishing_noted
from aceleryctl.dispatch.pool import PublishPool
from aceleryctl.dispatch.record import Attempt, Dispatch
from aceleryctl.dispatch.waker import LoopWaker
from aceleryctl.wires.base import Wire, WireOutcome
from aceleryctl.wires.connections import classify_failure
from aceleryctl.wires.loop_writer import Item, LoopWriter
from aceleryctl.wires.redis_message import DirectPath, Prepared, Snapshot

__all__ = ["PATH", "LoopPath"]

#: The path name dispatches written from the loop are counted under.
PATH = "redis-loop"


#: Seconds a loop reuses the app's settings snapshot. Reading the dozen Celery
#: settings a message depends on costs about 30 µs (each lookup tries the
#: setting's namespaced and old-style names), as much as building the message.
SNAPSHOT_TTL = 0.1


#: Seconds of loop turn the callers resumed together may take, about: each one's
#: next step builds and writes its next message on the loop.
TURN_BUDGET = 0.0006


class _Loop:
    """What one event loop keeps: its writer and its settings snapshot."""

    __slots__ = ("snapshot", "snapshot_until", "waker", "writer")

    def __init__(self, writer: LoopWriter, waker: LoopWaker) -> None:
        self.writer = writer
        self.waker = waker
        self.snapshot: Snapshot | None = None
        self.snapshot_until = 0.0


class _Job:
    """One call on the loop path: its attempt, message and the future the engine reads."""

    __slots__ = ("attempt", "future", "item", "path", "prepared", "signal", "waker")

    def __init__(
        self,
        path: LoopPath,
        attempt: Attempt,
        prepared: Prepared,
        path_loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = path
        self.attempt = attempt
        self.prepared = prepared
        self.future: asyncio.Future[WireOutcome] = path_loop.create_future()
        self.signal: asyncio.Future[None] | None = None
        self.waker: LoopWaker | None = None
        self.item: Item | None = None

    def settled(self, item: Item, error: BaseException | None) -> None:
        # Loop thread: the writer knows this message's outcome.
        self.path.job_settled(self, item, error)


class LoopPath:
    """Decides which coroutine calls publish from the loop, and publishes them.

    Args:
        wire: the controller's wire (only a Redis wire with the direct path qualifies).
        pool: the controller's pool (its per-loop wakers resume callers, a few per
            loop turn, and it runs the recovery probe's start off the loop).
        clock: monotonic seconds, the engine's clock.
        listeners: returns the engine's current listeners.
        broker_fault: called (on a pool thread) after a write failed for the
            broker's fault.
        connect_timeout: seconds a connect of a loop writer may take.
    """

    def __init__(
        self,
        wire: Wire,
        pool: PublishPool,
        *,
        clock: Clock,
        listeners: Any,
        broker_fault: Any,
        connect_timeout: float,
    ) -> None:
        self._wire = wire
        self._pool = pool
        self._clock = clock
        self._listeners = listeners
        self._broker_fault = broker_fault
        self._connect_timeout = connect_timeout
        direct = getattr(wire, "direct", None)
        self._direct: DirectPath | None = direct if isinstance(direct, DirectPath) else None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop] = (
            weakref.WeakKeyDictionary()
        )
        self._new_connection: Any = None
        #: The loop served last and its state (most processes have one loop): read
        #: without the weak dictionary's look-up, which makes a weak reference a call.
        self._last: tuple[weakref.ReferenceType[asyncio.AbstractEventLoop], _Loop] | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: Why no call takes this path, or ``""`` while some may.
        self.reason = ""
        if self._direct is None:
            self.reason = "the wire has no direct path (not Redis, or DIRECT_PUBLISH off)"
        elif getattr(wire, "replica_acks", 0):
            self.reason = "REPLICA_ACKS waits on the publishing threads"

    def describe(self) -> dict[str, Any]:
        """What ``health()`` shows: whether the path is on, loops served, the reason
        when no call may take it. JSON types."""
        return {"enabled": not self.reason, "loops": len(self._loops), "reason": self.reason}

    def takes(self, dispatch: Dispatch) -> bool:
        """Whether this coroutine call may publish from the loop. Loop thread; cheap."""
        direct = self._direct
        if self.reason or direct is None or dispatch.trace_context is not None:
            return False
        channel = getattr(self._wire, "envelope_channel", None)
        if channel is None:
            return False  # no direct write has succeeded yet
        if self._new_connection is None and not self._prepare_connections(channel):
            return False
        return (
            direct.takes_dispatch(dispatch)
            and _receivers_loop_safe(signals.before_task_publish)
            and _receivers_loop_safe(signals.after_task_publish)
        )

    def _prepare_connections(self, channel: Any) -> bool:
        factory, why = async_connection_factory(channel_pool(channel))
        if factory is None:
            self.reason = why
            return False
        self._new_connection = factory
        return True

    async def run(
        self, attempt: Attempt, cancelled: Callable[[AnyFuture[WireOutcome]], None]
    ) -> WaitOutcome[WireOutcome] | None:
        """Build and write ``attempt`` from this loop; wait at most until its deadline.

        Returns:
            How the wait ended (what :meth:`PublishPool.wait_async` would return), or
            ``None`` when the call must take the publishing threads after all (its
            route is not cached yet): nothing was built or sent then.

        Raises:
            asyncio.CancelledError: the caller was cancelled; a message not yet
                written never will be (its future is cancelled), one written
                settles on its own. ``cancelled`` gets the future first.
        """
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            state = last[1]
        else:
            state = self._loops.get(loop) or self._new_loop(loop)
            self._last = (weakref.ref(loop), state)
        direct = self._direct
        assert direct is not None
        now = attempt.started_at = self._clock()
        snapshot = state.snapshot
        if snapshot is None or now > state.snapshot_until:
            snapshot = state.snapshot = direct.configured()
            state.snapshot_until = now + SNAPSHOT_TTL
            if snapshot is None:  # the settings rule the direct path out now
                attempt.started_at = 0.0
                return None
        d = attempt.dispatch
        channel = getattr(self._wire, "envelope_channel", None)
        try:  # in the caller's own context: signals see its context variables
            prepared = direct.prepare(
                d.target, d.args, d.kwargs, d.options, channel, snapshot, cached_only=True
            )
        except Exception as exc:
            outcome = classify_failure(exc, PATH, d.queue)
            future: asyncio.Future[WireOutcome] = loop.create_future()
            self._stamp(attempt, outcome)
            future.set_result(outcome)
            return WaitOutcome(future, done=True, never_started=False)
        if prepared is None:
            attempt.started_at = 0.0
            return None
        job = _Job(self, attempt, prepared, loop)
        signal = job.signal = loop.create_future()
        job.waker = state.waker
        # The same timeout value as every other call of its kind: the waker keeps one
        # timer per distinct value (the deadline counts from queued_at, microseconds ago).
        state.waker.expire_after(signal, attempt.dispatch.timeout)
        job.item = state.writer.queue(prepared.key, prepared.payload, job.settled)
        try:
            await signal
        except asyncio.CancelledError:
            if state.writer.abandon(job.item):
                job.future.cancel()
            cancelled(job.future)
            raise
        if job.future.done():
            return WaitOutcome(job.future, done=True, never_started=False)
        never_started = state.writer.abandon(job.item)
        if never_started:
            job.future.cancel()
        return WaitOutcome(job.future, done=False, never_started=never_started)

    def _new_loop(self, loop: asyncio.AbstractEventLoop) -> _Loop:
        writer = LoopWriter(loop, self._new_connection, connect_timeout=self._connect_timeout)
        state = _Loop(writer, self._pool.budgeted_waker(loop, TURN_BUDGET))
        with self._lock:  # loops of other threads may be added at the same time
            state = self._loops.setdefault(loop, state)
        if self._closed:
            state.writer.close()
        return state

    def job_settled(self, job: _Job, item: Item, error: BaseException | None) -> None:
        """Loop thread: the writer settled ``job``'s message; record what that proves
        and resume its caller."""
        prepared = job.prepared
        if error is None:
            if has_receivers(signals.after_task_publish):
                self._announce(job.attempt, prepared)
            key, task_id = prepared.routing_key, prepared.task_id
            outcome = WireOutcome(DispatchOutcome.SENT, None, None, False, key, PATH, task_id)
        else:
            outcome = classify_failure(error, PATH, prepared.routing_key)
            if item.written and outcome.outcome is DispatchOutcome.NOT_SENT:
                unknown = DispatchOutcome.UNKNOWN  # written: some of it may have landed
                fault = outcome.broker_fault
                outcome = WireOutcome(unknown, None, error, fault, outcome.queue, PATH)
            if outcome.broker_fault:
                self._start_recovery()
        self._stamp(job.attempt, outcome)
        if not job.future.cancelled():
            job.future.set_result(outcome)
        signal, waker = job.signal, job.waker
        if signal is not None and waker is not None and not signal.done():
            waker.wake_here(signal)

    def _stamp(self, attempt: Attempt, outcome: WireOutcome) -> None:
        attempt.finished_at = self._clock()
        attempt.path = outcome.path or PATH
        attempt.queue = outcome.queue

    def _announce(self, attempt: Attempt, prepared: Prepared) -> None:
        # after_task_publish, as the publishing threads fire it; a listener that
        # notes every dispatch itself (live events) has its receiver skip this one.
        listeners: Listeners = self._listeners()
        noted = any(getattr(item, "notes_dispatches", False) for item in listeners)
        was = getattr(publishing_noted, "on", False)
        publishing_noted.on = noted
        try:  # Celery's signals log a raising receiver and go on
            attempt.run(DirectPath.announce, (prepared,))
        finally:
            publishing_noted.on = was

    def _start_recovery(self) -> None:
        # Starting the probe's thread blocks briefly: do it on a pool thread.
        with contextlib.suppress(Exception):  # a full or closed pool: the breaker still opens
            self._pool.submit(self._broker_fault)

    def close(self, timeout: float) -> None:
        """Stop taking calls; each loop's writer lets its queued and written messages
        settle for at most ``timeout`` seconds, then closes (any thread; returns at
        once). Past that, queued messages are not sent and written ones are unknown."""
        self._closed = True
        self.reason = "the controller is closed"
        with self._lock:
            states = list(self._loops.values())
        for state in states:
            state.writer.close_threadsafe(timeout)


def _receivers_loop_safe(signal: Any) -> bool:
    return all_receivers(signal, is_loop_safe)
