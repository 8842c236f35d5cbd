"""A small, bounded thread pool for broker publishes, with per-call deadlines.

Why not ``concurrent.futures.ThreadPoolExecutor``, the loop's default executor, or
asgiref's thread-sensitive thread: the executor's queue is unbounded and its
threads are non-daemon, so a publish hung on a silent broker would both pile up
work without limit and hang interpreter exit; the default executor and the
thread-sensitive thread are shared with unrelated work (``to_thread``, every ORM
call of a request), which a slow broker would then stall.

Here the queue holds at most ``max_pending`` jobs, threads are daemon threads
started on first use, and a caller that gives up on a job learns exactly which
of two things happened:

* the job never started (it was still queued): :meth:`PublishPool.abandon`
  returns ``True`` and the job will never run, so nothing was sent;
* the job is running or finished: ``False``; the outcome is what the future
  says, or unknown while it is still running.

The pool reads time only through the :data:`~aceleryctl._clock.Clock` it was
given (:func:`time.monotonic` by default): real timeouts with a real clock; with a
:class:`~aceleryctl._clock.TimerClock` (:class:`~aceleryctl._clock.ManualClock`),
the clock's own timers, so tests move time by hand and never sleep.

This module imports only the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from aceleryctl._clock import Clock, ClockTimer, TimerClock
from aceleryctl.dispatch.jobs import (
    BatchJob,
    PoolClosed,
    PoolSaturated,
    PoolStatistics,
    WaitOutcome,
    run_each,
)
from aceleryctl.dispatch.waker import LoopWaker, deferred_wakes, settle

__all__ = [
    "BatchJob",
    "PoolClosed",
    "PoolSaturated",
    "PoolStatistics",
    "PublishPool",
    "WaitOutcome",
    "run_each",
    "settle",
]

T = TypeVar("T")


_wakers_lock = threading.Lock()


class _Job(Generic[T]):
    __slots__ = ("context", "fn", "future")

    def __init__(self, fn: Callable[[], T], context: contextvars.Context) -> None:
        self.fn = fn
        self.context = context
        self.future: Future[T] = Future()


class PublishPool:
    """A bounded pool of daemon threads that run short blocking jobs.

    Thread-safety: every method may be called from any thread. The pool's lock
    is never held while a job runs or while a future's callbacks run.

    Args:
        max_workers: threads at most (>= 1). Started lazily, one per submission
            while fewer than ``max_workers`` exist and none is idle.
        max_pending: jobs that may wait for a thread at once (>= 1); beyond that
            :meth:`submit` raises :class:`PoolSaturated` without queueing.
        name: prefix for thread names, shown in thread dumps and log records.
        initializer: called once on each new thread before its first job (the
            controller makes its Celery app current there). If it raises, the
            error is logged and the thread goes on.
        finalizer: called on each thread as it exits after :meth:`shutdown` (the
            controller releases the thread's own broker and backend connections).
            If it raises, the error is logged.
        max_batch: jobs a thread takes from the queue at once (>= 1) and hands to
            ``batch_runner`` together: the controller publishes them in one
            pipelined round trip. Each batch holds the GIL for its CPU time, which
            the event loop feels as lag: keep it small.
        batch_runner: runs a batch on the pool thread and must settle every job's
            future (default: :func:`run_each`, one job after the other).
        batch_ready: asked on the pool thread before taking more than one job;
            while it says no, the thread takes one job at a time. The controller
            says yes only once the thread holds a live broker connection, so that
            jobs queued behind a thread stuck connecting stay abandonable ("never
            started") instead of becoming outcome-unknown.
        clock: monotonic time in seconds (``float``), the pool's only source of
            time; default :func:`time.monotonic`. A
            :class:`~aceleryctl._clock.TimerClock`
            (:class:`~aceleryctl._clock.ManualClock` in tests) is waited for with
            its own timers: the deadlines of :meth:`wait`, :meth:`wait_async` and
            :meth:`shutdown` are its readings plus the timeout, and pass when it
            reaches them and not before, however long that takes in real time. Any
            other clock must move with real time, as :func:`time.monotonic` does:
            :meth:`wait` and :meth:`shutdown` then wait with ``threading`` timeouts
            (which the OS measures on its monotonic clock), and :meth:`wait_async`
            reads its deadlines from the clock and sets event-loop timers
            (``call_later``) by their distance from its latest reading.

    Raises:
        ValueError: a limit is below 1, or ``clock`` is not callable.
    """

    def __init__(
        self,
        *,
        max_workers: int,
        max_pending: int,
        name: str = "aceleryctl",
        initializer: Callable[[], object] | None = None,
        finalizer: Callable[[], object] | None = None,
        max_batch: int = 1,
        batch_runner: Callable[[Sequence[BatchJob]], None] | None = None,
        batch_ready: Callable[[], bool] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self._max_workers = max_workers
        self._max_pending = max_pending
        self._name = name
        self._initializer = initializer
        self._finalizer = finalizer
        self._max_batch = max_batch
        self._batch_runner = batch_runner
        self._batch_ready = batch_ready
        self._clock = clock
        # None: a real clock, waited for with real timeouts (see the class docstring).
        self._call_at = clock.call_at if isinstance(clock, TimerClock) else None
        self._wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker] = (
            weakref.WeakKeyDictionary()
        )
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Job[object]] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._running = 0
        self._waiting = 0
        self._submitted = 0
        self._completed = 0
        self._abandoned = 0
        self._saturated = 0
        self._closed = False

    @property
    def max_workers(self) -> int:
        """The thread limit."""
        return self._max_workers

    @property
    def clock(self) -> Clock:
        """The clock every deadline of this pool is read from (seconds, ``float``)."""
        return self._clock

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` to run on a pool thread inside a copy of the caller's context.

        ``contextvars`` set by the caller (correlation ids, logging context) are
        visible to ``fn``. Never blocks.

        Returns:
            A future completed by the pool thread with ``fn``'s result or exception.

        Raises:
            PoolSaturated: ``max_pending`` jobs are already waiting.
            PoolClosed: :meth:`shutdown` was called.
        """
        job: _Job[T] = _Job(fn, contextvars.copy_context())
        with self._cond:
            if self._closed:
                raise PoolClosed("the publish pool is shut down")
            if self._waiting >= self._max_pending:
                self._saturated += 1
                raise PoolSaturated(
                    f"{self._waiting} publishes are already waiting for a thread "
                    f"(max_pending={self._max_pending})"
                )
            self._queue.append(job)  # type: ignore[arg-type]
            self._waiting += 1
            self._submitted += 1
            if self._idle == 0 and len(self._threads) < self._max_workers:
                self._start_thread()
            else:
                self._cond.notify()
        return job.future

    def abandon(self, future: Future[T]) -> bool:
        """Give up on a job; return ``True`` if it had not started and never will.

        Returns ``False`` when the job is running or already finished: then the
        future decides (it may still complete later). Safe to call more than once.
        """
        with self._cond:
            return self._abandon_locked(future)

    def _abandon_locked(self, future: Future[T]) -> bool:
        # Cancel and account in one step under the pool lock, so that a job is
        # discounted exactly once however many threads give up on it. The deque
        # keeps the cancelled job until a thread pops and skips it.
        if future.cancelled():
            return True
        if not future.cancel():
            return False
        self._waiting -= 1
        self._abandoned += 1
        if len(self._queue) > 2 * self._waiting + 32:
            # Threads may be stuck on a silent broker while callers keep giving up:
            # drop the dead entries so the deque stays bounded by max_pending.
            self._queue = collections.deque(j for j in self._queue if not j.future.cancelled())
        return True

    def wait(self, future: Future[T], timeout: float) -> WaitOutcome[T]:
        """Block the calling thread until ``future`` is done or ``timeout`` seconds pass.

        ``timeout`` is in seconds (``float``; zero or less: do not block) on the
        pool's clock. On timeout the job is abandoned if it has not started. Never
        raises the job's exception; read it from ``outcome.future``.
        """
        call_at = self._call_at
        if call_at is None:
            try:
                future.exception(timeout=max(timeout, 0.0))
            except TimeoutError:
                pass
            except BaseException:  # cancelled (by shutdown); fall through to the check below
                pass
        elif not future.done():
            # A TimerClock: sleep until the future is done or the clock's timer for
            # the deadline has run (on whichever thread moved the clock).
            woken = threading.Event()
            timer = call_at(self._clock() + max(timeout, 0.0), woken.set)
            future.add_done_callback(lambda _f: woken.set())
            woken.wait()
            timer.cancel()
        return self._outcome(future)

    async def wait_async(self, future: Future[T], timeout: float) -> WaitOutcome[T]:
        """Await ``future`` without blocking the event loop, for at most ``timeout`` seconds.

        Runs on the event loop thread; completion is handed over with
        ``call_soon_threadsafe``. ``timeout`` is in seconds (``float``; zero or
        less: expire on the next loop turn) on the pool's clock. On timeout the job
        is abandoned if it has not started. If the awaiting task is cancelled, the
        job is abandoned if it has not started (a running publish cannot be
        interrupted and finishes on its own) and ``CancelledError`` propagates.
        """
        if not future.done():
            loop = asyncio.get_running_loop()
            signal: asyncio.Future[None] = loop.create_future()
            (waker := self.waker_for(loop)).expire_after(signal, max(timeout, 0.0))
            future.add_done_callback(lambda _f: waker.wake(signal))
            try:
                await signal
            except asyncio.CancelledError:
                self.abandon(future)
                raise
        return self._outcome(future)

    def waker_for(self, loop: asyncio.AbstractEventLoop) -> LoopWaker:
        """The pool's waker of ``loop`` (made on first use). Loop thread."""
        return self._wakers.get(loop) or self._new_waker(loop)

    def budgeted_waker(self, loop: asyncio.AbstractEventLoop, turn_budget: float) -> LoopWaker:
        """A new waker of ``loop`` on the pool's clock, with a turn budget (seconds)."""
        return LoopWaker(loop, self._clock, self._call_at, turn_budget=turn_budget)

    def _new_waker(self, loop: asyncio.AbstractEventLoop) -> LoopWaker:
        # Loop thread, the pool's first wait on this loop.
        with _wakers_lock:
            return self._wakers.setdefault(loop, LoopWaker(loop, self._clock, self._call_at))

    def _outcome(self, future: Future[T]) -> WaitOutcome[T]:
        if future.done() and not future.cancelled():
            return WaitOutcome(future, done=True, never_started=False)
        never_started = self.abandon(future)
        if not never_started and future.done() and not future.cancelled():
            # It completed between the deadline and the abandon attempt.
            return WaitOutcome(future, done=True, never_started=False)
        return WaitOutcome(future, done=False, never_started=never_started)

    def statistics(self) -> PoolStatistics:
        """Return a consistent snapshot of the counters."""
        with self._cond:
            return PoolStatistics(
                max_workers=self._max_workers,
                max_pending=self._max_pending,
                threads=len(self._threads),
                running=self._running,
                waiting=self._waiting,
                submitted=self._submitted,
                completed=self._completed,
                abandoned=self._abandoned,
                saturated=self._saturated,
                closed=self._closed,
            )

    def shutdown(self, timeout: float) -> bool:
        """Stop accepting jobs, let queued and running jobs finish for up to ``timeout`` s.

        Blocks the calling thread. ``timeout`` is in seconds (``float``; zero or
        less: do not wait) on the pool's clock. Jobs still queued when the time is
        up are cancelled (they never run); jobs still running are left to their
        daemon threads, which exit when they finish.

        Returns:
            ``True`` if every job finished in time.
        """
        timeout = max(timeout, 0.0)
        timer: ClockTimer | None = None
        if self._call_at is not None:  # scheduled before taking the lock: it may run at once
            deadline = self._clock() + timeout
            timer = self._call_at(deadline, self._notify_all)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if timer is None:
                drained = self._cond.wait_for(self._drained, timeout=timeout)
            else:
                while not (drained := self._drained()) and self._clock() < deadline:
                    self._cond.wait()  # woken by a finishing job or the clock's timer
            for job in self._queue:
                self._abandon_locked(job.future)
            self._queue.clear()
            self._cond.notify_all()
        if timer is not None:
            timer.cancel()
        return drained

    def _drained(self) -> bool:
        # With the pool lock held.
        return self._running == 0 and self._waiting == 0

    def _notify_all(self) -> None:
        # Any thread: wake every thread waiting on the pool's condition.
        with self._cond:
            self._cond.notify_all()

    # -- worker side -------------------------------------------------------

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work,
            name=f"{self._name}-publish-{len(self._threads) + 1}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _next_jobs(self) -> list[_Job[object]]:
        """Block until jobs are queued; take up to ``max_batch`` of them (empty: exit)."""
        limit = self._max_batch
        if limit > 1 and self._batch_ready is not None and not self._batch_ready():
            limit = 1
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return []
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                jobs: list[_Job[object]] = []
                while self._queue and len(jobs) < limit:
                    job = self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():
                        jobs.append(job)
                    # else: abandoned while queued, already discounted by abandon()
                if jobs:
                    self._waiting -= len(jobs)
                    self._running += len(jobs)
                    return jobs

    def _work(self) -> None:
        self._call_hook(self._initializer, "initializer")
        try:
            self._serve()
        finally:
            self._call_hook(self._finalizer, "finalizer")

    @staticmethod
    def _call_hook(hook: Callable[[], object] | None, name: str) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:
            logging.getLogger("aceleryctl.pool").exception("pool thread %s failed", name)

    def _serve(self) -> None:
        runner = self._batch_runner or run_each
        while jobs := self._next_jobs():
            try:
                with deferred_wakes():
                    runner(jobs)
            except BaseException as exc:  # a runner must settle every job; make sure
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                count = len(jobs)
                del jobs
                with self._cond:
                    self._running -= count
                    self._completed += count
                    self._cond.notify_all()
