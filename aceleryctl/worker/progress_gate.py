"""The per-task throttle of progress reports (leading and trailing edge).

Pure: no Celery, no Django, no clock of its own (times are passed in as
``time.monotonic()`` seconds). :func:`process_gate` is the one instance a process
uses; a forked child gets a new, empty one.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

from aceleryctl.events import TaskEvent

__all__ = ["ProgressGate", "process_gate"]


@dataclass(slots=True)
class _Slot:
    attempt: int
    seq: int = 0
    next_at: float = -math.inf
    held: TaskEvent | None = None
    timer: bool = False


class ProgressGate:
    """A per-task throttle for progress reports.

    The first report of a task goes out at once; a report within ``interval``
    seconds of the last one that went out is held, the newest replacing the older,
    and the held one goes out when the interval has passed (the caller sets a timer
    for :meth:`due`) or when the attempt ends (:meth:`finish`), so the last report
    is never lost and at most one report per ``interval`` goes out. Thread-safe:
    the task's thread admits and holds, the emitter's thread runs the timers.

    Args:
        interval: seconds between two reports of one task that go out (> 0).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, int], _Slot] = {}

    def admit(self, task_id: str, attempt: int, now: float) -> tuple[int, bool]:
        """Number the next report of attempt ``attempt`` of ``task_id`` and say
        whether it goes out now.

        Attempts are tracked apart: in a threads pool the next attempt can start
        on another thread before the previous one's retry has been handled.

        Returns:
            ``(seq, send_now)``: ``seq`` counts the attempt's reports from 1. When
            ``send_now`` is false, build the report and pass it to :meth:`hold`;
            when true, any held report is superseded and dropped.
        """
        with self._lock:
            slot = self._slots.get((task_id, attempt))
            if slot is None:
                slot = self._slots[task_id, attempt] = _Slot(attempt)
            slot.seq += 1
            if now >= slot.next_at:
                slot.held = None
                slot.next_at = now + self.interval
                return slot.seq, True
            return slot.seq, False

    def hold(self, event: TaskEvent) -> float | None:
        """Keep ``event`` as its task's pending report (unless a newer one is held).

        Returns:
            the ``time.monotonic()`` at which to call :meth:`due`, when no timer is
            set for the task yet; else ``None`` (also when the task has ended).
        """
        with self._lock:
            slot = self._slots.get((event.task_id, event.attempt))
            if slot is None:
                return None
            if slot.held is None or slot.held.order < event.order:
                slot.held = event
            if slot.timer:
                return None
            slot.timer = True
            return slot.next_at

    def due(self, task_id: str, attempt: int, now: float) -> tuple[TaskEvent | None, float | None]:
        """The timer of attempt ``attempt`` of ``task_id`` fired.

        Returns:
            ``(event, retry_at)``: the held report to send now, if any; or, when a
            report went out at once since the timer was set and another one is held,
            ``retry_at``, the time to call again.
        """
        with self._lock:
            slot = self._slots.get((task_id, attempt))
            if slot is None or slot.held is None:
                if slot is not None:
                    slot.timer = False
                return None, None
            if now < slot.next_at:
                return None, slot.next_at
            event, slot.held, slot.timer = slot.held, None, False
            slot.next_at = now + self.interval
            return event, None

    def finish(self, task_id: str, attempt: int) -> TaskEvent | None:
        """Forget attempt ``attempt`` of ``task_id`` (it ended). Returns the report
        still held, to be sent before the attempt's last event, or ``None``."""
        with self._lock:
            slot = self._slots.pop((task_id, attempt), None)
        return None if slot is None else slot.held

    def __len__(self) -> int:
        """Task attempts currently tracked."""
        return len(self._slots)


_gate = ProgressGate(0.1)


def process_gate(interval: float) -> ProgressGate:
    """This process's gate, its interval set to ``interval`` seconds."""
    gate = _gate
    gate.interval = interval
    return gate


def _after_fork_in_child() -> None:
    global _gate
    _gate = ProgressGate(_gate.interval)


os.register_at_fork(after_in_child=_after_fork_in_child)
