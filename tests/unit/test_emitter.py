"""The emitter: never blocks or fails its caller; bounded, counted, logged once, fork-safe."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from aceleryctl.events import STATE_OF_TYPE, Phase, TaskEvent, group_name, order_key
from aceleryctl.worker.emitter import Emitter
from tests._support.waiting import wait_until

TIMEOUT = 10.0  # seconds: a generous bound for anything that should take milliseconds


def event(n: int, task_id: str = "task-1") -> TaskEvent:
    return TaskEvent(
        type="task.started",
        task_id=task_id,
        task_name="t",
        state=STATE_OF_TYPE["task.started"],
        timestamp=time.time(),
        order=order_key(n, Phase.STARTED),
    )


class FakeLayer:
    """Records group_send calls; can hold them at a gate, hang, or fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[str] = set()
        self.loops: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.hang = False
        self.error: BaseException | None = None

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.threads.add(threading.current_thread().name)
        self.loops.add(id(asyncio.get_running_loop()))
        self.entered.set()
        if not self.gate.is_set():
            await asyncio.to_thread(self.gate.wait, TIMEOUT)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        self.sent.append((group, message))

    def orders(self) -> list[int]:
        return [m["event"]["order"] for _, m in self.sent]


@pytest.fixture
def layer() -> FakeLayer:
    return FakeLayer()


@pytest.fixture
def make_emitter(layer: FakeLayer) -> Iterator[Any]:
    made: list[Emitter] = []

    def make(**kwargs: Any) -> Emitter:
        emitter = Emitter(kwargs.pop("factory", lambda: layer), **kwargs)
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        layer.gate.set()
        layer.hang = False
        assert emitter.close(TIMEOUT), "the emitter thread did not stop"


def test_events_are_sent_in_order_on_the_emitter_thread(
    layer: FakeLayer, make_emitter: Any
) -> None:
    emitter = make_emitter()
    for n in range(50):
        assert emitter.emit(event(n))
    assert emitter.flush(TIMEOUT)
    assert layer.orders() == [order_key(n, Phase.STARTED) for n in range(50)]
    assert {group for group, _ in layer.sent} == {group_name("task-1")}
    assert layer.sent[0][1] == event(0).to_layer_message() | {"event": layer.sent[0][1]["event"]}
    assert layer.threads == {"aceleryctl-events"}
    assert len(layer.loops) == 1
    stats = emitter.statistics()
    assert (stats.accepted, stats.sent, stats.queued, stats.pid) == (50, 50, 0, os.getpid())


