"""Fixtures for the fault suite: a broker Redis of its own that the tests may pause,
kill and restart, and a worker on it.

The worker's execution records go to the session's Redis (db 2), so they survive
whatever happens to the broker. The fault broker persists with ``appendfsync
always`` so that a kill loses nothing Redis had acknowledged: the tests then
measure aceleryctl, not Redis durability.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._support._process import free_port
from tests._support.redis_server import RedisServer
from tests._support.worker import CeleryWorker
from tests.integration._helpers import shared_app_worker


def launch_persistent_redis(port: int, workdir: Path) -> RedisServer:
    """Start ``redis-server`` on ``port`` with AOF in ``workdir``; wait until it answers."""
    executable = shutil.which(os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server"))
    assert executable, "redis-server is not on PATH"
    process = subprocess.Popen(
        [
            executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"), "--daemonize", "no",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = RedisServer(process, port, workdir)
    assert server.wait_ready(10.0), f"redis-server did not start: {server.log()[-2000:]}"
    return server


class FaultBroker:
    """The fault suite's broker: one port and data directory across restarts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-fault-redis-"))
        self.server = launch_persistent_redis(self.port, self.workdir)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections drop."""
        self.server.process.kill()
        self.server.process.wait(10)

    def restart(self) -> None:
        """Start again on the same port with the same data (the AOF)."""
        self.server = launch_persistent_redis(self.port, self.workdir)

    def stop(self) -> None:
        if self.server.is_alive():
            self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def fault_broker() -> Iterator[FaultBroker]:
    broker = FaultBroker()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def fault_worker(fault_broker: FaultBroker, redis_server: RedisServer) -> Iterator[CeleryWorker]:
    """A prefork worker consuming the fault broker; records go to the session Redis."""
    with shared_app_worker(f"faults-{os.getpid()}", fault_broker.url(0), redis_server) as worker:
        yield worker
