"""A real ``celery worker`` subprocess (prefork pool) for integration tests.

The worker's stdout and stderr go to a file (never a pipe that could fill up), so
its log can be read while it runs and quoted in failure messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ._process import stop_process, tail
from .waiting import WaitTimeout, wait_until

__all__ = ["CeleryWorker", "CeleryWorkerError"]


class CeleryWorkerError(RuntimeError):
    """The worker exited or did not report ready in time; the message quotes its log."""


class CeleryWorker:
    """One ``celery worker`` process consuming ``queues``, named ``<name>@<host>``.

    Start it with :meth:`start`; use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, process: subprocess.Popen[bytes], hostname: str, log_path: Path) -> None:
        self.process = process
        self.hostname = hostname
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        *,
        app: str,
        name: str,
        queues: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        concurrency: int = 2,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> CeleryWorker:
        """:meth:`launch` a worker, then :meth:`wait_ready` for it."""
        worker = cls.launch(
            app=app,
            name=name,
            queues=queues,
            env=env,
            cwd=cwd,
            concurrency=concurrency,
            extra_args=extra_args,
        )
        worker.wait_ready(startup_timeout)
        return worker

    @classmethod
    def launch(
        cls,
        *,
        app: str,
        name: str,
        queues: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        concurrency: int = 2,
        extra_args: Sequence[str] = (),
    ) -> CeleryWorker:
        """Start ``python -m celery -A <app> worker`` and return without waiting.

        ``env`` is added to this process's environment; ``cwd`` is also put first on
        ``PYTHONPATH`` so the worker imports the same modules as the tests. The
        worker runs in its own session (process group), so that :meth:`stop` can
        kill its pool children too if it must.
        """
        hostname = f"{name}@{socket.gethostname()}"
        log_fd, log_name = tempfile.mkstemp(prefix=f"aceleryctl-worker-{name}-", suffix=".log")
        child_env = dict(os.environ)
        child_env.update(env)
        child_env["PYTHONPATH"] = os.pathsep.join(
            [str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        child_env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool=prefork", f"--concurrency={concurrency}",
            "-Q", ",".join(queues), "-n", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "info", *extra_args,
        ]  # fmt: skip
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        return cls(process, hostname, Path(log_name))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait up to ``timeout`` seconds until the worker logs "<hostname> ready.".

        Raises:
            CeleryWorkerError: the worker exited or did not report ready in time (it
                is stopped first); the message quotes its log.
        """
        ready = f"{self.hostname} ready."
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: not self.is_alive() or ready in self.log(),
                timeout=timeout,
                interval=0.05,
            )
        if not self.is_alive() or ready not in self.log():
            status = self.process.poll()
            self.stop()
            raise CeleryWorkerError(
                f"worker {self.hostname} did not become ready within {timeout} s "
                f"(exit status {status}); log:\n{self.log_tail()}"
            )

    def log(self) -> str:
        """Everything the worker has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, for failure messages."""
        return tail(self.log(), lines)

    def is_alive(self) -> bool:
        """True while the worker's main process runs."""
        return self.process.poll() is None

    def remove_log(self) -> None:
        """Delete the log file (after the worker has stopped)."""
        self.log_path.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown (SIGTERM); after ``timeout`` seconds, SIGKILL its process group
        (the worker and its pool children). Returns the exit status."""
        return stop_process(self.process, timeout=timeout, sig=signal.SIGTERM, kill_group=True)

    def __enter__(self) -> CeleryWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
