"""A real ``redis-server`` on 127.0.0.1 for the duration of a test session.

The server keeps nothing on disk (``--save "" --appendonly no``) and is stopped by
its own process id.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from ._process import StopsOnExit, free_port, read_log, stop_process, tail
from .waiting import WaitTimeout, wait_until

__all__ = ["RedisServer", "RedisServerError", "answers_ping"]

HOST = "127.0.0.1"


def answers_ping(port: int) -> bool:
    """True when the Redis on 127.0.0.1:``port`` answers PING within a second."""
    client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServerError(RuntimeError):
    """``redis-server`` is missing, or did not start and answer PING in time."""


class RedisServer(StopsOnExit):
    """One ``redis-server`` child process listening on 127.0.0.1.

    Start it with :meth:`start`; use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self._paused = False

    @classmethod
    def start(
        cls,
        *,
        executable: str = "redis-server",
        startup_timeout: float = 10.0,
        attempts: int = 5,
    ) -> RedisServer:
        """Start a server on a free port and wait (bounded) until it answers PING.

        Retries on a fresh port when the chosen one was taken in the meantime.

        Raises:
            RedisServerError: the executable is not on PATH, or no attempt produced a
                server that answered within ``startup_timeout`` seconds.
        """
        path = shutil.which(executable)
        if path is None:
            raise RedisServerError(f"{executable!r} is not on PATH")
        failures: list[str] = []
        for _ in range(attempts):
            server = cls._launch(path, free_port(HOST))
            if server.wait_ready(startup_timeout):
                return server
            failures.append(f"port {server.port}: {tail(server.log(), 10)}")
            server.stop()
        raise RedisServerError("redis-server did not start:\n" + "\n".join(failures))

    @classmethod
    def _launch(cls, path: str, port: int) -> RedisServer:
        workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-redis-"))
        process = subprocess.Popen(
            [
                path,
                "--bind", HOST,
                "--port", str(port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(workdir / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        return cls(process, port, workdir)

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for PING to succeed; False if the process
        exited (say, the port was taken) or never answered."""
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not self.is_alive() or self.ping(), timeout=timeout, interval=0.02)
        return self.is_alive() and self.ping()

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new redis-py client for database ``db`` with short, bounded timeouts."""
        return redis.Redis(
            host=HOST,
            port=self.port,
            db=db,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
        )

    def ping(self) -> bool:
        """True when the server answers PING within a second."""
        return answers_ping(self.port)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        self.process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        self.process.send_signal(signal.SIGCONT)
        self._paused = False

    def log(self) -> str:
        """The server's log file, or an empty string."""
        return read_log(self.workdir / "redis.log")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds) and remove
        its working directory."""
        if self._paused and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.resume()
        stop_process(self.process, timeout=timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
