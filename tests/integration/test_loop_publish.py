"""``loop_publish``: coroutine dispatches written from the event loop's own thread.

Against the session's real Redis and prefork worker: which calls take the loop
path and which keep the publishing threads, that the loop path's messages are the
publishing threads' own (field by field, ids aside) and run exactly once, what a
deadline, a cancellation and an error reply from Redis give, and that closing the
controller leaves no connection behind. The fault suite (``faults/``) runs its
storms on this path too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signals

from aceleryctl import AsyncCeleryController, CircuitBreaker, mark_loop_safe
from aceleryctl.compat.celery import live_receivers
from aceleryctl.exceptions import BrokerError, DispatchTimeout, TaskDispatchError
from aceleryctl.live import sent
from aceleryctl.live.sent import LiveEventsListener, SentEvents, use_publish_signal
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until_async
from tests._support.worker import CeleryWorker

from ._helpers import Broker, Records, isolated_app, new_marker
from .celery_app import record

CAPTURE_DB = 13  # a database no worker reads


@pytest.fixture(autouse=True)
def _no_foreign_publish_receivers() -> None:
    """A receiver another test left connected would keep every call on the threads:
    say so by name instead of failing on a count."""
    from aceleryctl.dispatch.listener import is_loop_safe

    left = [
        r
        for signal in (signals.before_task_publish, signals.after_task_publish)
        for r in live_receivers(signal)
        if not is_loop_safe(r)
    ]
    assert not left, f"publish-signal receivers left connected by another test: {left}"


@pytest.fixture
async def loop_ctl(
    celery_app: Celery, workers: dict[str, CeleryWorker]
) -> AsyncIterator[AsyncCeleryController]:
    ctl = AsyncCeleryController(celery_app, dispatch_timeout=5.0, loop_publish=True)
    try:
        yield ctl
    finally:
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)


async def test_after_a_first_threaded_write_calls_go_from_the_loop_and_run_once(
    loop_ctl: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker("loop")
    first = await loop_ctl.delay(record, marker, 0)  # the route is learnt on a thread
    assert loop_ctl.statistics().from_loop == 0
    results = await asyncio.gather(*(loop_ctl.delay(record, marker, i) for i in range(1, 200)))
    stats = loop_ctl.statistics()
    assert stats.dispatched == 200
    assert stats.from_loop == 199, stats
    assert stats.direct == 200
    health = loop_ctl.health()
    assert health["loop_publish"] == {"enabled": True, "loops": 1, "reason": ""}
    assert health["from_loop"] == 199
    ran = await records.wait_for_async(marker, count=200, timeout=30)
    ids = [entry["task_id"] for entry in ran]
    assert sorted(ids) == sorted([first.id, *(r.id for r in results)])
    assert len(set(ids)) == 200
    assert sorted(entry["payload"] for entry in ran) == list(range(200))


async def test_the_loop_paths_message_is_the_threads_own(redis_server: RedisServer) -> None:
    url = redis_server.url(CAPTURE_DB)
    app = isolated_app(f"loop-capture-{new_marker()}", url, redis_server.url(1))
    client = redis.Redis.from_url(url)
    client.flushdb()
    ctl = AsyncCeleryController(app, dispatch_timeout=5.0, loop_publish=True)
    try:
        task = app.tasks["aceleryctl_tests.add"]
        options = {"countdown": 60, "headers": {"x-tenant": "t1"}, "priority": 3}
        threaded = await ctl.apply_async(task, (1, 2), **options)
        assert ctl.statistics().from_loop == 0
        looped = await ctl.apply_async(task, (1, 2), **options)
        assert ctl.statistics().from_loop == 1
    finally:
        await ctl.aclose()
    try:
        stored: dict[str, dict[str, Any]] = {}
        for key in client.keys("*"):
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                envelope = json.loads(raw)
                stored[envelope["headers"]["id"]] = {"key": key, **envelope}
    finally:
        client.close()
    a, b = stored[threaded.id], stored[looped.id]
    assert a["key"] == b["key"]
    assert a["body"] == b["body"]
    assert a["content-type"] == b["content-type"]
    ignored = {"id", "root_id", "eta"}
    assert {k: v for k, v in a["headers"].items() if k not in ignored} == {
        k: v for k, v in b["headers"].items() if k not in ignored
    }
    pa, pb = dict(a["properties"]), dict(b["properties"])
    for props in (pa, pb):
        for key in ("correlation_id", "delivery_tag", "reply_to"):
            props.pop(key)
    assert pa == pb


async def test_a_receiver_not_marked_loop_safe_keeps_calls_on_the_threads(
    loop_ctl: AsyncCeleryController, records: Records
) -> None:
    seen: list[str] = []

    def user_receiver(headers: Any = None, **_: Any) -> None:
        seen.append(headers["id"])

    marker = new_marker("recv")
    await loop_ctl.delay(record, marker)
    signals.before_task_publish.connect(user_receiver, weak=False)
    try:
        threaded = await loop_ctl.delay(record, marker)
        assert loop_ctl.statistics().from_loop == 0
        mark_loop_safe(user_receiver)
        looped = await loop_ctl.delay(record, marker)
        assert loop_ctl.statistics().from_loop == 1
    finally:
        signals.before_task_publish.disconnect(user_receiver)
    assert seen == [threaded.id, looped.id]  # it ran for both, once each
    await records.wait_for_async(marker, count=3, timeout=20)


@pytest.fixture
def paused_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, resumed after the test whatever happens."""
    try:
        yield redis_server
    finally:
        redis_server.resume()


