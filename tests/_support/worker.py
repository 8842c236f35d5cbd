"""A real ``celery worker`` subprocess (prefork pool) for integration tests.

The worker's stdout and stderr go to a file (never a pipe that could fill up), so
its log can be read while it runs and quoted in failure messages.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ._process import LoggedProcess, spawn
from .waiting import WaitTimeout, wait_until

__all__ = ["CeleryWorker", "CeleryWorkerError"]


class CeleryWorkerError(RuntimeError):
    """The worker exited or did not report ready in time; the message quotes its log."""


class CeleryWorker(LoggedProcess):
    """One ``celery worker`` process consuming ``queues``, named ``<name>@<host>``.

    Start it with :meth:`start`; use it as a context manager or call :meth:`stop`
    (warm shutdown, SIGTERM; after the timeout, SIGKILL to its process group: the
    worker and its pool children).
    """

    def __init__(self, process: subprocess.Popen[bytes], hostname: str, log_path: Path) -> None:
        super().__init__(process, log_path, own_group=True)
        self.hostname = hostname

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
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool=prefork", f"--concurrency={concurrency}",
            "-Q", ",".join(queues), "-n", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", "info", *extra_args,
        ]  # fmt: skip
        child = spawn(command, env=env, cwd=cwd, log_prefix=f"aceleryctl-worker-{name}-")
        return cls(child.process, hostname, child.log_path)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[CeleryWorker]:
        """This worker for a ``with`` block (a fixture's body): on the way out,
        :meth:`stop` it and remove its log."""
        try:
            yield self
        finally:
            self.stop()
            self.remove_log()

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
