"""Child processes that this session started: starting them with a log file, and
stopping them by their own id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "LoggedProcess",
    "StopsOnExit",
    "accepts",
    "free_port",
    "read_log",
    "spawn",
    "stop_process",
    "tail",
]

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before the caller binds it, so callers retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def stop_process(
    process: subprocess.Popen[bytes],
    *,
    timeout: float,
    sig: signal.Signals = signal.SIGTERM,
    kill_group: bool = False,
) -> int:
    """Send ``sig`` to ``process``, wait up to ``timeout`` seconds, then SIGKILL it.

    With ``kill_group`` (for a child started with ``start_new_session=True``), the
    final SIGKILL goes to the child's own process group, so that processes it forked
    (a prefork pool) die with it. Returns the exit status; never raises for a
    process that has already exited.
    """
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        if kill_group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    return process.wait(timeout=timeout)


def tail(text: str, lines: int = 60) -> str:
    """The last ``lines`` lines of ``text``, for failure messages."""
    return "\n".join(text.splitlines()[-lines:])


def read_log(path: Path) -> str:
    """Everything written to ``path`` so far, or an empty string."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class StopsOnExit:
    """A context manager that stops what it runs on the way out (``self.stop()``).

    ``with`` gives ``self``; a subclass whose ``__enter__`` must start something
    overrides it.
    """

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LoggedProcess(StopsOnExit):
    """A child process whose stdout and stderr go to a file (never a pipe that could
    fill up), so its output can be read while it runs and quoted on failure."""

    def __init__(
        self, process: subprocess.Popen[bytes], log_path: Path, *, own_group: bool
    ) -> None:
        self.process = process
        self.log_path = log_path
        #: Whether the child leads a process group of its own (``start_new_session``).
        self.own_group = own_group

    def log(self) -> str:
        """Everything the process has written so far."""
        return read_log(self.log_path)

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, for failure messages."""
        return tail(self.log(), lines)

    def is_alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def remove_log(self) -> None:
        """Delete the log file (after the process has stopped)."""
        self.log_path.unlink(missing_ok=True)

    def stop(self, timeout: float = 20.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig``; after ``timeout`` seconds SIGKILL the process, or its process
        group if it has one of its own (:func:`stop_process`). Returns the exit status."""
        return stop_process(self.process, timeout=timeout, sig=sig, kill_group=self.own_group)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path | None = None,
    log_prefix: str = "aceleryctl-child-",
    new_session: bool = True,
) -> LoggedProcess:
    """Start ``argv`` in ``cwd`` and return without waiting.

    ``env`` is added to this process's environment; ``cwd`` is also put first on
    ``PYTHONPATH`` (so a Python child imports the same modules as its parent) and
    output is unbuffered. stdout and stderr go to ``log_path`` (appended to), or to
    a new temporary file named ``<log_prefix>….log``. With ``new_session`` the child
    runs in a session (process group) of its own, so that :meth:`LoggedProcess.stop`
    can kill what it forked too if it must.
    """
    if log_path is None:
        log_fd, log_name = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
        log_path = Path(log_name)
    else:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    child_env = dict(os.environ)
    child_env.update(env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    child_env["PYTHONUNBUFFERED"] = "1"
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    finally:
        os.close(log_fd)
    return LoggedProcess(process, log_path, own_group=new_session)