async def test_no_reply_before_the_deadline_is_unknown_and_drops_the_connection(
    celery_app: Celery,
    workers: dict[str, CeleryWorker],
    records: Records,
    paused_redis: RedisServer,
) -> None:
    ctl = AsyncCeleryController(
        celery_app,
        dispatch_timeout=0.5,
        loop_publish=True,
        breaker=CircuitBreaker(failure_threshold=50),  # the five failures must not open it
    )
    marker = new_marker("paused")
    try:
        await ctl.delay(record, marker, "first")
        await ctl.delay(record, marker, "second")
        assert ctl.statistics().from_loop == 1
        paused_redis.pause()
        try:
            outcomes = await asyncio.gather(
                *(ctl.delay(record, marker, i) for i in range(5)), return_exceptions=True
            )
        finally:
            paused_redis.resume()
        # The first deadline drops the connection; the calls still waiting on it
        # learn then that their messages may or may not be in Redis.
        assert isinstance(outcomes[0], DispatchTimeout), outcomes
        assert all(
            isinstance(o, DispatchTimeout) or (isinstance(o, BrokerError) and o.message_may_exist)
            for o in outcomes
        ), outcomes
        ids = [o.task_id for o in outcomes if isinstance(o, TaskDispatchError)]
        assert all(ids)
        # Redis received them before it stopped (they were written): they run, once.
        ran = await records.wait_for_async(marker, count=7, timeout=30)
        assert sorted(e["task_id"] for e in ran if e["payload"] in range(5)) == sorted(ids)
        again = await ctl.delay(record, marker, "after")  # a new connection
        assert again.id
        # The timed-out call's message settled (unknown) as its connection dropped.
        assert ctl.statistics().late_completions == 1
    finally:
        await ctl.aclose()


async def test_a_cancelled_caller_neither_loses_nor_repeats_its_message(
    loop_ctl: AsyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker("cancel")
    await loop_ctl.delay(record, marker, "warm")
    calls = [asyncio.ensure_future(loop_ctl.delay(record, marker, i)) for i in range(20)]
    calls[5].cancel()  # before the loop turn that writes: never written
    await asyncio.sleep(0)
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    sent = [r.id for r in done if not isinstance(r, BaseException)]
    assert len(sent) == 19
    await records.wait_for_async(marker, count=20, timeout=20)
    # The queue drained past a later message: nothing of this test is left to run.
    later = new_marker("later")
    await loop_ctl.delay(record, later)
    await records.wait_for_async(later, timeout=20)
    await wait_until_async(lambda: not broker.task_ids("celery"), timeout=20)
    ran = records.get(marker)
    assert len(ran) == 20
    assert 5 not in [e["payload"] for e in ran]
    assert loop_ctl.breaker.statistics().state.value == "closed"


async def test_a_loop_dispatch_is_noted_once_for_live_events(
    loop_ctl: AsyncCeleryController, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    noted: list[str] = []

    class Recording(SentEvents):
        def add(self, task_id: str, *args: Any, **kwargs: Any) -> None:
            noted.append(task_id)

    monkeypatch.setattr(sent, "_sent", Recording())
    loop_ctl.add_listener(LiveEventsListener())  # as the default controller has
    was_on = sent.on_published in live_receivers(signals.after_task_publish)
    use_publish_signal(True)  # and the receiver for every other publish of the process
    try:
        marker = new_marker("live")
        first = await loop_ctl.delay(record, marker)
        looped = await loop_ctl.delay(record, marker)
        assert loop_ctl.statistics().from_loop == 1
    finally:
        use_publish_signal(was_on)
    assert noted == [first.id, looped.id]  # once each: the listener's, not the signal's
