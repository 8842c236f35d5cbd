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

This module imports only the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

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


class PoolSaturated(Exception):
    """The wait queue already holds ``max_pending`` jobs; the job was not queued."""


class PoolClosed(Exception):
    """The pool is shut down and accepts no jobs."""


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`PublishPool`, taken under its lock.

    Attributes:
        max_workers: the thread limit.
        max_pending: the wait-queue limit.
        threads: threads started so far (at most ``max_workers``).
        running: jobs executing now.
        waiting: jobs queued and not abandoned.
        submitted: jobs accepted since creation.
        completed: jobs that ran to completion, successfully or by raising.
        abandoned: jobs dropped from the queue before they started.
        saturated: submissions refused because the queue was full.
        closed: whether :meth:`PublishPool.shutdown` has been called.
    """

    max_workers: int
    max_pending: int
    threads: int
    running: int
    waiting: int
    submitted: int
    completed: int
    abandoned: int
    saturated: int
    closed: bool


@dataclass(frozen=True, slots=True)
class WaitOutcome(Generic[T]):
    """What a bounded wait on a job found.

    Exactly one of the three is true: ``done`` (``future`` holds the result or the
    exception), ``never_started`` (the job was abandoned before it ran; it never
    will), or neither, meaning it was still running when the deadline passed.
    """

    future: Future[T]
    done: bool
    never_started: bool


def settle(future: asyncio.Future[T], value: T) -> None:
    """Set ``future``'s result unless it is already done (cancelled). Loop thread only."""
    if not future.done():
        future.set_result(value)


class _LoopWaker:
    """Wakes awaiting coroutines of one event loop: on completion, many per loop
    turn, and at their deadlines.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call; a batch
    of jobs completing together needs only one write. Signals carry no result
    (the caller reads the concurrent future), so nothing can go unretrieved.

    Deadlines: calls with the same timeout expire in the order they started, so
    each distinct timeout keeps a FIFO of ``(deadline, signal)`` and one loop timer
    for its oldest entry, instead of a timer per call (``asyncio.timeout`` costs a
    timer-heap insertion and removal, plus its context manager, per call).
    """

    __slots__ = ("_deadlines", "_lock", "_loop", "_pending", "_scheduled", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._deadlines: dict[float, collections.deque[tuple[float, asyncio.Future[None]]]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def expire_after(self, signal: asyncio.Future[None], timeout: float) -> None:
        """Loop thread: set ``signal`` (if still pending) ``timeout`` seconds from now."""
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = collections.deque()
        while queue and queue[0][1].done():  # settled calls, oldest first
            queue.popleft()
        deadline = self._loop.time() + timeout
        queue.append((deadline, signal))
        if timeout not in self._timers:
            self._timers[timeout] = self._loop.call_at(deadline, self._expire, timeout)

    def _expire(self, timeout: float) -> None:
        # Loop thread: settle every entry past its deadline, then wait for the next.
        del self._timers[timeout]
        queue = self._deadlines[timeout]
        now = self._loop.time()
        while queue:
            deadline, signal = queue[0]
            if not signal.done():
                if deadline > now:
                    self._timers[timeout] = self._loop.call_at(deadline, self._expire, timeout)
                    return
                signal.set_result(None)
            queue.popleft()
        del self._deadlines[timeout]

    def wake(self, signal: asyncio.Future[None]) -> None:
        """Any thread: have ``signal`` set on the loop thread, soon.

        Inside :func:`_deferred_wakes` (a pool thread settling a batch) the loop
        is only told once the whole batch is settled.
        """
        with self._lock:
            self._pending.append(signal)
            if self._scheduled:
                return
            self._scheduled = True
        deferred: list[_LoopWaker] | None = getattr(_deferring, "wakers", None)
        if deferred is not None:
            deferred.append(self)
        else:
            self._schedule()

    def _schedule(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the publish ran
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        # Loop thread. At most _WAKE_CHUNK waiters resume per loop turn: each runs
        # its coroutine's next step in the following turn, and a whole batch of
        # them at once would hold up timers and I/O for all of that time.
        with self._lock:
            pending = self._pending
            if len(pending) > _WAKE_CHUNK:
                pending, self._pending = pending[:_WAKE_CHUNK], pending[_WAKE_CHUNK:]
                self._loop.call_soon(self._run)  # still scheduled: no new wake-up needed
            else:
                self._pending, self._scheduled = [], False
        for signal in pending:
            settle(signal, None)


#: Waiters resumed per event-loop turn, at most (see ``_LoopWaker._run``).
_WAKE_CHUNK = 8

_deferring = threading.local()


@contextlib.contextmanager
def _deferred_wakes() -> Iterator[None]:
    """On a pool thread: hold back loop wake-ups until the block ends, then send
    one per loop. Each wake-up is a write to the loop's self-pipe, and each such
    system call lets the event loop thread take the GIL mid-batch."""
    wakers: list[_LoopWaker] = []
    _deferring.wakers = wakers
    try:
        yield
    finally:
        _deferring.wakers = None
        for waker in wakers:
            waker._schedule()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)
_wakers_lock = threading.Lock()


def _waker_for(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    waker = _wakers.get(loop)
    if waker is None:
        with _wakers_lock:
            waker = _wakers.setdefault(loop, _LoopWaker(loop))
    return waker


class BatchJob(Protocol):
    """What a batch runner sees of one job: run ``fn`` in ``context``, settle ``future``."""

    @property
    def fn(self) -> Callable[[], Any]: ...
    @property
    def context(self) -> contextvars.Context: ...
    @property
    def future(self) -> Future[Any]: ...


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
    ) -> None:
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

        On timeout the job is abandoned if it has not started. Never raises the
        job's exception; read it from ``outcome.future``.
        """
        try:
            future.exception(timeout=max(timeout, 0.0))
        except TimeoutError:
            pass
        except BaseException:  # cancelled (by shutdown); fall through to the check below
            pass
        return self._outcome(future)

    async def wait_async(self, future: Future[T], timeout: float) -> WaitOutcome[T]:
        """Await ``future`` without blocking the event loop, for at most ``timeout`` seconds.

        Runs on the event loop thread; completion is handed over with
        ``call_soon_threadsafe``. On timeout the job is abandoned if it has not
        started. If the awaiting task is cancelled, the job is abandoned if it has
        not started (a running publish cannot be interrupted and finishes on its
        own) and ``CancelledError`` propagates.
        """
        if not future.done():
            loop = asyncio.get_running_loop()
            signal: asyncio.Future[None] = loop.create_future()
            waker = _waker_for(loop)
            waker.expire_after(signal, max(timeout, 0.0))
            future.add_done_callback(lambda _f: waker.wake(signal))
            try:
                await signal
            except asyncio.CancelledError:
                self.abandon(future)
                raise
        return self._outcome(future)

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

        Blocks the calling thread. Jobs still queued when the time is up are
        cancelled (they never run); jobs still running are left to their daemon
        threads, which exit when they finish.

        Returns:
            ``True`` if every job finished in time.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            drained = self._cond.wait_for(
                lambda: self._running == 0 and self._waiting == 0, timeout=max(timeout, 0.0)
            )
            for job in self._queue:
                self._abandon_locked(job.future)
            self._queue.clear()
            self._cond.notify_all()
        return drained

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
                with _deferred_wakes():
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


def run_each(jobs: Sequence[BatchJob]) -> None:
    """The default batch runner: run each job in its own context, settle its future."""
    for job in jobs:
        try:
            result = job.context.run(job.fn)
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
