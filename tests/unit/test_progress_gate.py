"""The progress throttle: leading and trailing edge per task attempt, on a manual clock."""

from __future__ import annotations

import itertools
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aceleryctl.events import STATE_OF_TYPE, Phase, Progress, TaskEvent, order_key, split_order
from aceleryctl.worker.progress_gate import ProgressGate


def report(seq: int, task_id: str = "t", attempt: int = 0) -> TaskEvent:
    return TaskEvent(
        type="task.progress",
        task_id=task_id,
        task_name=None,
        state=STATE_OF_TYPE["task.progress"],
        timestamp=time.time(),
        order=order_key(attempt, Phase.PROGRESS, seq),
        progress=Progress(seq),
    )


def test_the_first_report_goes_out_and_the_next_within_the_interval_are_held() -> None:
    gate = ProgressGate(0.1)
    assert gate.admit("t", 0, now=10.0) == (1, True)
    assert gate.admit("t", 0, now=10.01) == (2, False)
    assert gate.hold(report(2)) == 10.1  # set a timer for then
    assert gate.admit("t", 0, now=10.02) == (3, False)
    assert gate.hold(report(3)) is None  # a timer is already set
    assert seq_of(gate.due("t", 0, now=10.1)) == (3, None)


def seq_of(value: TaskEvent | tuple[TaskEvent | None, float | None] | None) -> Any:
    """The report sequence numbers in what the gate returned (``None`` stays)."""
    if isinstance(value, tuple):
        event, retry_at = value
        return (None if event is None else split_order(event.order)[2], retry_at)
    return None if value is None else split_order(value.order)[2]


def test_a_report_after_the_interval_supersedes_the_held_one() -> None:
    gate = ProgressGate(0.1)
    gate.admit("t", 0, 0.0)
    gate.admit("t", 0, 0.05)
    assert gate.hold(report(2)) == 0.1
    assert gate.admit("t", 0, 0.2) == (3, True)  # goes out itself; the held one is dropped
    assert gate.due("t", 0, 0.2) == (None, None)
    assert gate.finish("t", 0) is None


def test_a_timer_that_fires_after_a_direct_report_is_told_to_come_back() -> None:
    gate = ProgressGate(0.1)
    gate.admit("t", 0, 0.0)
    gate.admit("t", 0, 0.05)
    gate.hold(report(2))
    gate.admit("t", 0, 0.1)  # went out at once, next allowed at 0.2
    gate.admit("t", 0, 0.15)
    assert gate.hold(report(4)) is None  # the old timer is still pending
    assert gate.due("t", 0, 0.1) == (None, 0.2)
    assert seq_of(gate.due("t", 0, 0.2)) == (4, None)


def test_finish_hands_back_the_held_report_and_forgets_the_attempt() -> None:
    gate = ProgressGate(1.0)
    gate.admit("t", 0, 0.0)
    gate.admit("t", 0, 0.1)
    gate.hold(report(2))
    assert seq_of(gate.finish("t", 0)) == 2
    assert len(gate) == 0
    assert gate.hold(report(3)) is None  # the attempt has ended
    assert gate.due("t", 0, 5.0) == (None, None)


def test_attempts_are_throttled_and_numbered_apart() -> None:
    gate = ProgressGate(1.0)
    assert gate.admit("t", 0, 0.0) == (1, True)
    assert gate.admit("t", 1, 0.1) == (1, True)  # the next attempt, maybe on another thread
    assert gate.admit("t", 0, 0.2) == (2, False)
    assert gate.admit("other", 0, 0.2) == (1, True)
    gate.hold(report(2))
    assert gate.finish("t", 1) is None
    assert seq_of(gate.finish("t", 0)) == 2


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_never_more_than_one_report_per_interval_and_the_last_is_never_lost(
    gaps: list[float],
) -> None:
    interval = 0.1
    gate = ProgressGate(interval)
    now = 0.0
    sent: list[tuple[float, int]] = []
    timer: float | None = None
    last_seq = 0
    for gap in gaps:
        now += gap
        if timer is not None and timer <= now:  # the emitter runs due timers first
            event, retry = gate.due("t", 0, timer)
            if event is not None:
                sent.append((timer, event.order))
            timer = retry
        seq, send_now = gate.admit("t", 0, now)
        last_seq = seq
        if send_now:
            sent.append((now, order_key(0, Phase.PROGRESS, seq)))
        else:
            due = gate.hold(report(seq))
            if due is not None:
                timer = due
    held = gate.finish("t", 0)
    if held is not None:
        sent.append((now, held.order))
    assert sent[-1][1] == order_key(0, Phase.PROGRESS, last_seq)
    orders = [order for _, order in sent]
    assert orders == sorted(set(orders))
    times = [at for at, _ in sent[:-1]]  # the flush at the end is not throttled
    assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(times))
