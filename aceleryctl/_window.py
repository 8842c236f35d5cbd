"""The circuit breaker's time-based sliding window of call outcomes (standard library only)."""

from __future__ import annotations

from typing import Final

__all__ = ["WINDOW_BUCKETS", "SlidingWindow"]

WINDOW_BUCKETS: Final = 30
"""How many buckets the sliding window is cut into, whatever its duration."""


class SlidingWindow:
    """Calls, failures and slow calls recorded over roughly the last ``duration`` seconds.

    Time is cut into ``WINDOW_BUCKETS`` buckets of ``duration / WINDOW_BUCKETS``
    seconds, kept in fixed-size ring arrays; the window is the current bucket and the
    ones before it, so a call ages out between ``(1 - 1/WINDOW_BUCKETS) * duration``
    and ``duration`` seconds after it was recorded. Memory is the same for ten calls or
    ten million; recording costs O(1) amortised. Not thread-safe: the breaker's lock
    guards it.
    """

    __slots__ = ("_calls", "_failures", "_head", "_slow", "_width", "calls", "failures", "slow")

    def __init__(self, duration: float, now: float) -> None:
        self._width = duration / WINDOW_BUCKETS
        self._head = int(now // self._width)
        self._calls = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS
        self._slow = [0] * WINDOW_BUCKETS
        self.calls = self.failures = self.slow = 0

    def advance(self, now: float) -> None:
        """Forget the buckets that have left the window by ``now``."""
        epoch = int(now // self._width)
        if epoch <= self._head:
            return  # same bucket, or a clock that went backwards: keep the current one
        if epoch - self._head >= WINDOW_BUCKETS:
            self.clear()
        else:
            for bucket in range(self._head + 1, epoch + 1):
                i = bucket % WINDOW_BUCKETS
                self.calls -= self._calls[i]
                self.failures -= self._failures[i]
                self.slow -= self._slow[i]
                self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._head = epoch

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Count one call at ``now`` (seconds on the breaker's clock)."""
        self.advance(now)
        i = self._head % WINDOW_BUCKETS
        self._calls[i] += 1
        self.calls += 1
        if failed:
            self._failures[i] += 1
            self.failures += 1
        if slow:
            self._slow[i] += 1
            self.slow += 1

    def clear(self) -> None:
        """Forget every call."""
        for counts in (self._calls, self._failures, self._slow):
            counts[:] = [0] * WINDOW_BUCKETS
        self.calls = self.failures = self.slow = 0
