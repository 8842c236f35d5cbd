"""The in-process relay: a relay thread inside each web process, for deployments
that run no ``manage.py aceleryctl_relay`` (``ACELERYCTL["OUTBOX"]["RELAY"] =
"in_process"``).

It publishes through the process's default controller (its breaker, pool and
deadline). It starts with the ASGI lifespan (:func:`aceleryctl.asgi.with_lifespan`)
or, under WSGI and in any other process, the first time the process writes an
outbox row; it stops at lifespan shutdown and at interpreter exit. Each process
runs at most one; a forked child starts its own when it writes a row. On SQLite,
where a relay cannot lock rows, run a single process or the command instead.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Final

from aceleryctl.outbox.config import outbox_settings

__all__ = ["InProcessRelay", "in_process_relay"]

#: Seconds :meth:`InProcessRelay.stop` waits for the round in progress by default.
STOP_TIMEOUT: Final = 5.0


class InProcessRelay:
    """Starts and stops this process's relay thread. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._exit_hook = False

    @property
    def running(self) -> bool:
        """Whether this process's relay thread is alive."""
        return self._alive()

    def _alive(self) -> bool:
        thread = self._thread
        return self._pid == os.getpid() and thread is not None and thread.is_alive()

    def ensure_started(self) -> bool:
        """Start the relay thread when the settings ask for one (the outbox on, RELAY
        ``"in_process"``) and it is not running in this process. Cheap when it runs.

        Returns:
            Whether a relay thread runs in this process now.
        """
        if self._alive():
            return True
        conf = outbox_settings()
        if not (conf.enabled and conf.relay == "in_process"):
            return False
        with self._lock:
            if self._alive():
                return True
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="aceleryctl-relay", daemon=True
            )
            self._thread.start()
            if not self._exit_hook:
                atexit.register(self.stop, 2.0)
                self._exit_hook = True
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Ask the relay thread to stop after its round, and wait up to ``timeout``
        seconds for it. Returns ``True`` if it is not running."""
        with self._lock:
            thread = self._thread if self._pid == os.getpid() else None
            self._stop.set()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @staticmethod
    def _run(stop: threading.Event) -> None:
        from django.db import connections

        from aceleryctl.conf import default_controller
        from aceleryctl.outbox.relay import Relay

        try:
            Relay(default_controller, name=f"in-process:{os.getpid()}").run(stop)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()


_relay = InProcessRelay()


def in_process_relay() -> InProcessRelay:
    """The process's :class:`InProcessRelay`."""
    return _relay
