"""Task events from real workers through the real channels_redis layer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.correlation import CORRELATION_HEADER
from aceleryctl.events import TaskEvent, split_order
from tests._support.waiting import WaitTimeout

from . import worker_app
from .conftest import Listener, LiveWorker, Received, expecting, lifecycle

SECRETS = ("hunter2", "pw-in-url", "LC-planted", "tok-planted-result")


def new_id() -> str:
    return str(uuid.uuid4())


def by_order(received: list[Received]) -> list[TaskEvent]:
    return sorted((r.event for r in received), key=lambda e: e.order)


def assert_no_secret(events: list[TaskEvent]) -> None:
    text = json.dumps([e.to_dict() for e in events])
    for secret in SECRETS:
        assert secret not in text
    assert "Traceback" not in text


async def run_journey(
    controller: AsyncCeleryController,
    listener: Listener,
    worker: LiveWorker,
    *,
    steps: int,
    failures: int,
    correlation: str,
) -> list[TaskEvent]:
    task_id = new_id()
    await listener.follow([task_id])
    await controller.apply_async(
        worker_app.journey,
        (steps, failures),
        task_id=task_id,
        queue=worker.queue,
        headers={CORRELATION_HEADER: correlation},
    )
    step = "received started progress+"
    expected = " ".join(["sent", *[f"{step} retried"] * failures, step, "succeeded"])
    received = await listener.collect([task_id], timeout=90, until=expecting(expected))
    return by_order(received[task_id])


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
async def test_a_task_that_progresses_retries_and_succeeds_tells_every_step_in_order(
    pool: str,
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    events = await run_journey(
        live_controller, listener, live_workers[pool], steps=3, failures=2, correlation="corr-1"
    )
    step = "received started progress+"
    assert lifecycle(events) == f"sent {step} retried {step} retried {step} succeeded"
    orders = [e.order for e in events]
    assert len(set(orders)) == len(orders), "an order key was repeated"
    assert [split_order(e.order)[0] for e in events if e.type == "task.started"] == [0, 1, 2]
    # The last report of every attempt went out, even though the rest were throttled.
    for attempt in range(3):
        reports = [e for e in events if e.type == "task.progress" and e.attempt == attempt]
        assert reports[-1].progress is not None
        assert reports[-1].progress.current == 3
        assert reports[-1].progress.total == 3
        assert reports[-1].progress.message == "step 3 of 3"
    retries = [e.retry for e in events if e.retry is not None]
    assert [(r.attempt, r.max_retries) for r in retries] == [(1, 3), (2, 3)]
    for retry in retries:
        assert retry.reason is not None
        assert "redis://********@cache:6379/0" in retry.reason
        assert retry.eta is not None
        datetime.fromisoformat(retry.eta)
    last = events[-1]
    assert last.state == "SUCCESS"
    assert last.result == {"done": True, "attempts": 3, "api_token": "********"}
    assert {e.correlation_id for e in events} == {"corr-1"}
    assert {e.task_name for e in events} == {"live.journey"}
    assert_no_secret(events)


async def test_a_failing_task_reports_type_and_scrubbed_message_only(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    await live_controller.apply_async(
        worker_app.explode,
        kwargs={"user": "alice", "launch_code": "LC-planted-9931"},
        task_id=task_id,
        queue=live_workers["prefork"].queue,
    )
    expected = "sent received started failed"
    got = await listener.collect([task_id], timeout=60, until=expecting(expected))
    events = by_order(got[task_id])
    assert lifecycle(events) == expected
    failed = events[-1]
    assert failed.state == "FAILURE"
    assert failed.error_type == "BrokenPromise"
    assert failed.error_message == "cannot reach redis://********@db:6379/0 for alice"
    assert failed.result is None
    assert failed.correlation_id is None
    assert_no_secret(events)


async def test_prefork_children_publish_across_many_tasks_and_lose_no_terminal_event(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
    record_property: pytest.RecordProperty,
) -> None:
    worker = live_workers["prefork"]
    ids = [new_id() for _ in range(200)]
    await listener.follow(ids)
    whole = "sent received started succeeded"
    collecting = asyncio.create_task(listener.collect(ids, timeout=180, until=expecting(whole)))
    for i, task_id in enumerate(ids):
        await live_controller.apply_async(
            worker_app.quick, (i,), task_id=task_id, queue=worker.queue
        )
    received = await collecting
    for task_id in ids:
        assert lifecycle(by_order(received[task_id])) == whole
    assert {r.event.result for t in ids for r in received[t] if r.event.is_terminal} == set(
        range(200)
    )
    # From the signal in the worker to this listener, through channels_redis.
    delays = sorted(
        (r.arrived - r.event.timestamp) * 1000
        for t in ids
        for r in received[t]
        if r.event.type in {"task.started", "task.succeeded"}
    )
    latency = {"p50_ms": delays[len(delays) // 2], "p99_ms": delays[int(len(delays) * 0.99)]}
    record_property("signal_to_listener", latency)
    log = worker.log()
    assert "Event loop is closed" not in log
    assert "group_send" not in log  # no send failure or timeout was logged
    assert "event queue is full" not in log


async def test_children_replaced_every_few_tasks_still_publish_everything(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    worker = live_workers["recycle"]
    ids = [new_id() for _ in range(40)]
    await listener.follow(ids)
    for i, task_id in enumerate(ids):
        await live_controller.apply_async(
            worker_app.quick, (i,), task_id=task_id, queue=worker.queue
        )
    whole = "sent received started succeeded"
    received = await listener.collect(ids, timeout=180, until=expecting(whole))
    for task_id in ids:
        assert lifecycle(by_order(received[task_id])) == whole
    log = worker.log()
    assert "Event loop is closed" not in log
    assert "group_send" not in log


async def test_throttled_progress_keeps_the_last_report_and_blocks_the_task_briefly(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
    record_property: pytest.RecordProperty,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    calls, spaced, gap = 3000, 10, 0.15  # gap > 1 / PROGRESS_MAX_RATE (10 a second)
    await live_controller.apply_async(
        worker_app.spam, (calls, spaced, gap), task_id=task_id, queue=live_workers["prefork"].queue
    )
    expected = "sent received started progress+ succeeded"
    got = await listener.collect([task_id], timeout=90, until=expecting(expected))
    events = by_order(got[task_id])
    reports = [e for e in events if e.type == "task.progress"]
    assert reports[-1].progress is not None
    assert reports[-1].progress.current == calls + spaced
    seqs = [split_order(e.order)[2] for e in reports]
    assert seqs == sorted(seqs)
    # Each spaced report goes out; of the tight loop, the first and the last held one.
    assert spaced + 1 <= len(reports) <= spaced + 4, [e.progress for e in reports]
    timings = events[-1].result
    assert isinstance(timings, dict)
    for key, value in timings.items():
        record_property(key, value)
    print("report_progress blocking (µs):", timings)
    assert timings["tight_p50_us"] < 500, timings
    assert timings["all_p50_us"] < 500, timings


async def test_a_held_report_goes_out_while_the_task_is_quiet(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    await live_controller.apply_async(
        worker_app.quiet_tail, (2.0,), task_id=task_id, queue=live_workers["prefork"].queue
    )
    expected = "sent received started progress+ succeeded"
    received = (await listener.collect([task_id], timeout=60, until=expecting(expected)))[task_id]
    second = next(
        r for r in received if r.event.progress is not None and r.event.progress.current == 2
    )
    done = next(r for r in received if r.event.type == "task.succeeded")
    assert second.arrived < done.event.timestamp - 1.0, "the held report waited for the end"


async def test_an_unregistered_task_is_rejected(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    await live_controller.send_task(
        "live.not_registered", (1,), task_id=task_id, queue=live_workers["solo"].queue
    )
    got = await listener.collect([task_id], timeout=60, until=expecting("sent rejected"))
    events = by_order(got[task_id])
    assert events[-1].error_type == "NotRegistered"
    assert events[-1].state == "REJECTED"


async def test_an_expired_task_is_revoked(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    await live_controller.apply_async(
        worker_app.quick,
        (1,),
        task_id=task_id,
        queue=live_workers["prefork"].queue,
        expires=datetime.now(UTC) - timedelta(seconds=5),
    )
    # Celery announces no task_received for a message that has expired already.
    got = await listener.collect([task_id], timeout=60, until=expecting("sent revoked"))
    events = by_order(got[task_id])
    assert events[-1].error_type == "Expired"


async def test_a_terminated_task_is_revoked_by_the_main_process(
    live_app: Celery,
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    task_id = new_id()
    await listener.follow([task_id])
    await live_controller.apply_async(
        worker_app.linger, (30.0,), task_id=task_id, queue=live_workers["prefork"].queue
    )
    await listener.collect([task_id], timeout=60, until="task.progress")
    await asyncio.to_thread(live_app.control.revoke, task_id, terminate=True)
    expected = "sent received started progress+ revoked"
    got = await listener.collect([task_id], timeout=60, until=expecting(expected))
    events = by_order(got[task_id])
    assert events[-1].error_type == "Terminated"
    assert re.fullmatch(r"terminated by signal \S+", events[-1].error_message or "")


def as_the_consumer_forwards(arrived: list[TaskEvent]) -> list[TaskEvent]:
    """What the websocket consumer forwards of events in their arrival order: each
    one newer (a higher order key) than the last it forwarded."""
    forwarded: list[TaskEvent] = []
    for event in arrived:
        if not forwarded or event.order > forwarded[-1].order:
            forwarded.append(event)
    return forwarded


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_retry_arrives_before_the_next_attempt_and_is_never_dropped_as_stale(
    pool: str,
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    # The pool process that runs the retrying attempt announces task.retried; the
    # worker's main process announces the next attempt's task.received as soon as
    # it gets the retry's message. task.retried must get to the layer first. One
    # task at a time, so that the worker is idle and gets the retry's message at
    # once (announced from task_retry, after the publish, task.retried came tens
    # of milliseconds late here).
    worker = live_workers[pool]
    ids = [new_id() for _ in range(10)]
    await listener.follow(ids)
    step = "received started progress+"
    expected = f"sent {step} retried {step} succeeded"
    got: dict[str, list[Received]] = {}
    for task_id in ids:
        await live_controller.apply_async(
            worker_app.journey, (1, 1), task_id=task_id, queue=worker.queue
        )
        got.update(await listener.collect([task_id], timeout=60, until=expecting(expected)))
    for task_id in ids:
        arrived = [r.event for r in got[task_id]]
        [retried] = [e for e in arrived if e.type == "task.retried"]
        [again] = [e for e in arrived if e.type == "task.received" and e.attempt == 1]
        assert retried.order < again.order
        assert arrived.index(retried) < arrived.index(again), [e.type for e in arrived]
        assert retried in as_the_consumer_forwards(arrived)
        assert retried.retry is not None
        assert (retried.attempt, retried.retry.attempt, retried.retry.max_retries) == (0, 1, 3)
        assert retried.error_type == "Flaky"
        assert retried.retry.reason == "try again: redis://********@cache:6379/0 (attempt 0)"
        assert retried.error_message == retried.retry.reason
        assert retried.retry.eta is not None
        datetime.fromisoformat(retried.retry.eta)
        assert_no_secret(arrived)
    # The same task.retried once more, from task_retry (after Celery stored RETRY),
    # for a subscriber whose snapshot read fell between the first copy and that
    # write.
    deadline = asyncio.get_running_loop().time() + 30
    while not all(listener.repeats.get(t) for t in ids):
        assert asyncio.get_running_loop().time() < deadline, listener.repeats
        with contextlib.suppress(WaitTimeout):  # receives meanwhile
            await listener.collect(ids, timeout=0.2, until=lambda _: False)
    for task_id in ids:
        [first] = [r.event for r in got[task_id] if r.event.type == "task.retried"]
        copies = [r.event for r in listener.repeats.get(task_id, [])]
        assert [e.type for e in copies] == ["task.retried"], copies
        assert (copies[0].order, copies[0].retry) == (first.order, first.retry)
        assert copies[0].error_message == first.error_message
