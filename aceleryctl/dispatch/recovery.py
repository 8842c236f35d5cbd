"""The recovery probe: while the breaker is open, find out when the broker is back.

An open breaker refuses calls in microseconds, but on its own it learns that the
broker is back only when its reset timeout has passed and a caller's trial call
succeeds: seconds after the broker returned (5.8 s after a Sentinel failover whose
replica was promoted at 2.3 s, measured). :class:`RecoveryProbe` runs one daemon
thread per engine while the breaker is OPEN. Every :data:`INTERVAL` seconds it makes
the wire's cheapest round trip (:meth:`~aceleryctl.wires.base.Wire.probe`: on Redis a
connect and a ``PING``), bounded by :data:`TIMEOUT`, never on a caller's thread; the
first answer moves the breaker to HALF_OPEN (:meth:`CircuitBreaker.probe_succeeded`),
so the next calls are trials at once. Probing stops when the breaker leaves OPEN,
a forced state included, or the engine closes. Calls during the outage are still
refused by the breaker, unchanged.

The thread is not started by the breaker's opening, which happens on the event
loop's thread: ``Thread.start`` waits until the new thread runs, and on a loaded
machine that held the loop for up to 75 ms (measured during ``rabbitmqctl
stop_app``, where the breaker opens, half-opens and opens again). A publishing
thread whose publish failed for the broker's fault starts it instead
(:meth:`RecoveryProbe.prepare`), before the failure reaches the breaker; the opening
then only wakes it. It waits :data:`LINGER` seconds for the breaker to open (or to
open again after a failed trial) and ends when it does not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from aceleryctl.breaker import BreakerState, CircuitBreaker, StateChange
from aceleryctl.wires.base import Wire

__all__ = ["INTERVAL", "LINGER", "TIMEOUT", "RecoveryProbe"]

logger: Final = logging.getLogger("aceleryctl.breaker")

#: Seconds between two probes while the breaker is open.
INTERVAL: Final = 0.2
#: Seconds one probe may take, at most (the dispatch deadline when that is shorter).
TIMEOUT: Final = 1.0
#: Seconds an idle probe thread waits for the breaker to open before it ends.
LINGER: Final = 2.0


class RecoveryProbe:
    """Probes the broker from a background thread while ``breaker`` is OPEN.

    Thread-safe. :meth:`state_changed` (a breaker listener's method) runs on
    whichever thread moved the breaker, :meth:`prepare` on a publishing thread; the
    probing runs on the probe's own daemon thread.

    Args:
        wire: the engine's wire (its ``probe`` makes the round trip).
        breaker: the breaker to tell.
        timeout: seconds one probe may take (capped at :data:`TIMEOUT`).
        interval: seconds between probes.
        clock: monotonic seconds (the wire's deadlines use it too).
        linger: seconds an idle probe thread waits for the breaker to open.
    """

    def __init__(
        self,
        wire: Wire,
        breaker: CircuitBreaker,
        *,
        timeout: float = TIMEOUT,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        linger: float = LINGER,
    ) -> None:
        self._wire = wire
        self._breaker = breaker
        self._timeout = min(timeout, TIMEOUT)
        self._interval = interval
        self._clock = clock
        self._linger = linger
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the breaker opened: probe
        self._thread: threading.Thread | None = None  # None once it decided to end
        self._probing = False
        self._pid = os.getpid()
        self._probes = self._answered = 0
        self._last_error: str | None = None

    def prepare(self) -> None:
        """A publish failed for the broker's fault: make sure a probe thread is
        alive, so that the breaker opening after it only wakes that thread. Called
        on a publishing thread (starting a thread blocks the caller briefly)."""
        self._start()

    def state_changed(self, change: StateChange) -> None:
        """Start probing when the breaker opens (never for a forced open): wake
        the probe thread, or start one if none is alive."""
        if change.new is BreakerState.OPEN:
            self._wake.set()
            self._start()

    def close(self) -> None:
        """Stop probing (the engine is closing); returns at once."""
        self._stop.set()
        self._wake.set()

    def statistics(self) -> dict[str, Any]:
        """``running`` (probing now), ``probes`` made, ``answered`` (moved the
        breaker), and the ``last_error`` of a probe the broker did not answer;
        JSON types."""
        with self._lock:
            return {
                "running": self._probing and self._pid == os.getpid(),
                "probes": self._probes,
                "answered": self._answered,
                "last_error": self._last_error,
            }

    def _start(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            if self._thread is not None and self._pid == os.getpid():
                return  # alive, and it ends only after seeing no wake (under this lock)
            self._pid = os.getpid()  # after a fork, the parent's thread is not ours
            self._probing = False
            thread = self._thread = threading.Thread(
                target=self._run, name="aceleryctl-recovery-probe", daemon=True
            )
        thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while not self._stop.is_set():
                if not self._wake.wait(self._linger):
                    with self._lock:
                        if not self._wake.is_set():  # nothing opened the breaker meanwhile
                            if self._thread is me:
                                self._thread = None  # decided under the lock _start takes
                            return
                self._wake.clear()
                if not self._stop.is_set():
                    self._probe_while_open()  # first waits one interval, then sees OPEN
        finally:
            with self._lock:
                if self._thread is me:
                    self._thread = None

    def _probe_while_open(self) -> None:
        with self._lock:
            self._probing = True
        try:
            while not self._stop.wait(self._interval):
                if self._breaker.state is not BreakerState.OPEN:
                    return
                if self._probe_once():
                    return
        finally:
            try:
                self._wire.release_thread()
            except Exception:  # releasing a connection must not kill anything
                logger.debug("the recovery probe could not release its connection", exc_info=True)
            with self._lock:
                self._probing = False

    def _probe_once(self) -> bool:
        try:
            outcome = self._wire.probe(self._clock() + self._timeout)
            answered, error = outcome.sent, outcome.error
        except Exception as exc:  # a wire must not raise, but a probe never kills the thread
            answered, error = False, exc
        with self._lock:
            self._probes += 1
            if not answered:
                self._last_error = f"{type(error).__name__}: {error}" if error else "no answer"
        if answered and self._breaker.probe_succeeded():
            with self._lock:
                self._answered += 1
            return True
        return answered
