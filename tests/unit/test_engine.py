"""DispatchEngine: error mapping, breaker bookkeeping, deadlines, logging, listeners.

The wire is a recording fake that runs each dispatch's callable as its publish
(no broker) and records every batch it is handed; the breaker is a recording
fake whose calls are asserted on in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kombu.exceptions
import pytest
from celery import Celery, current_app
from celery.result import AsyncResult

from aceleryctl._logging import Redactor
from aceleryctl.breaker import BreakerState, BreakerStatistics
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.listener import DispatchOutcome, PoolChange
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.exceptions import (
    BrokerError,
    CircuitOpenError,
    ControllerClosed,
    DispatchOverloaded,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
)
from aceleryctl.testing import ManualClock
from aceleryctl.wires.base import Wire, WireOutcome
from aceleryctl.wires.connections import classify_failure
from tests._support.waiting import wait_until

WAIT = 10.0


class RecordingPermit:
    def __init__(self, log: list[tuple[str, float | None]]) -> None:
        self._log = log

    def record_success(self, duration: float) -> None:
        self._log.append(("success", duration))

    def record_failure(self, duration: float) -> None:
        self._log.append(("failure", duration))

    def release(self) -> None:
        self._log.append(("release", None))


class RecordingBreaker:
    """Implements the breaker interface the engine uses, recording every call."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float | None]] = []
        self.open_for: float | None = None
        self.listeners: list[Any] = []

    def acquire(self) -> RecordingPermit:
        if self.open_for is not None:
            self.log.append(("rejected", None))
            raise CircuitOpenError("open", retry_after=self.open_for)
        self.log.append(("acquire", None))
        return RecordingPermit(self.log)

    @property
    def state(self) -> BreakerState:
        return BreakerState.CLOSED if self.open_for is None else BreakerState.OPEN

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            "fake", BreakerState.CLOSED, 0, 0, 0, 0, 0.0, 0.0, 0, 0, 0, 0, 0.0, 1.0
        )

    def events(self) -> list[str]:
        return [name for name, _ in self.log]

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)


class CallingWire(Wire):
    """A fake wire: each dispatch's ``target`` is its publish; records every batch."""

    name = "fake"

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        self.batches_seen: list[list[str | None]] = []

    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        self.batches_seen.append([a.task_id for a in attempts])
        outcomes = []
        for attempt in attempts:
            try:
                value = attempt.run(attempt.dispatch.target)
            except BaseException as exc:
                outcomes.append(classify_failure(exc, self.name))
            else:
                outcomes.append(WireOutcome(DispatchOutcome.SENT, value, path=self.name))
        return outcomes

    def probe(self, deadline: float) -> WireOutcome:
        return WireOutcome(DispatchOutcome.SENT, path=self.name)


@pytest.fixture
def app() -> Celery:
    return Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)


@pytest.fixture
def breaker() -> RecordingBreaker:
    return RecordingBreaker()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(50.0)


@pytest.fixture
def engine(app: Celery, breaker: RecordingBreaker, clock: ManualClock) -> Iterator[DispatchEngine]:
    # A manual clock: no deadline passes unless a test advances it.
    e = DispatchEngine(
        app,
        CallingWire(app),
        max_workers=1,
        max_pending=2,
        breaker=breaker,  # type: ignore[arg-type]
        redactor=Redactor(),
        clock=clock,
    )
    yield e
    e.close(WAIT)


def make_call(publish: Callable[[], Any], *, timeout: float = WAIT, **kw: Any) -> Dispatch:
    return Dispatch(
        DispatchKind.TASK,
        task_name=kw.get("task_name", "proj.tasks.t"),
        task_id=kw.get("task_id", "id-1"),
        args=kw.get("args", (1,)),
        kwargs=kw.get("kwargs", {}),
        options={},
        timeout=timeout,
        method=kw.get("method", "delay"),
        by_name=True,
        target=publish,
    )


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aceleryctl.controller"]


