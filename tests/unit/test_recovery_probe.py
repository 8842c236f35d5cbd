"""The recovery probe with a recording wire and a real circuit breaker."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from celery import Celery

from aceleryctl.breaker import BreakerState, CircuitBreaker, StateChange
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt
from aceleryctl.dispatch.recovery import RecoveryProbe
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
