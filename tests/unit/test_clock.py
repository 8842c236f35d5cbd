"""ManualClock's timers: what runs when advance() reaches them, in which order, where."""

from __future__ import annotations

import math
import threading
import time

import pytest

from aceleryctl._clock import ManualClock, TimerClock

GATE_TIMEOUT = 10.0  # seconds; a bound on every wait, never expected to be reached


def test_manual_clock_is_a_timer_clock_and_monotonic_time_is_not() -> None:
    assert isinstance(ManualClock(), TimerClock)
    assert not isinstance(time.monotonic, TimerClock)


def test_a_timer_runs_once_the_clock_reaches_its_time_exactly() -> None:
    clock = ManualClock(10.0)
    ran: list[float] = []
    clock.call_at(15.0, lambda: ran.append(clock()))
    clock.advance(4.5)
    assert ran == []
    clock.advance(0.5)
    assert ran == [15.0]  # run after the clock moved, reading the new time
    clock.advance(100.0)
    assert ran == [15.0]  # once


def test_a_timer_already_due_runs_at_once_on_the_calling_thread() -> None:
    clock = ManualClock(3.0)
    ran: list[str] = []
    clock.call_at(3.0, lambda: ran.append(threading.current_thread().name))
    clock.call_at(-math.inf, lambda: ran.append("past"))
    assert ran == [threading.current_thread().name, "past"]


def test_due_timers_run_by_time_then_in_the_order_they_were_scheduled() -> None:
    clock = ManualClock()
    ran: list[str] = []
    clock.call_at(2.0, lambda: ran.append("2a"))
    clock.call_at(1.0, lambda: ran.append("1"))
    clock.call_at(2.0, lambda: ran.append("2b"))
    clock.call_at(3.0, lambda: ran.append("3"))
    clock.advance(2.0)
    assert ran == ["1", "2a", "2b"]
    clock.advance(1.0)
    assert ran == ["1", "2a", "2b", "3"]


def test_a_cancelled_timer_never_runs_and_cancel_after_running_is_harmless() -> None:
    clock = ManualClock()
    ran: list[str] = []
    kept = clock.call_at(1.0, lambda: ran.append("kept"))
    dropped = clock.call_at(1.0, lambda: ran.append("dropped"))
    dropped.cancel()
    clock.advance(1.0)
    assert ran == ["kept"]
    kept.cancel()
    dropped.cancel()
    clock.advance(1.0)
    assert ran == ["kept"]


def test_callbacks_may_schedule_more_timers_and_due_ones_run_in_the_same_advance() -> None:
    clock = ManualClock()
    ran: list[float] = []

    def again() -> None:
        ran.append(clock())
        if len(ran) < 3:
            clock.call_at(clock() + 1.0, again)

    clock.call_at(1.0, again)
    clock.advance(1.0)
    assert ran == [1.0]
    clock.advance(5.0)
    assert ran == [1.0, 6.0]  # re-scheduled for 7.0 by the second run, not due yet
    clock.advance(1.0)
    assert ran == [1.0, 6.0, 7.0]


def test_a_failing_callback_propagates_and_later_timers_stay_scheduled() -> None:
    clock = ManualClock()
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("callback bug")

    clock.call_at(1.0, boom)
    clock.call_at(2.0, lambda: ran.append("later"))
    with pytest.raises(RuntimeError, match="callback bug"):
        clock.advance(2.0)
    assert clock() == 2.0  # the clock moved before the callbacks ran
    assert ran == []
    clock.advance(0.0)
    assert ran == ["later"]


def test_advance_from_another_thread_runs_the_timers_there() -> None:
    clock = ManualClock()
    ran_on: list[str] = []
    clock.call_at(1.0, lambda: ran_on.append(threading.current_thread().name))
    mover = threading.Thread(target=clock.advance, args=(1.0,), name="mover")
    mover.start()
    mover.join(GATE_TIMEOUT)
    assert not mover.is_alive()
    assert ran_on == ["mover"]


def test_cancelled_timers_do_not_accumulate() -> None:
    clock = ManualClock()
    for _ in range(10_000):
        clock.call_at(1.0, lambda: None).cancel()
    assert len(clock._timers) <= 2 * 64 + 1
    ran: list[int] = []
    clock.call_at(1.0, lambda: ran.append(1))
    clock.advance(1.0)
    assert ran == [1]
    assert clock._timers == []


def test_call_at_rejects_nan() -> None:
    with pytest.raises(ValueError, match="nan"):
        ManualClock().call_at(math.nan, lambda: None)