def test_emit_returns_at_once_while_the_layer_is_stuck(layer: FakeLayer, make_emitter: Any) -> None:
    emitter = make_emitter(max_queue=10_000)
    layer.gate.clear()
    emitter.emit(event(0))
    assert layer.entered.wait(TIMEOUT)
    durations = []
    for n in range(1, 2001):
        started = time.perf_counter()
        emitter.emit(event(n))
        durations.append(time.perf_counter() - started)
    durations.sort()
    assert durations[len(durations) // 2] < 100e-6, "emit should cost microseconds"
    assert emitter.statistics().queued == 2000
    layer.gate.set()
    assert emitter.flush(TIMEOUT)
    assert len(layer.sent) == 2001


def test_a_full_queue_drops_the_oldest_counts_and_warns_once_per_burst(
    layer: FakeLayer, make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")
    emitter = make_emitter(max_queue=5)
    layer.gate.clear()
    emitter.emit(event(0))  # in flight, held at the gate
    assert layer.entered.wait(TIMEOUT)
    for n in range(1, 13):
        emitter.emit(event(n))
    assert emitter.statistics().dropped_full == 7
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1
    layer.gate.set()
    assert emitter.flush(TIMEOUT)
    assert layer.orders() == [order_key(n, Phase.STARTED) for n in (0, 8, 9, 10, 11, 12)]
    wait_until(
        lambda: any("dropped 7 events" in r.getMessage() for r in caplog.records),
        timeout=TIMEOUT,
        message="the end of the burst was not reported",
    )
    # A new burst warns again.
    layer.gate.clear()
    layer.entered.clear()
    emitter.emit(event(20))
    assert layer.entered.wait(TIMEOUT)
    for n in range(21, 28):
        emitter.emit(event(n))
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 2


def test_a_hanging_layer_times_out_per_event_and_is_logged_once(
    layer: FakeLayer, make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aceleryctl.emitter")
    emitter = make_emitter(send_timeout=0.05)
    layer.hang = True
    started = time.monotonic()
    for n in range(3):
        emitter.emit(event(n))
    assert time.monotonic() - started < 0.05, "emit waited for the layer"
    assert emitter.flush(TIMEOUT)
    assert emitter.statistics().timed_out == 3
    assert len([r for r in caplog.records if "took longer than" in r.getMessage()]) == 1
    layer.hang = False
    emitter.emit(event(3))
    assert emitter.flush(TIMEOUT)
    assert emitter.statistics().sent == 1
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_failing_layer_is_counted_and_logged_once_without_credentials(
    layer: FakeLayer, make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")
    emitter = make_emitter()
    layer.error = ConnectionError("Error connecting to redis://:s3cret@cache:6379/5")
    for n in range(4):
        emitter.emit(event(n))
    assert emitter.flush(TIMEOUT)
    assert emitter.statistics().failed == 4
    failures = [r.getMessage() for r in caplog.records if "group_send failed" in r.getMessage()]
    assert len(failures) == 1
    assert "s3cret" not in failures[0]
    assert "ConnectionError" in failures[0]


def test_without_a_layer_events_are_dropped_and_counted(
    make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")
    emitter = make_emitter(factory=lambda: None)
    emitter.emit(event(0))
    emitter.emit(event(1))
    assert emitter.flush(TIMEOUT)
    assert emitter.statistics().dropped_no_layer == 2
    assert len([r for r in caplog.records if "no channel layer" in r.getMessage()]) == 1


def test_a_factory_that_raises_counts_as_no_layer(
    make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")

    def broken() -> None:
        raise RuntimeError("settings are not configured")

    emitter = make_emitter(factory=broken)
    emitter.emit(event(0))
    assert emitter.flush(TIMEOUT)
    assert emitter.statistics().dropped_no_layer == 1
    assert any("could not get a channel layer" in r.getMessage() for r in caplog.records)


def test_a_task_id_that_cannot_name_a_group_is_dropped(layer: FakeLayer, make_emitter: Any) -> None:
    emitter = make_emitter()
    emitter.emit(event(0, task_id="has spaces"))
    emitter.emit(event(1))
    assert emitter.flush(TIMEOUT)
    stats = emitter.statistics()
    assert (stats.dropped_invalid, stats.sent) == (1, 1)


def test_close_sends_what_is_queued_stops_the_thread_and_refuses_more(
    layer: FakeLayer, make_emitter: Any
) -> None:
    emitter = make_emitter()
    for n in range(20):
        emitter.emit(event(n))
    assert emitter.close(TIMEOUT)
    assert len(layer.sent) == 20
    assert not emitter.emit(event(99))
    assert emitter.statistics().dropped_closed == 1
    assert emitter.closed
    assert emitter.close(TIMEOUT)  # idempotent


def test_close_is_bounded_when_the_layer_hangs(layer: FakeLayer, make_emitter: Any) -> None:
    emitter = make_emitter(send_timeout=0.5)
    layer.hang = True
    for n in range(10):
        emitter.emit(event(n))
    started = time.monotonic()
    assert not emitter.close(0.2)
    assert time.monotonic() - started < 1.0
    layer.hang = False


def test_scheduled_callbacks_run_on_the_emitter_thread_and_their_event_is_sent(
    layer: FakeLayer, make_emitter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = make_emitter()
    ran_on: list[str] = []

    def due() -> TaskEvent:
        ran_on.append(threading.current_thread().name)
        return event(7)

    def nothing() -> None:
        return None

    def broken() -> None:
        raise RuntimeError("timer bug")

    now = time.monotonic()
    emitter.schedule(now + 0.02, nothing)
    emitter.schedule(now + 0.02, broken)
    emitter.schedule(now + 0.05, due)
    wait_until(lambda: layer.sent, timeout=TIMEOUT, message="the timer's event never came")
    assert ran_on == ["aceleryctl-events"]
    assert layer.orders() == [order_key(7, Phase.STARTED)]
    assert any("timer raised" in r.getMessage() for r in caplog.records)


def test_validation() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        Emitter(lambda: None, max_queue=0)
    with pytest.raises(ValueError, match="send_timeout"):
        Emitter(lambda: None, send_timeout=0)


def test_a_forked_child_gets_a_fresh_emitter_of_its_own(
    layer: FakeLayer, make_emitter: Any
) -> None:
    emitter = make_emitter()
    emitter.emit(event(0))
    assert emitter.flush(TIMEOUT)
    layer.gate.clear()  # the parent's next send is stuck at fork time
    emitter.emit(event(1))
    assert layer.entered.wait(TIMEOUT)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns that forking a multi-threaded process may deadlock; that
        # is the situation a prefork pool creates, and the one under test here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe and leave without cleanup
        code = 1
        try:
            layer.gate.set()  # the inherited gate is this process's copy
            layer.sent.clear()
            emitter.emit(event(2))
            flushed = emitter.flush(TIMEOUT)
            stats = emitter.statistics()
            report = f"{flushed} {stats.pid} {stats.accepted} {stats.sent} {layer.orders()}"
            os.write(write_end, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0, report
    flushed, child_pid, accepted, sent, orders = report.split(" ", 4)
    assert flushed == "True"
    assert int(child_pid) == pid
    assert (accepted, sent) == ("1", "1"), "the child re-sent the parent's queue"
    assert orders == str([order_key(2, Phase.STARTED)])
    layer.gate.set()
    assert emitter.flush(TIMEOUT)
    assert layer.orders() == [order_key(n, Phase.STARTED) for n in (0, 1)]
