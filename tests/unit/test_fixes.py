"""Behaviour found by review: cancellation settles the breaker, parent links survive the
thread hop, positional secrets are masked, lost on-commit dispatches are logged, and a
canvas names its id even when the deadline passes before it is published."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, group

from aceleryctl import AsyncCeleryController, BreakerState, CircuitBreaker
from aceleryctl._logging import MASK
from aceleryctl.dispatch.record import Dispatch, DispatchKind
from aceleryctl.exceptions import DispatchTimeout
from aceleryctl.testing import ManualClock

WAIT = 10.0


@pytest.fixture
def app() -> Celery:
    app = Celery("fixes", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name="fixes.login", shared=False)
    def login(user: str, password: str) -> str:
        return user

    return app


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ctl(app: Celery, clock: ManualClock) -> Iterator[AsyncCeleryController]:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    controller = AsyncCeleryController(app, max_workers=1, breaker=breaker)
    yield controller
    controller.sync.close(WAIT)


def blocking_call(release: threading.Event, started: threading.Event) -> Dispatch:
    def publish() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    return Dispatch(DispatchKind.CALLABLE, "fixes.block", "id-x", (), {}, {}, WAIT, target=publish)


async def test_cancelled_half_open_probe_still_settles_the_breaker(
    ctl: AsyncCeleryController, clock: ManualClock
) -> None:
    ctl.breaker.force_open()
    ctl.breaker.reset()
    # Open the breaker for real, then let the reset timeout pass: the next call is a probe.
    permit = ctl.breaker.acquire()
    permit.record_failure(0.1)
    assert ctl.breaker.state is BreakerState.OPEN
    clock.advance(1.5)
    started, release = threading.Event(), threading.Event()
    probe = asyncio.ensure_future(ctl._engine.run_async(blocking_call(release, started)))
    assert await asyncio.to_thread(started.wait, WAIT)
    assert ctl.breaker.state is BreakerState.HALF_OPEN
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    release.set()
    ctl._engine.pool.submit(lambda: None).result(WAIT)  # the probe's callback ran before
    assert ctl.breaker.state is BreakerState.CLOSED


async def test_cancelled_queued_call_releases_its_permit(ctl: AsyncCeleryController) -> None:
    started, release = threading.Event(), threading.Event()
    blocker = asyncio.ensure_future(ctl._engine.run_async(blocking_call(release, started)))
    assert await asyncio.to_thread(started.wait, WAIT)
    queued = asyncio.ensure_future(ctl._engine.run_async(blocking_call(release, threading.Event())))
    await asyncio.sleep(0)  # one loop turn: the second call is now queued
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    release.set()
    await blocker
    stats = ctl.breaker.statistics()
    assert (stats.total_successes, stats.total_failures) == (1, 0)


def test_parent_links_are_taken_on_the_callers_thread(app: Celery) -> None:
    seen: dict[str, Any] = {}

    @app.task(name="fixes.parent", bind=True, shared=False)
    def parent(self: Any) -> None:
        controller = AsyncCeleryController(app, max_workers=1)
        try:
            child = controller.sync.delay(app.tasks["fixes.login"], "ann", "pw")
            seen["child"] = child.id
            seen["trail"] = [r.id for r in self.request.children]
        finally:
            controller.sync.close(WAIT)

    parent.apply(task_id="parent-id")
    # kombu's memory transport is one per process: other tests' messages may wait
    # in the same queue. Read up to the child's own message (bounded).
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue("celery")
        for _ in range(1_000):
            message = simple.get(block=True, timeout=WAIT)
            message.ack()
            if message.headers["id"] == seen["child"]:
                break
        simple.close()
    assert message.headers["id"] == seen["child"]
    assert message.headers["parent_id"] == "parent-id"
    assert message.headers["root_id"] == "parent-id"
    assert seen["trail"] == [seen["child"]]


async def test_positional_secret_is_masked_in_the_failure_log(
    app: Celery, ctl: AsyncCeleryController, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(Exception, match="serialized"):
        await ctl.delay(app.tasks["fixes.login"], object(), "hunter2-positional")
    [record] = [r for r in caplog.records if r.name == "aceleryctl.controller"]
    assert record.task_args[1] == MASK  # type: ignore[attr-defined]
    assert "hunter2-positional" not in record.getMessage()


async def test_the_failure_record_carries_the_requests_correlation_id(
    app: Celery, ctl: AsyncCeleryController, caplog: pytest.LogCaptureFixture
) -> None:
    from aceleryctl.correlation import use_correlation_id

    with use_correlation_id("req-7f3a"), pytest.raises(Exception, match="serialized"):
        await ctl.delay(app.tasks["fixes.login"], object(), "pw")
    [record] = [r for r in caplog.records if r.name == "aceleryctl.controller"]
    assert record.correlation_id == "req-7f3a"  # type: ignore[attr-defined]


def test_on_commit_refusals_are_logged_as_a_digest_not_per_call(
    app: Celery, ctl: AsyncCeleryController, caplog: pytest.LogCaptureFixture
) -> None:
    from aceleryctl.dispatch.refusals import RefusalDigest

    ctl._engine._failures.refusals = RefusalDigest(interval=0.3)
    ctl.breaker.force_open()

    def refused(task_id: str) -> Dispatch:
        return Dispatch(
            DispatchKind.TASK,
            "fixes.login",
            task_id,
            (),
            {},
            {"task_id": task_id},
            WAIT,
            "delay_on_commit",
            target=app.tasks["fixes.login"],
        )

    kept: list[object] = []
    for i in range(4):  # the first is written at once, the other three together
        ctl._engine.submit_detached(refused(f"lost-{i}"))
    ctl._engine.submit_detached(refused("kept"), settled=lambda *a: kept.append(a))

    def records() -> list[logging.LogRecord]:
        # Only this controller's digest: another test's may still write its own.
        return [
            r
            for r in caplog.records
            if r.name == "aceleryctl.controller"
            and "fixes.login" in getattr(r, "refused_tasks", {})
        ]

    deadline = time.monotonic() + 10.0
    while len(records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    first, second = records()
    assert first.levelno == logging.ERROR
    assert (first.refused_count, first.lost_count) == (1, 1)  # type: ignore[attr-defined]
    assert (first.error_type, first.outcome) == ("CircuitOpenError", "not_sent")  # type: ignore[attr-defined]
    assert "1 (fixes.login: 1); 1 lost" in first.getMessage()
    assert second.refused_tasks == {"fixes.login": 4}  # type: ignore[attr-defined]
    assert "4 (fixes.login: 4); 3 lost" in second.getMessage()
    assert "1 kept in the outbox" in second.getMessage()
    assert len(kept) == 1


async def test_canvas_timeout_during_publish_still_names_the_group_id(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    started, release = threading.Event(), threading.Event()
    blocked: list[str] = []

    def slow_connect(self: Any, deadline: float) -> Any:
        started.set()
        blocked.append("connect")
        release.wait(WAIT)
        raise ConnectionRefusedError(111, "refused")

    from aceleryctl.wires import connections

    original = connections.ThreadPublisher.producer
    connections.ThreadPublisher.producer = slow_connect  # type: ignore[method-assign]
    try:
        with pytest.raises(DispatchTimeout) as info:
            await ctl.apply_async(group(app.tasks["fixes.login"].s("a", "b")), dispatch_timeout=0.2)
    finally:
        release.set()
        connections.ThreadPublisher.producer = original  # type: ignore[method-assign]
    assert blocked == ["connect"]
    assert info.value.task_id is not None
