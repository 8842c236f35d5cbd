"""A real uvicorn serving ``asgi_app`` on 127.0.0.1, with the real channels_redis layer.

The server is a subprocess of this test session, started on a free port and
stopped by its own process id. Its output goes to a file quoted on failure.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._support._process import accepts, free_port, read_log, spawn, stop_process, tail
from tests._support.redis_server import RedisServer
from tests._support.waiting import WaitTimeout, wait_until
from tests._support.websocket_server import WebsocketEndpoint, uvicorn_argv

#: What the tests of this folder import from here (``accepts`` comes from tests._support).
__all__ = ["REPO_ROOT", "LiveServer", "accepts", "launch", "live_ws_server"]

REPO_ROOT = Path(__file__).resolve().parents[3]
LAYER_DB, RESULTS_DB = 5, 6


@dataclass(frozen=True)
class LiveServer(WebsocketEndpoint):
    """Where the server listens, and the Redis URLs it was given."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    layer_url: str
    results_url: str

    def log(self) -> str:
        return read_log(self.log_path)


def launch(redis_server: RedisServer, log_path: Path, port: int | None = None) -> LiveServer:
    """Start uvicorn (on ``port``, or a free one) and return without waiting; its
    output is appended to ``log_path``."""
    port = port or free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.integration.live_ws.settings",
        "ACELERYCTL_LIVE_LAYER_URL": redis_server.url(LAYER_DB),
        "ACELERYCTL_LIVE_RESULTS_URL": redis_server.url(RESULTS_DB),
    }
    app = "tests.integration.live_ws.asgi_app:application"
    argv = uvicorn_argv(app, port, "--ws", "websockets")
    child = spawn(argv, env=env, cwd=REPO_ROOT, log_path=log_path, new_session=False)
    return LiveServer(
        child.process, port, log_path, redis_server.url(LAYER_DB), redis_server.url(RESULTS_DB)
    )


@pytest.fixture(scope="session")
def live_ws_server(redis_server: RedisServer) -> Iterator[LiveServer]:
    """uvicorn on a free port of 127.0.0.1 (three tries), stopped by PID at the end."""
    log_path = Path(tempfile.mkstemp(prefix="aceleryctl-uvicorn-", suffix=".log")[1])
    server = None
    for _ in range(3):
        candidate = launch(redis_server, log_path)

        def up_or_gone(c: LiveServer = candidate) -> bool:
            return c.process.poll() is not None or accepts(c.port)

        with contextlib.suppress(WaitTimeout):
            wait_until(up_or_gone, timeout=30, interval=0.05)
        if candidate.process.poll() is None and accepts(candidate.port):
            server = candidate
            break
        stop_process(candidate.process, timeout=5)
    if server is None:
        pytest.fail(f"uvicorn did not start:\n{tail(log_path.read_text(errors='replace'))}")
    try:
        yield server
    finally:
        stop_process(server.process, timeout=10)
        log_path.unlink(missing_ok=True)
