"""Unit tests for the circuit breaker state machine and the manual clock.

No sleeps and no network: time moves only through ManualClock.advance().
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aceleryctl._clock import ManualClock
from aceleryctl._window import WINDOW_BUCKETS
from aceleryctl.breaker import (
    BreakerState,
    CircuitBreaker,
    Permit,
    StateChange,
)
from aceleryctl.exceptions import CircuitOpenError, DispatchRejected

LOGGER = "aceleryctl.breaker"


class Recorder:
    """A listener that keeps every change it is told about."""

    def __init__(self) -> None:
        self.changes: list[StateChange] = []

    def state_changed(self, change: StateChange) -> None:
        self.changes.append(change)

    @property
    def transitions(self) -> list[tuple[BreakerState, BreakerState]]:
        return [(c.old, c.new) for c in self.changes]


def make(clock: ManualClock, **kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker(clock=clock, **kwargs)


def fail(breaker: CircuitBreaker, times: int = 1, duration: float = 0.01) -> None:
    for _ in range(times):
        breaker.acquire().record_failure(duration)


def succeed(breaker: CircuitBreaker, times: int = 1, duration: float = 0.01) -> None:
    for _ in range(times):
        breaker.acquire().record_success(duration)


def trip(breaker: CircuitBreaker) -> None:
    """Open a breaker built with failure_threshold=1."""
    fail(breaker)
    assert breaker.state is BreakerState.OPEN


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


# -- ManualClock --------------------------------------------------------------------


def test_manual_clock_advances_only_when_told() -> None:
    clock = ManualClock(3.5)
    assert clock() == 3.5
    clock.advance(0.0)
    clock.advance(1.25)
    assert clock() == 4.75
    assert repr(clock) == "ManualClock(4.75)"


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf])
def test_manual_clock_refuses_to_go_backwards_or_to_infinity(seconds: float) -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="non-negative"):
        clock.advance(seconds)
    assert clock() == 0.0


def test_manual_clock_rejects_non_finite_start() -> None:
    with pytest.raises(ValueError, match="start"):
        ManualClock(math.inf)


# -- opening rules -----------------------------------------------------------------


def test_consecutive_failures_open_it(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(clock, failure_threshold=3, listeners=[recorder])
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 2
    fail(breaker)
    assert breaker.statistics().state is BreakerState.OPEN
    assert [c.reason for c in recorder.changes] == ["3 consecutive failures"]


def test_a_success_resets_the_consecutive_count(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=3)
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 2


def test_failure_rate_opens_it_only_once_the_window_holds_minimum_calls(
    clock: ManualClock,
) -> None:
    recorder = Recorder()
    breaker = make(
        clock,
        failure_threshold=100,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        listeners=[recorder],
    )
    for _ in range(4):  # 8 calls at a 50 % failure rate: below the minimum
        succeed(breaker)
        fail(breaker)
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_failures, stats.failure_rate) == (8, 4, 0.5)
    assert breaker.state is BreakerState.CLOSED
    succeed(breaker)  # 9 calls, 44 %
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)  # 10 calls, 50 %
    assert breaker.statistics().state is BreakerState.OPEN
    assert recorder.changes[0].reason == "failure rate 50% over 30 s (10 calls)"


def test_slow_call_rate_opens_it_with_successes_only(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(
        clock,
        slow_call_after=1.0,
        slow_call_rate_threshold=0.8,
        minimum_calls=5,
        listeners=[recorder],
    )
    succeed(breaker, 1, duration=0.5)
    succeed(breaker, 1, duration=1.0)  # exactly the limit is not slow
    succeed(breaker, 3, duration=1.5)
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_slow_calls, stats.slow_call_rate) == (5, 3, 0.6)
    assert stats.total_failures == 0
    succeed(breaker, 3, duration=2.0)  # 6 slow of 8: 75 %
    assert breaker.state is BreakerState.CLOSED
    succeed(breaker, 1, duration=2.0)  # 7 of 9: 78 %
    assert breaker.state is BreakerState.CLOSED
    succeed(breaker, 1, duration=2.0)  # 8 of 10: 80 %
    assert breaker.statistics().state is BreakerState.OPEN
    assert recorder.changes[0].reason.startswith("slow-call rate 80% over 30 s (10 calls)")


def test_old_failures_age_out_of_the_window(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=100, minimum_calls=10, window_duration=30.0)
    fail(breaker, 9)
    clock.advance(15.0)
    assert breaker.statistics().window_failures == 9
    clock.advance(15.0)  # 30 s after the failures
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_failures, stats.failure_rate) == (0, 0, 0.0)
    assert stats.total_failures == 9
    fail(breaker)  # would have been the tenth failure in a row of ten calls
    assert breaker.state is BreakerState.CLOSED


def test_the_window_keeps_recent_calls_while_older_ones_leave(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=100, minimum_calls=100, window_duration=30.0)
    fail(breaker, 3)
    clock.advance(20.0)
    succeed(breaker, 2)
    clock.advance(10.0)  # the failures have left, the successes are 10 s old
    stats = breaker.statistics()
    assert (stats.window_calls, stats.window_failures) == (2, 0)


# -- open and half-open ------------------------------------------------------------


def test_open_rejects_with_a_retry_after_that_shrinks_with_time(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0)
    trip(breaker)
    for waited in (0.0, 1.5, 2.0, 1.0):
        clock.advance(waited)
        stats = breaker.statistics()
        with pytest.raises(CircuitOpenError) as info:
            breaker.acquire()
        assert info.value.retry_after == pytest.approx(stats.retry_after)
        assert isinstance(info.value, DispatchRejected)
        assert info.value.task_name is None
    assert info.value.retry_after == pytest.approx(0.5)
    assert breaker.statistics().total_rejections == 4
    clock.advance(0.5)
    assert breaker.acquire() is not None
    assert breaker.state is BreakerState.HALF_OPEN


def test_reading_the_state_moves_open_to_half_open_lazily(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0, listeners=[recorder])
    trip(breaker)
    clock.advance(5.0)
    assert breaker.statistics().state is BreakerState.HALF_OPEN
    assert breaker.state is BreakerState.HALF_OPEN
    assert recorder.changes[-1] == StateChange(
        "broker", BreakerState.OPEN, BreakerState.HALF_OPEN, "reset timeout of 5 s elapsed", 1005.0
    )
    assert len(recorder.changes) == 2


def test_half_open_allows_only_max_calls_probes_at_once(clock: ManualClock) -> None:
    breaker = make(
        clock, failure_threshold=1, half_open_max_calls=2, slow_call_after=0.5, reset_timeout=5.0
    )
    trip(breaker)
    clock.advance(5.0)
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.retry_after == 0.5  # min(slow_call_after, reset_timeout)
    first.record_success(0.01)
    assert breaker.statistics().state is BreakerState.HALF_OPEN  # needs two successes
    third = breaker.acquire()
    second.record_success(0.01)
    assert breaker.statistics().state is BreakerState.CLOSED
    third.record_failure(0.01)  # a probe of a generation that has ended
    assert breaker.state is BreakerState.CLOSED


def test_a_probe_success_closes_it_and_clears_the_window(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(clock, failure_threshold=2, reset_timeout=5.0, listeners=[recorder])
    fail(breaker, 2)
    clock.advance(5.0)
    breaker.acquire().record_success(0.01)
    stats = breaker.statistics()
    assert stats.state is BreakerState.CLOSED
    assert (stats.window_calls, stats.consecutive_failures) == (0, 0)
    assert (stats.total_failures, stats.total_successes, stats.times_opened) == (2, 1, 1)
    assert recorder.transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert recorder.changes[-1].reason == "1 probe succeeded"


def test_a_slow_probe_success_still_closes_it(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, slow_call_after=1.0, reset_timeout=5.0)
    trip(breaker)
    clock.advance(5.0)
    breaker.acquire().record_success(30.0)
    assert breaker.state is BreakerState.CLOSED


def test_a_probe_failure_reopens_it_with_backoff_up_to_the_cap(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(
        clock,
        failure_threshold=1,
        reset_timeout=5.0,
        backoff_factor=2.0,
        max_reset_timeout=30.0,
        listeners=[recorder],
    )
    trip(breaker)
    timeouts = []
    for _ in range(5):
        timeout = breaker.statistics().current_reset_timeout
        timeouts.append(timeout)
        clock.advance(timeout - 0.001)
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
        clock.advance(0.001)
        breaker.acquire().record_failure(0.01)
        assert breaker.state is BreakerState.OPEN
    assert timeouts == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert breaker.statistics().times_opened == 6
    assert recorder.changes[2].reason == "probe failed; next probe in 10 s"


def test_the_backoff_resets_once_it_closes(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0, backoff_factor=3.0)
    trip(breaker)
    clock.advance(5.0)
    fail(breaker)  # the probe fails: 15 s
    assert breaker.statistics().current_reset_timeout == 15.0
    clock.advance(15.0)
    succeed(breaker)
    assert breaker.statistics().current_reset_timeout == 5.0
    trip(breaker)
    assert breaker.statistics().retry_after == 5.0


def test_release_frees_a_probe_slot_and_counts_nothing(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0)
    trip(breaker)
    clock.advance(5.0)
    before = breaker.statistics()
    breaker.acquire().release()
    probe = breaker.acquire()  # the slot is free again
    after = breaker.statistics()
    assert after.state is BreakerState.HALF_OPEN
    assert (after.total_successes, after.total_failures, after.window_calls) == (
        before.total_successes,
        before.total_failures,
        before.window_calls,
    )
    probe.record_success(0.01)
    assert breaker.state is BreakerState.CLOSED


def test_release_in_closed_counts_nothing(clock: ManualClock) -> None:
    breaker = make(clock)
    breaker.acquire().release()
    stats = breaker.statistics()
    assert (stats.window_calls, stats.total_successes, stats.total_failures) == (0, 0, 0)


# -- permits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [Permit.record_success, Permit.record_failure, Permit.release],
    ids=["success", "failure", "release"],
)
def test_only_the_first_outcome_of_a_permit_counts(
    clock: ManualClock, first: Callable[..., None]
) -> None:
    breaker = make(clock, failure_threshold=2)
    permit = breaker.acquire()
    if first is Permit.release:
        first(permit)
    else:
        first(permit, 0.01)
    snapshot = breaker.statistics()
    for _ in range(3):
        permit.record_failure(0.01)
        permit.record_success(0.01)
        permit.release()
    assert breaker.statistics() == snapshot
    assert breaker.state is BreakerState.CLOSED


def test_a_stale_slow_success_cannot_close_a_half_open_breaker(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0)
    old = breaker.acquire()  # issued while closed
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.acquire()
    old.record_success(6.0)
    stats = breaker.statistics()
    assert stats.state is BreakerState.HALF_OPEN
    assert stats.total_successes == 1  # counted in the totals all the same
    probe.record_success(0.01)
    assert breaker.state is BreakerState.CLOSED


def test_a_stale_failure_cannot_reopen_or_extend_an_open_breaker(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0)
    old = breaker.acquire()
    trip(breaker)
    clock.advance(2.0)
    old.record_failure(2.0)
    stats = breaker.statistics()
    assert (stats.state, stats.times_opened, stats.retry_after) == (BreakerState.OPEN, 1, 3.0)
    assert stats.total_failures == 2


def test_a_stale_failure_cannot_reopen_a_half_open_or_reclosed_breaker(
    clock: ManualClock,
) -> None:
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0)
    before_open = breaker.acquire()
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.acquire()
    before_open.record_failure(0.01)
    assert breaker.state is BreakerState.HALF_OPEN
    probe.record_success(0.01)
    stale_probe_sibling = breaker.acquire()  # a fresh closed permit: it does count
    stale_probe_sibling.record_success(0.01)
    assert breaker.statistics().window_calls == 1


# -- forced states and reset -------------------------------------------------------


def test_force_open_rejects_everything_with_the_reset_timeout_as_retry_after(
    clock: ManualClock,
) -> None:
    breaker = make(clock, reset_timeout=7.0)
    permit = breaker.acquire()
    breaker.force_open()
    clock.advance(3600.0)
    with pytest.raises(CircuitOpenError, match="forced open") as info:
        breaker.acquire()
    assert info.value.retry_after == 7.0
    permit.record_success(0.01)  # from before: counted, moves nothing
    stats = breaker.statistics()
    assert (stats.state, stats.total_successes, stats.total_rejections) == (
        BreakerState.FORCED_OPEN,
        1,
        1,
    )
    assert stats.retry_after == 7.0


def test_force_closed_counts_outcomes_but_never_trips(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, minimum_calls=1)
    breaker.force_closed()
    fail(breaker, 50)
    stats = breaker.statistics()
    assert stats.state is BreakerState.FORCED_CLOSED
    assert (stats.total_failures, stats.window_failures, stats.failure_rate) == (50, 50, 1.0)
    assert stats.times_opened == 0


def test_reset_leaves_forced_states_and_clears_everything(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(clock, failure_threshold=1, reset_timeout=5.0, listeners=[recorder])
    trip(breaker)
    clock.advance(5.0)
    fail(breaker)  # backoff to 10 s
    breaker.force_open()
    breaker.force_open()  # already there: no transition
    breaker.force_closed()
    breaker.reset()
    stats = breaker.statistics()
    assert stats.state is BreakerState.CLOSED
    assert stats == dataclasses.replace(
        stats,
        consecutive_failures=0,
        window_calls=0,
        total_successes=0,
        total_failures=0,
        total_rejections=0,
        times_opened=0,
        retry_after=0.0,
        current_reset_timeout=5.0,
    )
    assert recorder.transitions[-3:] == [
        (BreakerState.OPEN, BreakerState.FORCED_OPEN),
        (BreakerState.FORCED_OPEN, BreakerState.FORCED_CLOSED),
        (BreakerState.FORCED_CLOSED, BreakerState.CLOSED),
    ]
    assert [c.reason for c in recorder.changes[-3:]] == ["forced open", "forced closed", "reset"]
    breaker.reset()  # already closed: counters cleared, no transition
    assert len(recorder.changes) == 6


# -- statistics, listeners, logging ------------------------------------------------


def test_statistics_are_a_frozen_snapshot(clock: ManualClock) -> None:
    breaker = make(clock, name="redis-main")
    stats = breaker.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.state = BreakerState.OPEN  # type: ignore[misc]
    fail(breaker)
    assert stats.total_failures == 0
    assert (stats.name, breaker.name) == ("redis-main", "redis-main")
    assert repr(breaker) == "<CircuitBreaker 'redis-main' closed>"


def test_listeners_hear_every_transition_once_in_order(clock: ManualClock) -> None:
    first, second = Recorder(), Recorder()
    breaker = make(clock, name="b", failure_threshold=2, reset_timeout=5.0, listeners=[first])
    breaker.add_listener(second)
    fail(breaker, 2)
    clock.advance(5.0)
    succeed(breaker)
    assert (
        first.changes
        == second.changes
        == [
            StateChange(
                "b", BreakerState.CLOSED, BreakerState.OPEN, "2 consecutive failures", 1000.0
            ),
            StateChange(
                "b",
                BreakerState.OPEN,
                BreakerState.HALF_OPEN,
                "reset timeout of 5 s elapsed",
                1005.0,
            ),
            StateChange(
                "b", BreakerState.HALF_OPEN, BreakerState.CLOSED, "1 probe succeeded", 1005.0
            ),
        ]
    )
    breaker.remove_listener(second)
    breaker.force_open()
    assert len(first.changes) == 4
    assert len(second.changes) == 3
    with pytest.raises(ValueError):  # noqa: PT011 - list.remove semantics
        breaker.remove_listener(second)


def test_a_raising_listener_is_logged_and_isolated(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def state_changed(self, change: StateChange) -> None:
            raise RuntimeError("listener bug")

    after = Recorder()
    breaker = make(clock, failure_threshold=1, listeners=[Broken(), after])
    caplog.set_level(logging.INFO, logger=LOGGER)
    trip(breaker)
    breaker.reset()
    assert after.transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.CLOSED),
    ]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)


def test_a_listener_may_use_the_breaker_it_listens_to(clock: ManualClock) -> None:
    seen: list[BreakerState] = []

    class Reentrant:
        def state_changed(self, change: StateChange) -> None:
            seen.append(breaker.state)
            if change.new is BreakerState.OPEN:
                breaker.force_closed()  # a transition from inside a listener

    recorder = Recorder()
    breaker = make(clock, failure_threshold=1, listeners=[Reentrant(), recorder])
    fail(breaker)
    assert recorder.transitions == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.FORCED_CLOSED),
    ]
    assert seen == [BreakerState.OPEN, BreakerState.FORCED_CLOSED]


def test_each_transition_logs_exactly_once_and_rejections_never(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    breaker = make(clock, name="b", failure_threshold=1, reset_timeout=5.0)
    trip(breaker)
    for _ in range(100):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
    clock.advance(5.0)
    probe = breaker.acquire()
    for _ in range(10):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
    probe.record_success(0.01)
    breaker.force_open()
    for _ in range(10):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, vars(r)["old_state"], vars(r)["new_state"]) for r in records] == [
        (logging.WARNING, "closed", "open"),
        (logging.INFO, "open", "half_open"),
        (logging.INFO, "half_open", "closed"),
        (logging.WARNING, "closed", "forced_open"),
    ]
    assert {vars(r)["breaker"] for r in records} == {"b"}
    assert vars(records[0])["reason"] == "1 consecutive failures"
    assert records[0].getMessage() == "circuit breaker 'b': closed -> open (1 consecutive failures)"


# -- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("name", ""),
        ("failure_threshold", 0),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", 1.01),
        ("failure_rate_threshold", math.nan),
        ("slow_call_after", 0.0),
        ("slow_call_after", -1.0),
        ("slow_call_after", math.nan),
        ("slow_call_rate_threshold", 0),
        ("slow_call_rate_threshold", 1.5),
        ("minimum_calls", 0),
        ("minimum_calls", "20"),
        ("window_duration", 0.0),
        ("window_duration", math.inf),
        ("reset_timeout", -5.0),
        ("reset_timeout", math.inf),
        ("max_reset_timeout", math.inf),
        ("max_reset_timeout", 4.0),  # below the default reset_timeout of 5 s
        ("backoff_factor", 0.5),
        ("backoff_factor", math.inf),
        ("half_open_max_calls", 0),
        ("clock", 42),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(param: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{param} must be"):
        CircuitBreaker(**{param: value})  # type: ignore[arg-type]


def test_edge_values_are_accepted() -> None:
    breaker = CircuitBreaker(
        failure_threshold=1,
        failure_rate_threshold=1.0,
        slow_call_after=math.inf,
        slow_call_rate_threshold=1.0,
        minimum_calls=1,
        reset_timeout=5.0,
        max_reset_timeout=5.0,
        backoff_factor=1.0,
        half_open_max_calls=1,
    )
    breaker.acquire().record_success(1e9)  # nothing is slow
    assert breaker.statistics().window_slow_calls == 0


# -- concurrency and memory --------------------------------------------------------


def _hammer(breaker: CircuitBreaker, clock: ManualClock, threads: int, ops: int) -> list[int]:
    """Run ``threads`` workers doing random acquire/settle/advance; return
    [acquired, successes, failures, releases, rejections] summed over all of them."""
    barrier = threading.Barrier(threads)
    totals = [0] * 5
    totals_lock = threading.Lock()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine = [0] * 5
        try:
            barrier.wait(timeout=10)
            for _ in range(ops):
                if rng.random() < 0.05:
                    clock.advance(rng.random())
                try:
                    permit = breaker.acquire()
                except CircuitOpenError:
                    mine[4] += 1
                    continue
                mine[0] += 1
                roll = rng.random()
                if roll < 0.5:
                    permit.record_success(rng.random() * 2)
                    mine[1] += 1
                elif roll < 0.9:
                    permit.record_failure(0.01)
                    mine[2] += 1
                else:
                    permit.release()
                    mine[3] += 1
        except BaseException as exc:
            errors.append(exc)
        with totals_lock:
            for i, n in enumerate(mine):
                totals[i] += n

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert errors == []
    return totals


def test_concurrent_callers_keep_the_counts_consistent(clock: ManualClock) -> None:
    recorder = Recorder()
    breaker = make(
        clock,
        failure_threshold=3,
        minimum_calls=10,
        reset_timeout=0.5,
        max_reset_timeout=2.0,
        half_open_max_calls=2,
        listeners=[recorder],
    )
    acquired, successes, failures, releases, rejections = _hammer(breaker, clock, 8, 3000)
    stats = breaker.statistics()
    assert acquired == successes + failures + releases
    assert (stats.total_successes, stats.total_failures, stats.total_rejections) == (
        successes,
        failures,
        rejections,
    )
    assert rejections > 0
    assert stats.times_opened > 0
    # Listeners heard an unbroken chain of transitions, ending in the current state.
    chain = recorder.transitions
    assert chain[0][0] is BreakerState.CLOSED
    assert all(a[1] is b[0] for a, b in itertools.pairwise(chain))
    assert chain[-1][1] is stats.state
    opens = sum(1 for _, new in chain if new is BreakerState.OPEN)
    assert opens == stats.times_opened


def test_concurrent_callers_without_tripping_count_every_call(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=10**9, minimum_calls=10**9, window_duration=1e6)
    acquired, successes, failures, _, rejections = _hammer(breaker, clock, 8, 2000)
    stats = breaker.statistics()
    assert (acquired, rejections) == (16000, 0)
    assert stats.window_calls == stats.total_successes + stats.total_failures
    assert (stats.total_successes, stats.total_failures) == (successes, failures)


def test_the_window_memory_is_bounded_whatever_the_traffic(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=10**9, minimum_calls=10**9, window_duration=30.0)
    window = breaker._window
    for i in range(100_000):
        if i % 100 == 0:
            clock.advance(0.1)  # 100 s in all: more than three windows
        breaker.acquire().record_success(0.01)
    stats = breaker.statistics()
    assert stats.total_successes == 100_000
    assert 29_000 <= stats.window_calls <= 30_000
    assert len(window._calls) == len(window._failures) == len(window._slow) == WINDOW_BUCKETS


# -- property test -----------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random acquire/settle/advance/force sequences checked against a small model."""

    MAX_PROBES = 2
    RESET, FACTOR, CAP = 1.0, 2.0, 5.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.breaker = CircuitBreaker(
            failure_threshold=3,
            minimum_calls=4,
            window_duration=10.0,
            slow_call_after=1.0,
            reset_timeout=self.RESET,
            backoff_factor=self.FACTOR,
            max_reset_timeout=self.CAP,
            half_open_max_calls=self.MAX_PROBES,
            clock=self.clock,
            listeners=[self],
        )
        self.model_state = BreakerState.CLOSED
        self.model_timeout = self.RESET
        self.deadline = 0.0
        self.permits: list[Permit] = []
        self.live: set[int] = set()  # ids of unsettled permits of the current generation
        self.settling_live = False
        self.listener_failures: list[AssertionError] = []
        self.changes = 0

    def state_changed(self, change: StateChange) -> None:
        # The breaker logs and swallows listener exceptions, so keep failures for later.
        try:
            self._follow(change)
        except AssertionError as exc:
            self.listener_failures.append(exc)

    def _follow(self, change: StateChange) -> None:
        assert change.old is self.model_state
        if change.reason not in ("forced open", "forced closed", "reset") and (
            change.old is not BreakerState.OPEN
        ):
            # An outcome moved the state: it must come from a current-generation permit.
            assert self.settling_live, change
        if change.new is BreakerState.OPEN:
            if change.old is BreakerState.HALF_OPEN:
                self.model_timeout = min(self.model_timeout * self.FACTOR, self.CAP)
            self.deadline = change.at + self.model_timeout
        elif change.new is BreakerState.CLOSED:
            self.model_timeout = self.RESET
        self.model_state = change.new
        self.live.clear()  # every transition makes outstanding permits stale
        self.changes += 1

    @rule()
    def acquire(self) -> None:
        now = self.clock()
        state = self.model_state
        if state is BreakerState.OPEN and now < self.deadline:
            with pytest.raises(CircuitOpenError) as info:
                self.breaker.acquire()
            assert info.value.retry_after == pytest.approx(self.deadline - now)
            return
        if state is BreakerState.FORCED_OPEN or (
            state is BreakerState.HALF_OPEN and len(self.live) >= self.MAX_PROBES
        ):
            with pytest.raises(CircuitOpenError):
                self.breaker.acquire()
            return
        permit = self.breaker.acquire()
        self.permits.append(permit)
        self.live.add(id(permit))

    @precondition(lambda self: self.permits)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "failure", "release"]),
        duration=st.sampled_from([0.0, 0.5, 2.0]),
        keep=st.booleans(),
    )
    def settle(self, data: st.DataObject, outcome: str, duration: float, keep: bool) -> None:
        index = data.draw(st.integers(0, len(self.permits) - 1))
        permit = self.permits[index] if keep else self.permits.pop(index)
        self.settling_live = id(permit) in self.live
        self.live.discard(id(permit))
        try:
            if outcome == "success":
                permit.record_success(duration)
            elif outcome == "failure":
                permit.record_failure(duration)
            else:
                permit.release()
        finally:
            self.settling_live = False

    @rule(seconds=st.sampled_from([0.0, 0.1, 0.25, 0.9, 1.0, 3.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "force_closed", "reset"]), roll=st.integers(0, 9))
    def operator(self, action: str, roll: int) -> None:
        if roll:  # act one time in ten, or forced states would crowd out everything else
            return
        getattr(self.breaker, action)()
        if action == "reset":
            self.model_timeout = self.RESET

    @invariant()
    def state_matches_the_model(self) -> None:
        assert self.listener_failures == []
        stats = self.breaker.statistics()  # may apply a due OPEN -> HALF_OPEN move
        assert stats.state is self.model_state
        assert isinstance(stats.state, BreakerState)
        if stats.state is BreakerState.HALF_OPEN:
            assert len(self.live) <= self.MAX_PROBES
        assert stats.current_reset_timeout == self.model_timeout
        assert 0 <= stats.window_failures <= stats.window_calls
        assert 0 <= stats.window_slow_calls <= stats.window_calls
        assert 0.0 <= stats.failure_rate <= 1.0
        if stats.state is BreakerState.CLOSED:
            assert stats.consecutive_failures < 3
        if stats.state is BreakerState.OPEN:
            assert 0.0 < stats.retry_after <= self.model_timeout + 1e-9  # float rounding
        assert stats.times_opened <= self.changes


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
