"""The recovery probe with a recording wire and a real circuit breaker."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from celery import Celery

from aceleryctl.breaker import BreakerState, CircuitBreaker, StateChange
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.dispatch.recovery import RecoveryProbe
from aceleryctl.dispatch.runner import BatchRunner
from aceleryctl.wires.base import Wire, WireOutcome
from tests._support.waiting import wait_until

WAIT = 10.0


class RecordingWire(Wire):
    """Answers probes from a script of outcomes; records every probe and release."""

    name = "recording"

    def __init__(self, answers: Sequence[bool]) -> None:
        super().__init__(Celery("recovery", broker="memory://", set_as_current=False))
        self.answers = list(answers)
        self.probes: list[tuple[str, float]] = []
        self.released: list[str] = []

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        raise AssertionError("the probe never publishes")

    def probe(self, deadline: float) -> WireOutcome:
        self.probes.append((threading.current_thread().name, deadline))
        if self.answers.pop(0) if self.answers else True:
            return WireOutcome(DispatchOutcome.SENT, path=self.name)
        return WireOutcome(
            DispatchOutcome.NOT_SENT, error=ConnectionRefusedError(111, "refused"), path=self.name
        )

    def release_thread(self) -> None:
        self.released.append(threading.current_thread().name)


class Changes:
    def __init__(self) -> None:
        self.seen: list[StateChange] = []

    def state_changed(self, change: StateChange) -> None:
        self.seen.append(change)


def open_breaker(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    permit.record_failure(0.01)
    assert breaker.state is BreakerState.OPEN


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=1, reset_timeout=600.0, max_reset_timeout=600.0)


def test_an_answer_ends_open_long_before_the_reset_timeout(breaker: CircuitBreaker) -> None:
    wire = RecordingWire([False, False, True])
    probe = RecoveryProbe(wire, breaker, interval=0.01)
    changes = Changes()
    breaker.add_listener(probe)  # as the engine forwards its breaker's changes
    breaker.add_listener(changes)
    open_breaker(breaker)
    wait_until(lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="half-open")
    wait_until(lambda: not probe.statistics()["running"], timeout=WAIT, message="probe stopped")
    assert [name for name, _ in wire.probes] == ["aceleryctl-recovery-probe"] * 3
    assert wire.released == ["aceleryctl-recovery-probe"]  # its connection, on its thread
    stats = probe.statistics()
    assert (stats["probes"], stats["answered"]) == (3, 1)
    assert stats["last_error"] == "ConnectionRefusedError: [Errno 111] refused"
    assert changes.seen[-1].reason == "a background probe reached the broker"
    # The trial calls close it, as after a reset timeout.
    for _ in range(breaker.statistics().window_calls + 1):
        permit = breaker.acquire()
        permit.record_success(0.001)
        if breaker.state is BreakerState.CLOSED:
            break
    assert breaker.state is BreakerState.CLOSED


def test_a_probe_never_blocks_past_its_timeout(breaker: CircuitBreaker) -> None:
    wire = RecordingWire([True])
    probe = RecoveryProbe(wire, breaker, timeout=30.0, interval=0.01, clock=lambda: 100.0)
    probe.state_changed(StateChange("b", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0))
    open_breaker(breaker)
    wait_until(lambda: wire.probes, timeout=WAIT, message="a probe")
    assert wire.probes[0][1] == 101.0  # capped at one second


def test_forced_open_is_left_alone(breaker: CircuitBreaker) -> None:
    wire = RecordingWire([True])
    probe = RecoveryProbe(wire, breaker, interval=0.01)
    breaker.add_listener(probe)
    breaker.force_open()
    assert probe.statistics()["running"] is False
    assert breaker.probe_succeeded() is False
    assert breaker.state is BreakerState.FORCED_OPEN


def test_probe_succeeded_moves_only_an_open_breaker(breaker: CircuitBreaker) -> None:
    assert breaker.probe_succeeded() is False
    open_breaker(breaker)
    assert breaker.probe_succeeded() is True
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.probe_succeeded() is False


def test_close_stops_the_thread(breaker: CircuitBreaker) -> None:
    wire = RecordingWire([False] * 10_000)
    probe = RecoveryProbe(wire, breaker, interval=0.01)
    breaker.add_listener(probe)
    open_breaker(breaker)
    wait_until(lambda: len(wire.probes) >= 2, timeout=WAIT, message="probing")
    probe.close()
    wait_until(lambda: not probe.statistics()["running"], timeout=WAIT, message="stopped")
    assert breaker.state is BreakerState.OPEN
    assert wire.released == ["aceleryctl-recovery-probe"]
    count = len(wire.probes)
    probe.state_changed(StateChange("b", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0))
    assert probe.statistics()["running"] is False  # closed: no new thread
    assert len(wire.probes) == count


def test_a_wire_that_raises_does_not_kill_the_probe(breaker: CircuitBreaker) -> None:
    class Raising(RecordingWire):
        def probe(self, deadline: float) -> WireOutcome:
            self.probes.append(("x", deadline))
            if len(self.probes) < 3:
                raise OSError("wire bug")
            return WireOutcome(DispatchOutcome.SENT, path=self.name)

    wire: Any = Raising([])
    probe = RecoveryProbe(wire, breaker, interval=0.01)
    breaker.add_listener(probe)
    open_breaker(breaker)
    wait_until(lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="half-open")
    assert probe.statistics()["last_error"] == "OSError: wire bug"


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aceleryctl-recovery-probe"]


def test_a_prepared_thread_is_woken_by_the_opening_not_started_by_it(
    breaker: CircuitBreaker,
) -> None:
    # Starting a thread waits until it runs: on a loaded machine that held the
    # event loop (where the breaker opens) for up to 75 ms. A publishing thread
    # readies it first; the opening then starts nothing.
    wire = RecordingWire([False, True])
    probe = RecoveryProbe(wire, breaker, interval=0.01, linger=WAIT)
    breaker.add_listener(probe)
    try:
        before = set(probe_threads())
        probe.prepare()
        prepared = set(probe_threads()) - before
        assert len(prepared) == 1
        assert probe.statistics()["running"] is False  # ready, not probing
        assert wire.probes == []
        started = threading.Thread.start
        starts: list[str] = []

        def recording_start(thread: threading.Thread) -> None:
            starts.append(thread.name)
            started(thread)

        threading.Thread.start = recording_start  # type: ignore[method-assign]
        try:
            open_breaker(breaker)
        finally:
            threading.Thread.start = started  # type: ignore[method-assign]
        assert starts == []
        wait_until(
            lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="half-open"
        )
        assert {name for name, _ in wire.probes} == {"aceleryctl-recovery-probe"}
        assert set(probe_threads()) - before == prepared  # the same thread probed
        wait_until(lambda: not probe.statistics()["running"], timeout=WAIT, message="stopped")
        assert wire.released == ["aceleryctl-recovery-probe"]
    finally:
        probe.close()
    wait_until(lambda: not set(probe_threads()) - before, timeout=WAIT, message="thread ended")


def test_an_idle_thread_ends_after_its_linger_and_a_later_opening_starts_one(
    breaker: CircuitBreaker,
) -> None:
    wire = RecordingWire([True])
    probe = RecoveryProbe(wire, breaker, interval=0.01, linger=0.05)
    breaker.add_listener(probe)
    before = set(probe_threads())
    probe.prepare()
    wait_until(lambda: not set(probe_threads()) - before, timeout=WAIT, message="thread ended")
    assert wire.probes == []  # the breaker never opened
    open_breaker(breaker)  # no prepared thread: the opening starts one
    wait_until(lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="half-open")
    wait_until(lambda: not set(probe_threads()) - before, timeout=WAIT, message="thread ended")
    probe.close()


def test_a_failed_trial_opens_again_and_the_same_thread_probes_again(
    breaker: CircuitBreaker,
) -> None:
    wire = RecordingWire([True, True])
    probe = RecoveryProbe(wire, breaker, interval=0.01, linger=WAIT)
    breaker.add_listener(probe)
    before = set(probe_threads())
    try:
        open_breaker(breaker)
        wait_until(lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="1st")
        threads = set(probe_threads()) - before
        permit = breaker.acquire()  # the trial call fails: open again
        permit.record_failure(0.01)
        assert breaker.state is BreakerState.OPEN
        wait_until(lambda: breaker.state is BreakerState.HALF_OPEN, timeout=WAIT, message="2nd")
        assert set(probe_threads()) - before == threads
        assert len(wire.probes) == 2
    finally:
        probe.close()
    wait_until(lambda: not set(probe_threads()) - before, timeout=WAIT, message="thread ended")


def test_the_batch_runner_reports_a_broker_fault_on_the_publishing_thread() -> None:
    class Failing(RecordingWire):
        def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
            error = OSError("reset")
            faulted = WireOutcome(DispatchOutcome.UNKNOWN, error=error, broker_fault=True)
            return [
                faulted if a.task_id == "bad" else WireOutcome(DispatchOutcome.SENT)
                for a in attempts
            ]

    calls: list[str] = []
    runner = BatchRunner(Failing([]), lambda: 0.0, broker_fault=lambda: calls.append("fault"))
    runner.publish([attempt("ok")])
    assert calls == []
    runner.publish([attempt("ok"), attempt("bad")])
    assert calls == ["fault"]  # once per batch


def attempt(task_id: str) -> Attempt:
    dispatch = Dispatch(
        DispatchKind.TASK,
        task_name="proj.t",
        task_id=task_id,
        args=(),
        kwargs={},
        options={},
        timeout=1.0,
        method="delay",
        by_name=True,
    )
    return Attempt(dispatch, deadline=1.0, queued_at=0.0, task_id=task_id)
