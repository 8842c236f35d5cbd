"""Bounded polling: wait for a condition, never for a fixed time.

The only sleeps in the test suite live here, between two checks of a condition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until", "wait_until_async"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the timeout (an assertion failure)."""


def _describe(message: str | Callable[[], str]) -> str:
    return message() if callable(message) else message


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    ``predicate`` returns a falsy value (``None``, ``False``, empty) while the
    condition does not hold.

    Runs on the calling thread and blocks it. ``timeout`` and ``interval`` are
    seconds. The predicate is always called at least once, and once more after the
    deadline has passed, so a condition that became true at the last moment is seen.

    Raises:
        WaitTimeout: the predicate stayed falsy for ``timeout`` seconds; the message
            (a string, or a callable evaluated only on failure) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            value = predicate()
            if value:
                return value
            raise WaitTimeout(f"after {timeout:.1f} s: {_describe(message)}")
        time.sleep(min(interval, remaining))


async def wait_until_async(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """:func:`wait_until` for coroutines: the event loop keeps running between checks.

    The predicate runs on the event loop's thread, so it must be quick (a Redis
    round trip on loopback is fine).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - loop.time()
        if remaining <= 0:
            value = predicate()
            if value:
                return value
            raise WaitTimeout(f"after {timeout:.1f} s: {_describe(message)}")
        await asyncio.sleep(min(interval, remaining))
