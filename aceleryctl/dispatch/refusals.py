"""On-commit dispatches refused by the open breaker: counted, logged as a digest.

A refusal is cheap and the breaker logs its opening once, so refusals are never
logged one by one. But an on-commit dispatch refused after its transaction
committed is work that nobody will retry unless the outbox keeps it, and that
must be visible. :class:`RefusalDigest` writes one record for the first such
refusal after a quiet spell, then at most one per ``interval`` seconds for
whatever came in between: how many, of which tasks, how many were lost and how
many the outbox keeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

__all__ = ["RefusalDigest"]

logger: Final = logging.getLogger("aceleryctl.controller")

#: Task names named in one record before "and N more".
_NAMED: Final = 5


class RefusalDigest:
    """Coalesces refused on-commit dispatches into one record per interval.

    Thread-safe: :meth:`add` runs on committing and publishing threads; a record
    due later is written by a short-lived timer thread, or by :meth:`close` when the
    controller closes first (after it, every refusal is written at once). Never
    raises.

    Args:
        interval: seconds between two records, at least (> 0).
        clock: monotonic seconds.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._tasks: Counter[str] = Counter()
        self._lost = 0
        self._last_record = -interval
        self._timer: threading.Timer | None = None
        self._closed = False

    def add(self, task_name: str, *, lost: bool) -> None:
        """Count one refusal of ``task_name``; ``lost``: nothing keeps the dispatch."""
        with self._lock:
            self._tasks[task_name] += 1
            self._lost += lost
            if self._timer is not None:
                return
            wait = self._last_record + self._interval - self._clock()
            if wait > 0 and not self._closed:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()
                return
        self.flush()

    def close(self) -> None:
        """Write what is pending now, not after the controller is gone; stop the timer.

        Runs on the closing thread; never raises."""
        with self._lock:
            self._closed = True
            timer = self._timer
        if timer is not None:
            timer.cancel()
        self.flush()

    def flush(self) -> None:
        """Write the record for what was counted since the last one (if anything)."""
        with self._lock:
            self._timer = None
            tasks, lost = self._tasks, self._lost
            self._tasks, self._lost = Counter(), 0
            if not tasks:
                return
            self._last_record = self._clock()
        try:
            _write(tasks, lost)
        except Exception:  # logging must never fail a dispatch path
            logger.debug("aceleryctl could not write the refusal digest", exc_info=True)


def _write(tasks: Counter[str], lost: int) -> None:
    total = sum(tasks.values())
    named = ", ".join(f"{name}: {count}" for name, count in tasks.most_common(_NAMED))
    if len(tasks) > _NAMED:
        named += f", and {len(tasks) - _NAMED} more tasks"
    kept = total - lost
    fate = []
    if lost:
        fate.append(f"{lost} lost (nothing stores them; the outbox would: see docs/durability.md)")
    if kept:
        fate.append(f"{kept} kept in the outbox for its relay")
    logger.log(
        logging.ERROR if lost else logging.WARNING,
        "On-commit dispatch refused by the open circuit breaker after the commit: %d (%s); %s",
        total,
        named,
        ", ".join(fate),
        extra={
            "task_name": tasks.most_common(1)[0][0],
            "error_type": "CircuitOpenError",
            "outcome": "not_sent",
            "refused_count": total,
            "lost_count": lost,
            "refused_tasks": dict(tasks),
        },
    )