async def test_success_rebuilds_result_and_records_success(
    engine: DispatchEngine, app: Celery, breaker: RecordingBreaker
) -> None:
    other = Celery("other", broker="memory://", set_as_current=False)
    result = await engine.run_async(make_call(lambda: other.AsyncResult("abc")))
    assert isinstance(result, AsyncResult)
    assert result.id == "abc"
    assert result.app is app  # rebuilt for this thread, against the engine's app
    assert breaker.events() == ["acquire", "success"]
    duration = breaker.log[1][1]
    assert duration is not None
    assert duration >= 0
    assert engine.statistics().dispatched == 1


async def test_a_caller_that_reads_no_result_gets_true_unless_a_parent_needs_one(
    engine: DispatchEngine, app: Celery, breaker: RecordingBreaker
) -> None:
    # result=False (the Django Tasks backend): no result object is made ...
    made: list[str] = []
    other = Celery("other", broker="memory://", set_as_current=False)

    def publish() -> AsyncResult:
        made.append("publish")
        return other.AsyncResult("abc")

    assert await engine.run_async(make_call(publish), result=False) is True
    assert breaker.events() == ["acquire", "success"]
    assert engine.statistics().dispatched == 1

    # ... except for a parent task, whose trail records its children's results.
    class Parent:
        def __init__(self) -> None:
            self.trail: list[Any] = []

        def add_trail(self, result: Any) -> None:
            self.trail.append(result)

    parent = Parent()
    kept = await engine.run_async(make_call(publish), parent, result=False)
    assert isinstance(kept, AsyncResult)
    assert kept.id == "abc"
    assert parent.trail == [kept]
    assert made == ["publish", "publish"]


def test_sync_path_is_the_same(engine: DispatchEngine, breaker: RecordingBreaker) -> None:
    assert engine.run_sync(make_call(lambda: "plain value")) == "plain value"
    assert breaker.events() == ["acquire", "success"]


async def test_pool_threads_publish_with_the_engine_app(
    engine: DispatchEngine, app: Celery
) -> None:
    seen = await engine.run_async(make_call(lambda: current_app._get_current_object()))
    assert seen is app


@pytest.mark.parametrize(
    ("raised", "expected", "breaker_event"),
    [
        (kombu.exceptions.EncodeError("bad"), TaskSerializationError, "release"),
        (kombu.exceptions.OperationalError("refused"), BrokerError, "failure"),
        (ConnectionRefusedError(111, "refused"), BrokerError, "failure"),
        (ValueError("caller bug"), TaskDispatchError, "release"),
    ],
)
async def test_exceptions_are_mapped_and_only_broker_faults_count(
    engine: DispatchEngine,
    breaker: RecordingBreaker,
    caplog: pytest.LogCaptureFixture,
    raised: Exception,
    expected: type[TaskDispatchError],
    breaker_event: str,
) -> None:
    def publish() -> None:
        raise raised

    with pytest.raises(expected) as info:
        # Refusals are retried until shortly before the deadline: keep it short.
        await engine.run_async(make_call(publish, timeout=0.5))
    assert type(info.value) is expected
    if isinstance(info.value, BrokerError):
        refused = isinstance(raised, ConnectionRefusedError)
        assert info.value.message_may_exist is not refused
        assert ("nothing was sent" in str(info.value)) is refused
    assert info.value.__cause__ is raised
    assert info.value.task_name == "proj.tasks.t"
    assert info.value.task_id == "id-1"
    assert breaker.events() == ["acquire", breaker_event]
    [record] = failure_records(caplog)
    assert record.error_type == expected.__name__  # type: ignore[attr-defined]
    assert record.task_id == "id-1"  # type: ignore[attr-defined]


