"""Stopping a child process that this test session started, by its own id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

__all__ = ["free_port", "stop_process", "tail"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before the caller binds it, so callers retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
