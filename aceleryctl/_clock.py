"""Monotonic time as an injectable dependency, and a clock that tests move by hand.

The breaker and the publish pool never read the time themselves: they call a
:data:`Clock` they were given, which defaults to :func:`time.monotonic`. Tests pass a
:class:`ManualClock` instead and advance it explicitly, so nothing has to sleep.

Reading the time is not enough for code that *waits* for a deadline (the publish
pool): a real clock moves by itself, so waiting with a real timeout works, but a
manual clock only moves when told to. A :class:`TimerClock` is a clock that also
runs callbacks when its reading reaches a given time; :class:`ManualClock` is one,
and runs them from :meth:`ManualClock.advance`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["Clock", "ClockTimer", "ManualClock", "TimerClock"]

Clock: TypeAlias = Callable[[], float]
"""A zero-argument callable returning monotonic time in seconds (``float``).

Only differences between two readings are meaningful; the origin is arbitrary.
:func:`time.monotonic` is the production implementation.
"""


class ClockTimer(Protocol):
    """A callback scheduled with :meth:`TimerClock.call_at`."""

    def cancel(self) -> None:
        """Keep the callback from running, unless it already has or is starting now.

        Any thread; idempotent. A callback that races its own cancellation may
        still run once, so callbacks must be harmless when late.
        """


@runtime_checkable
class TimerClock(Protocol):
    """A :data:`Clock` that also runs callbacks at given readings of itself.

    Code that waits for a deadline uses it for clocks that do not move with real
    time, where waiting with a real timeout would be wrong. :func:`time.monotonic`
    is not one (it needs none: it moves by itself); :class:`ManualClock` is.
    """

    def __call__(self) -> float:
        """Return the current reading, in seconds."""

    def call_at(self, when: float, callback: Callable[[], object]) -> ClockTimer:
        """Run ``callback`` once the reading is at least ``when`` (seconds).

        Which thread runs it is the clock's to say; ``callback`` must hand work
        over to the thread or event loop it belongs to.
        """


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True  # one attribute store: atomic; advance() skips it

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<ManualClock timer at {self.when:g}{state}>"


class ManualClock:
    """A monotonic clock that only moves when a test calls :meth:`advance`.

    Pass an instance wherever aceleryctl accepts a ``clock`` (for example
    ``CircuitBreaker(clock=clock)``), then move time forward explicitly instead of
    sleeping::

        clock = ManualClock()
        breaker = CircuitBreaker(reset_timeout=5.0, clock=clock)
        ...                      # open the breaker
        clock.advance(5.0)       # the reset timeout has now elapsed
        breaker.acquire()        # the half-open probe is let through

    Reading the clock (calling the instance) and advancing it are both safe from
    any thread, and neither ever blocks for longer than a lock acquisition (plus,
    for :meth:`advance`, the timer callbacks it runs). The clock cannot go
    backwards.

    It is a :class:`TimerClock`: :meth:`call_at` schedules a callback for a given
    reading, and :meth:`advance` runs the callbacks that have come due, so code
    that waits for deadlines (``PublishPool(clock=clock)``) does so without real
    timeouts.

    Args:
        start: the initial reading, in seconds. Defaults to ``0.0``.

    Raises:
        ValueError: ``start`` is not a finite number.
    """

    __slots__ = ("_lock", "_now", "_order", "_timers")

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"ManualClock start must be a finite number, got {start!r}")
        self._lock = threading.Lock()
        self._now = float(start)
        self._timers: list[tuple[float, int, _ManualTimer]] = []  # a heap
        self._order = itertools.count()  # ties run in the order they were scheduled

    def __call__(self) -> float:
        """Return the current reading, in seconds."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (a ``float``, may be ``0.0``).

        Raises:
            ValueError: ``seconds`` is negative or not finite; a monotonic clock never
                goes backwards.
        """
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError(
                f"ManualClock.advance() needs a finite, non-negative number of seconds, "
                f"got {seconds!r}"
            )
        with self._lock:
            self._now += seconds
        self._run_due()

    def call_at(self, when: float, callback: Callable[[], object]) -> ClockTimer:
        """Run ``callback()`` once the clock reads ``when`` (seconds) or later.

        A timer already due runs at once, on the calling thread, before this
        returns; any other runs on the thread whose :meth:`advance` reaches its
        time, after the clock has moved. Timers due together run in order of
        ``when``, then in the order they were scheduled. An exception from a
        callback propagates out of that call; timers not yet run stay scheduled.

        Returns:
            A handle whose ``cancel()`` keeps the callback from running.

        Raises:
            ValueError: ``when`` is NaN.
        """
        if math.isnan(when):
            raise ValueError("ManualClock.call_at() needs a time, got nan")
        timer = _ManualTimer(when, callback)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._order), timer))
            if when > self._now:
                self._compact_locked()
                return timer
        self._run_due()
        return timer

    def _run_due(self) -> None:
        # One timer at a time, the lock released while it runs: a callback may
        # read the clock, schedule or cancel timers, or wake another thread.
        while True:
            with self._lock:
                timers = self._timers
                if not timers or timers[0][0] > self._now:
                    return
                timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                timer.cancelled = True  # has run: cancel() is now a no-op
                timer.callback()

    def _compact_locked(self) -> None:
        # Waits that end before their deadline cancel their timers; drop them
        # once they are most of the heap, so it does not grow without bound.
        timers = self._timers
        if len(timers) > 64 and len(timers) & 63 == 0:
            live = [entry for entry in timers if not entry[2].cancelled]
            if 2 * len(live) < len(timers):
                heapq.heapify(live)
                self._timers = live

    def __repr__(self) -> str:
        return f"ManualClock({self():g})"
