"""Waking coroutines that await publishes: batched per loop turn, and at their deadlines.

A :class:`LoopWaker` serves one event loop for one pool. Publishing threads tell it
which awaiting coroutines may resume; it hands them to the loop in one
``call_soon_threadsafe`` per batch and resumes at most a few per loop turn, and it
expires waits at their deadlines with one timer per distinct timeout value. This
module imports only the standard library and :mod:`aceleryctl._clock`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from aceleryctl._clock import Clock, ClockTimer

__all__ = ["LoopWaker", "deferred_wakes", "settle"]

T = TypeVar("T")


def settle(future: asyncio.Future[T], value: T) -> None:
    """Set ``future``'s result unless it is already done (cancelled). Loop thread only."""
    if not future.done():
        future.set_result(value)


class LoopWaker:
    """Wakes awaiting coroutines of one event loop for one pool: on completion,
    many per loop turn, and at their deadlines.

    ``call_soon_threadsafe`` writes to the loop's self-pipe on every call; a batch
    of jobs completing together needs only one write. Signals carry no result
    (the caller reads the concurrent future), so nothing can go unretrieved.

    Deadlines: calls with the same timeout expire in the order they started, so
    each distinct timeout keeps a FIFO of ``(deadline, signal)`` and one timer
    for its oldest entry, instead of a timer per call (``asyncio.timeout`` costs a
    timer-heap insertion and removal, plus its context manager, per call).
    Deadlines are readings of the pool's ``clock`` (seconds). The timer is the
    loop's own (``call_later`` by the clock's difference) unless ``call_at`` is
    given: then it is that clock's timer (a :class:`~aceleryctl._clock.TimerClock`,
    such as a manual clock), which hands the expiry to the loop thread with
    ``call_soon_threadsafe``.
    """

    __slots__ = (
        "_budget",
        "_call_at",
        "_chunk",
        "_clock",
        "_continued_at",
        "_deadlines",
        "_lock",
        "_loop",
        "_pending",
        "_scheduled",
        "_timers",
        "_turn_clock",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Clock = time.monotonic,
        call_at: Callable[[float, Callable[[], object]], ClockTimer] | None = None,
        turn_budget: float = 0.0,
        turn_clock: Clock = time.perf_counter,
    ) -> None:
        # turn_budget (seconds, 0: off): while waiters queue up, resume fewer of
        # them per turn when a loop turn took longer than this, more when it took
        # under half of it (between _MIN_CHUNK and _MAX_CHUNK): callers whose next
        # step does more work (build and write a message on the loop) get fewer
        # turns' worth of the loop, and the loop's lag stays near the budget.
        self._budget = turn_budget
        self._turn_clock = turn_clock  # real seconds: a turn's length is CPU, not the pool's clock
        self._chunk = _WAKE_CHUNK
        self._continued_at = 0.0
        self._loop = loop
        self._clock = clock
        self._call_at = call_at
        self._lock = threading.Lock()
        self._pending: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._deadlines: dict[float, collections.deque[tuple[float, asyncio.Future[None]]]] = {}
        self._timers: dict[float, asyncio.TimerHandle | ClockTimer] = {}

    def expire_after(self, signal: asyncio.Future[None], timeout: float) -> None:
        """Loop thread: set ``signal`` (if still pending) once ``timeout`` seconds
        (a ``float`` >= 0) have passed on the clock."""
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = collections.deque()
        while queue and queue[0][1].done():  # settled calls, oldest first
            queue.popleft()
        deadline = self._clock() + timeout
        queue.append((deadline, signal))
        if timeout not in self._timers:
            self._arm(timeout, deadline, timeout)

    def _arm(self, timeout: float, deadline: float, delay: float) -> None:
        # Loop thread: have _expire(timeout) run on the loop at ``deadline``, which
        # is ``delay`` seconds after the clock's latest reading.
        if self._call_at is None:
            self._timers[timeout] = self._loop.call_later(delay, self._expire, timeout)
        else:
            # A timer already due calls back at once, but _expire itself only runs
            # in a later loop turn, after this entry is in place.
            expire = functools.partial(self._expire_soon, timeout)
            self._timers[timeout] = self._call_at(deadline, expire)

    def _expire_soon(self, timeout: float) -> None:
        # The clock's thread (a manual clock's advance()): hand over to the loop.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._expire, timeout)

    def _expire(self, timeout: float) -> None:
        # Loop thread: settle every entry past its deadline, then wait for the next.
        del self._timers[timeout]
        queue = self._deadlines[timeout]
        now = self._clock()
        while queue:
            deadline, signal = queue[0]
            if not signal.done():
                if deadline > now:
                    self._arm(timeout, deadline, deadline - now)
                    return
                signal.set_result(None)
            queue.popleft()
        del self._deadlines[timeout]

    def wake(self, signal: asyncio.Future[None]) -> None:
        """Any thread: have ``signal`` set on the loop thread, soon.

        Inside :func:`deferred_wakes` (a pool thread settling a batch) the loop
        is only told once the whole batch is settled.
        """
        if not self._queue(signal):
            return
        deferred: list[LoopWaker] | None = getattr(_deferring, "wakers", None)
        if deferred is not None:
            deferred.append(self)
        else:
            self._schedule()

    def wake_here(self, signal: asyncio.Future[None]) -> None:
        """:meth:`wake`, called on the loop's own thread: the same few resumed per
        loop turn, scheduled without writing to the loop's self-pipe."""
        if self._queue(signal):
            self._loop.call_soon(self._run)

    def _queue(self, signal: asyncio.Future[None]) -> bool:
        # Any thread: add ``signal``; True when no _run is scheduled yet (the caller
        # schedules one).
        with self._lock:
            self._pending.append(signal)
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def _schedule(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the publish ran
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        # Loop thread. At most _WAKE_CHUNK waiters resume per loop turn: each runs
        # its coroutine's next step in the following turn, and a whole batch of
        # them at once would hold up timers and I/O for all of that time.
        chunk = self._adapt() if self._budget else _WAKE_CHUNK
        with self._lock:
            pending = self._pending
            if len(pending) > chunk:
                pending, self._pending = pending[:chunk], pending[chunk:]
                self._loop.call_soon(self._run)  # still scheduled: no new wake-up needed
                continued = True
            else:
                self._pending, self._scheduled = [], False
                continued = False
        if self._budget:
            self._continued_at = self._turn_clock() if continued else 0.0
        for signal in pending:
            settle(signal, None)

    def _adapt(self) -> int:
        # Loop thread: the time since the previous _run rescheduled itself is one
        # whole loop turn (the waiters it resumed ran in it).
        since = self._continued_at
        if since:
            turn = self._turn_clock() - since
            if turn > self._budget:
                self._chunk = max(_MIN_CHUNK, self._chunk - 1)
            elif turn < self._budget / 2:
                self._chunk = min(_MAX_CHUNK, self._chunk + 1)
        return self._chunk


#: Waiters resumed per event-loop turn, at most (see ``LoopWaker._run``); with a
#: turn budget, where the adaptive count starts and its bounds.
_WAKE_CHUNK = 8
_MIN_CHUNK = 2
_MAX_CHUNK = 16

_deferring = threading.local()


@contextlib.contextmanager
def deferred_wakes() -> Iterator[None]:
    """On a pool thread: hold back loop wake-ups until the block ends, then send
    one per loop. Each wake-up is a write to the loop's self-pipe, and each such
    system call lets the event loop thread take the GIL mid-batch."""
    wakers: list[LoopWaker] = []
    _deferring.wakers = wakers
    try:
        yield
    finally:
        _deferring.wakers = None
        for waker in wakers:
            waker._schedule()