async def test_deadline_mid_publish_is_unknown_outcome(
    engine: DispatchEngine,
    breaker: RecordingBreaker,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, release = threading.Event(), threading.Event()

    def hang() -> str:
        started.set()
        release.wait(WAIT)
        return "late"

    waiting = asyncio.ensure_future(
        engine.run_async(make_call(hang, timeout=0.05, task_id="tid-9"))
    )
    assert await asyncio.to_thread(started.wait, WAIT)
    clock.advance(0.05)
    with pytest.raises(DispatchTimeout) as info:
        await asyncio.wait_for(waiting, WAIT)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert (err.task_id, err.timeout) == ("tid-9", 0.05)
    assert "outcome is unknown" in str(err)
    assert breaker.events() == ["acquire", "failure"]
    [record] = failure_records(caplog)
    assert record.outcome == "unknown"  # type: ignore[attr-defined]
    release.set()
    engine.pool.submit(lambda: None).result(WAIT)  # the late publish finished before this
    stats = engine.statistics()
    assert (stats.timed_out, stats.late_completions) == (1, 1)


async def test_no_thread_before_deadline_means_nothing_sent(
    engine: DispatchEngine, breaker: RecordingBreaker, clock: ManualClock
) -> None:
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(WAIT)

    engine.pool.submit(block)
    assert started.wait(WAIT)
    ran: list[str] = []
    waiting = asyncio.ensure_future(
        engine.run_async(make_call(lambda: ran.append("x"), timeout=0.05))
    )
    await asyncio.sleep(0)  # one loop turn: the call is queued behind the blocker
    clock.advance(0.05)
    with pytest.raises(DispatchOverloaded, match="nothing was sent"):
        await asyncio.wait_for(waiting, WAIT)
    release.set()
    engine.pool.submit(lambda: None).result(WAIT)
    assert ran == []
    assert breaker.events() == ["acquire", "release"]
    assert engine.statistics().overloaded == 1


async def test_full_queue_is_refused_without_waiting(
    engine: DispatchEngine, breaker: RecordingBreaker
) -> None:
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(WAIT)

    engine.pool.submit(block)
    assert started.wait(WAIT)
    engine.pool.submit(lambda: None)
    engine.pool.submit(lambda: None)  # max_pending=2 now reached
    with pytest.raises(DispatchOverloaded, match="max_pending=2"):
        await engine.run_async(make_call(lambda: None))
    assert breaker.events() == ["acquire", "release"]
    release.set()


async def test_open_breaker_rejects_without_thread_or_log(
    engine: DispatchEngine, breaker: RecordingBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    breaker.open_for = 3.5
    with pytest.raises(CircuitOpenError) as info:
        await engine.run_async(make_call(lambda: None, task_name="proj.x", task_id="t1"))
    assert (info.value.retry_after, info.value.task_name, info.value.task_id) == (
        3.5,
        "proj.x",
        "t1",
    )
    assert engine.pool.statistics().submitted == 0
    assert failure_records(caplog) == []
    assert engine.statistics().rejected_open == 1


async def test_closed_engine_refuses(engine: DispatchEngine, breaker: RecordingBreaker) -> None:
    assert engine.close(WAIT)
    with pytest.raises(ControllerClosed, match="closed"):
        await engine.run_async(make_call(lambda: None))
    assert breaker.events() == ["acquire", "release"]


def test_detached_publish_logs_its_failure(
    engine: DispatchEngine, breaker: RecordingBreaker, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()

    def publish() -> None:
        try:
            raise kombu.exceptions.OperationalError("down")
        finally:
            done.set()

    engine.submit_detached(make_call(publish, method="delay_on_commit"))
    assert done.wait(WAIT)
    engine.close(WAIT)  # the failure callback ran before the drain completed
    [record] = failure_records(caplog)
    assert record.dispatch_method == "delay_on_commit"  # type: ignore[attr-defined]
    assert breaker.events() == ["acquire", "failure"]


async def test_planted_secret_never_reaches_a_log_record(
    engine: DispatchEngine, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-value-7f1c"

    def publish() -> None:
        raise kombu.exceptions.OperationalError("broker down")

    call = make_call(
        publish,
        args=({"api_token": secret, "nested": [{"password": secret}]},),
        kwargs={"session_cookie": secret, "note": "fine"},
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerError):
        await engine.run_async(call)
    records = failure_records(caplog)
    assert len(records) == 1
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s %(task_args)s %(task_kwargs)s"))
    for record in caplog.records:
        assert secret not in handler.format(record)
        assert secret not in repr(record.__dict__)
    assert records[0].task_kwargs["note"] == "fine"  # type: ignore[attr-defined]


class RecordingListener:
    """A dispatch listener that keeps every event it is given, in order."""

    def __init__(self) -> None:
        self.settled: list[Any] = []
        self.pool: list[Any] = []
        self.breaker: list[Any] = []

    def dispatch_settled(self, event: Any) -> None:
        self.settled.append(event)

    def pool_changed(self, change: Any) -> None:
        self.pool.append(change)

    def breaker_changed(self, change: Any) -> None:
        self.breaker.append(change)


async def test_listeners_hear_every_outcome_in_order(
    engine: DispatchEngine, breaker: RecordingBreaker
) -> None:
    heard = RecordingListener()
    engine.add_listener(heard)

    def refuse() -> None:
        raise ConnectionRefusedError(111, "refused")

    await engine.run_async(make_call(lambda: "ok", task_id="a"))
    with pytest.raises(BrokerError):
        await engine.run_async(make_call(refuse, task_id="b", timeout=0.5))
    breaker.open_for = 1.0
    with pytest.raises(CircuitOpenError):
        await engine.run_async(make_call(lambda: None, task_id="c"))
    summary = [(e.task_id, e.outcome, e.error_type, e.path) for e in heard.settled]
    assert summary == [
        ("a", DispatchOutcome.SENT, None, "fake"),
        ("b", DispatchOutcome.NOT_SENT, "BrokerError", "fake"),
        ("c", DispatchOutcome.NOT_SENT, "CircuitOpenError", None),
    ]
    sent, refused, rejected = heard.settled
    assert refused.started_at is not None
    assert sent.started_at is not None
    assert sent.queued_at <= sent.started_at <= sent.finished_at
    assert rejected.started_at is None
    assert (sent.method, sent.kind, sent.late) == ("delay", "task", False)


async def test_a_late_publish_is_heard_twice(engine: DispatchEngine, clock: ManualClock) -> None:
    heard = RecordingListener()
    engine.add_listener(heard)
    started, release = threading.Event(), threading.Event()

    def hang() -> bool:
        started.set()
        return release.wait(WAIT)

    waiting = asyncio.ensure_future(engine.run_async(make_call(hang, timeout=0.05)))
    assert await asyncio.to_thread(started.wait, WAIT)
    clock.advance(0.05)
    with pytest.raises(DispatchTimeout):
        await asyncio.wait_for(waiting, WAIT)
    release.set()
    engine.pool.submit(lambda: None).result(WAIT)  # the late publish finished before this
    assert [(e.outcome, e.late, e.error_type) for e in heard.settled] == [
        (DispatchOutcome.UNKNOWN, False, "DispatchTimeout"),
        (DispatchOutcome.SENT, True, None),
    ]


async def test_a_raising_listener_is_logged_once_and_changes_nothing(
    engine: DispatchEngine, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingListener):
        def dispatch_settled(self, event: Any) -> None:
            raise RuntimeError("listener bug")

    after = RecordingListener()
    engine.add_listener(Broken())
    engine.add_listener(after)
    for task_id in ("x", "y", "z"):
        result = await engine.run_async(make_call(lambda: "ok", task_id=task_id))
        assert result == "ok"
    assert [e.task_id for e in after.settled] == ["x", "y", "z"]
    logged = [r for r in caplog.records if r.name == "aceleryctl.listeners"]
    assert len(logged) == 1
    assert "listener bug" in logged[0].getMessage()
    assert engine.statistics().dispatched == 3


def test_a_listener_without_the_three_methods_is_refused(engine: DispatchEngine) -> None:
    with pytest.raises(TypeError, match="dispatch_settled, pool_changed and breaker_changed"):
        engine.add_listener(object())  # type: ignore[arg-type]


def test_pool_threads_are_heard(app: Celery, breaker: RecordingBreaker) -> None:
    heard = RecordingListener()
    e = DispatchEngine(
        app,
        CallingWire(app),
        max_workers=1,
        max_pending=2,
        breaker=breaker,  # type: ignore[arg-type]
        redactor=Redactor(),
        listeners=(heard,),
    )
    assert e.run_sync(make_call(lambda: 1)) == 1
    assert e.close(WAIT)

    assert heard.pool[0] is PoolChange.THREAD_STARTED
    assert PoolChange.CLOSED in heard.pool


async def test_the_engine_reads_time_only_from_its_clock(
    app: Celery, breaker: RecordingBreaker
) -> None:
    clock = ManualClock(100.0)
    heard = RecordingListener()
    e = DispatchEngine(
        app,
        CallingWire(app),
        max_workers=1,
        max_pending=2,
        breaker=breaker,  # type: ignore[arg-type]
        redactor=Redactor(),
        listeners=(heard,),
        clock=clock,
    )
    started, release = threading.Event(), threading.Event()

    def hang() -> str:
        started.set()
        release.wait(WAIT)
        return "late"

    waiting = asyncio.ensure_future(e.run_async(make_call(hang, timeout=5.0, task_id="m1")))
    assert await asyncio.to_thread(started.wait, WAIT)
    clock.advance(4.5)
    await asyncio.sleep(0)  # one loop turn: the deadline has not passed yet
    assert not waiting.done()
    clock.advance(0.5)
    with pytest.raises(DispatchTimeout):
        await asyncio.wait_for(waiting, WAIT)
    release.set()
    assert e.close(WAIT)
    timed_out = heard.settled[0]
    assert (timed_out.queued_at, timed_out.started_at) == (100.0, 100.0)
    assert timed_out.finished_at == 105.0


# -- the outbox's ways in: a detached publish's end, and run_many_sync -------------------


class Settlements:
    """Records what a detached publish's ``settled`` callback hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[DispatchOutcome, TaskDispatchError | None]] = []
        self.done = threading.Event()

    def __call__(self, outcome: DispatchOutcome, error: TaskDispatchError | None) -> None:
        self.heard.append((outcome, error))
        self.done.set()


def test_a_detached_publish_tells_its_settled_callback_how_it_ended(
    engine: DispatchEngine, breaker: RecordingBreaker
) -> None:
    sent, failed, refused = Settlements(), Settlements(), Settlements()
    engine.submit_detached(make_call(lambda: "ok"), None, sent)

    def down() -> None:
        raise kombu.exceptions.OperationalError("down")

    engine.submit_detached(make_call(down, task_id="id-2"), None, failed)
    assert sent.done.wait(WAIT)
    assert failed.done.wait(WAIT)
    breaker.open_for = 3.0
    engine.submit_detached(make_call(lambda: "never", task_id="id-3"), None, refused)
    assert refused.done.is_set()  # at once, on the submitting thread
    assert sent.heard == [(DispatchOutcome.SENT, None)]
    [(outcome, error)] = failed.heard
    assert outcome is not DispatchOutcome.SENT
    assert isinstance(error, TaskDispatchError)
    [(outcome, error)] = refused.heard
    assert outcome is DispatchOutcome.NOT_SENT
    assert isinstance(error, CircuitOpenError)


def _blocking_first(engine: DispatchEngine) -> tuple[threading.Event, threading.Event]:
    """Occupy the engine's one publishing thread until the returned gate is set."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        assert gate.wait(WAIT)
        return "held"

    engine.submit_detached(make_call(hold, task_id="holder"))
    assert started.wait(WAIT)
    return started, gate


def test_a_queued_detached_publish_is_not_sent_once_the_breaker_has_opened(
    engine: DispatchEngine, breaker: RecordingBreaker
) -> None:
    _, gate = _blocking_first(engine)
    published: list[str] = []
    heard = Settlements()
    engine.submit_detached(make_call(lambda: published.append("x"), task_id="q"), None, heard)
    breaker.open_for = 2.0  # opens while the publish waits for the thread
    gate.set()
    assert heard.done.wait(WAIT)
    [(outcome, error)] = heard.heard
    assert outcome is DispatchOutcome.NOT_SENT
    assert isinstance(error, CircuitOpenError)
    assert "opened while it waited" in str(error)
    assert published == []


def test_a_detached_publish_whose_deadline_passed_in_the_queue_is_not_sent(
    engine: DispatchEngine, clock: ManualClock
) -> None:
    _, gate = _blocking_first(engine)
    published: list[str] = []
    heard = Settlements()
    call = make_call(lambda: published.append("x"), task_id="late", timeout=1.0)
    engine.submit_detached(call, None, heard)
    clock.advance(1.5)
    gate.set()
    assert heard.done.wait(WAIT)
    [(outcome, error)] = heard.heard
    assert outcome is DispatchOutcome.NOT_SENT
    assert isinstance(error, DispatchOverloaded)
    assert published == []


def test_run_many_sync_settles_each_dispatch_and_stops_asking_an_open_breaker(
    engine: DispatchEngine, breaker: RecordingBreaker
) -> None:
    def down() -> None:
        raise kombu.exceptions.OperationalError("down")

    calls = [make_call(lambda: "a", task_id="a"), make_call(down, task_id="b")]  # max_pending=2
    first = engine.run_many_sync(calls)
    assert first[0] == "a"
    assert isinstance(first[1], BrokerError)
    breaker.open_for = 4.0
    before = breaker.events().count("rejected")
    refused = engine.run_many_sync(calls)
    assert all(isinstance(r, CircuitOpenError) for r in refused)
    assert breaker.events().count("rejected") == before + 1


class BatchingWire(CallingWire):
    """The fake wire, taking several dispatches at once as the direct wires do."""

    @property
    def batches(self) -> bool:
        return True

    def connected(self) -> bool:
        return True


def test_dispatches_published_together_share_their_publish_times(
    app: Celery, breaker: RecordingBreaker
) -> None:
    """The listener contract operation-level metrics rely on: one wire operation's
    dispatches carry the same started_at and finished_at readings, another
    operation's differ (the clock moves on every reading here)."""
    ticks = itertools.count()
    wire = BatchingWire(app)
    engine = DispatchEngine(
        app,
        wire,
        max_workers=1,
        max_pending=2,
        breaker=breaker,  # type: ignore[arg-type]
        redactor=Redactor(),
        clock=lambda: next(ticks) * 0.001,
    )
    heard = RecordingListener()
    engine.add_listener(heard)
    try:
        _, gate = _blocking_first(engine)  # a and b wait behind it, then go together
        engine.submit_detached(make_call(lambda: "a", task_id="a"))
        engine.submit_detached(make_call(lambda: "b", task_id="b"))
        gate.set()
        wait_until(lambda: len(heard.settled) == 3, timeout=WAIT)
    finally:
        engine.close(WAIT)
    assert wire.batches_seen == [["holder"], ["a", "b"]]
    times = {e.task_id: (e.started_at, e.finished_at) for e in heard.settled}
    assert times["a"] == times["b"]
    assert times["holder"] != times["a"]
    assert all(started is not None and started < finished for started, finished in times.values())
