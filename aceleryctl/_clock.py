"""Monotonic time as an injectable dependency, and a clock that tests move by hand.

The breaker and the publish pool never read the time themselves: they call a
:data:`Clock` they were given, which defaults to :func:`time.monotonic`. Tests pass a
:class:`ManualClock` instead and advance it explicitly, so nothing has to sleep.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Clock", "ManualClock"]

Clock: TypeAlias = Callable[[], float]
"""A zero-argument callable returning monotonic time in seconds (``float``).

Only differences between two readings are meaningful; the origin is arbitrary.
:func:`time.monotonic` is the production implementation.
"""


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
    any thread, and neither ever blocks for longer than a lock acquisition. The
    clock cannot go backwards.

    Args:
        start: the initial reading, in seconds. Defaults to ``0.0``.

    Raises:
        ValueError: ``start`` is not a finite number.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"ManualClock start must be a finite number, got {start!r}")
        self._lock = threading.Lock()
        self._now = float(start)

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

    def __repr__(self) -> str:
        return f"ManualClock({self():g})"
