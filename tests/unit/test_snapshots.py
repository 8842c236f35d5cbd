"""Snapshots: result-backend meta as an event, and reads coalesced without going stale."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError

from aceleryctl._logging import Redactor
from aceleryctl.events import Phase, TaskEvent, order_key, split_order
from aceleryctl.live.snapshots import SnapshotReader, reader_for_loop, snapshot_from_meta
from tests._support.waiting import wait_until_async

TASK = "5d0c3b8a-1b1e-4d4f-8b52-6b1c3a2d9e01"
DONE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_success_is_terminal_with_a_redacted_summary() -> None:
    meta = {
        "status": "SUCCESS",
        "result": {"rows": 3, "api_token": "s3cr3t"},
        "date_done": DONE.isoformat(),
        "name": "reports.export",
        "retries": 2,
    }
    event = snapshot_from_meta(TASK, meta, redactor=Redactor.from_keys(["token"]))
    assert event is not None
    assert (event.type, event.state, event.task_name) == (
        "task.succeeded",
        "SUCCESS",
        "reports.export",
    )
    assert event.order == order_key(2, Phase.TERMINAL)
    assert event.result["rows"] == 3
    assert "s3cr3t" not in str(event.result)
    assert event.timestamp == DONE.timestamp()


def test_failure_has_type_and_scrubbed_message_but_no_traceback() -> None:
    meta = {
        "status": "FAILURE",
        "result": ValueError("bad input for redis://user:hunter2@db:6379/0"),
        "traceback": "Traceback (most recent call last):\n  File ...",
        "date_done": DONE,
    }
    event = snapshot_from_meta(TASK, meta)
    assert event is not None
    assert (event.type, event.error_type) == ("task.failed", "ValueError")
    assert "hunter2" not in (event.error_message or "")
    assert "Traceback" not in str(event.to_dict())
    assert event.order == order_key(0, Phase.TERMINAL)


def test_revoked_retry_started_and_pending() -> None:
    revoked = snapshot_from_meta(TASK, {"status": "REVOKED", "result": TaskRevokedError("revoked")})
    assert revoked is not None
    assert (revoked.type, revoked.error_type) == ("task.revoked", "Revoked")
    retry = snapshot_from_meta(TASK, {"status": "RETRY", "result": OSError("flaky"), "retries": 1})
    assert retry is not None
    assert retry.type == "task.retried"
    assert retry.retry is not None
    assert retry.retry.attempt == 2
    assert retry.order == order_key(1, Phase.RETRIED)
    started = snapshot_from_meta(TASK, {"status": "STARTED", "result": {"pid": 1}})
    assert started is not None
    assert started.order == order_key(0, Phase.STARTED)
    assert snapshot_from_meta(TASK, {"status": "PENDING", "result": None}) is None
    assert snapshot_from_meta(TASK, {"status": "SOMETHING-ELSE"}) is None


def test_progress_order_is_a_lower_bound_unless_the_meta_carries_one() -> None:
    meta: dict[str, Any] = {"status": "PROGRESS", "result": {"current": 3, "total": 9}}
    event = snapshot_from_meta(TASK, meta)
    assert event is not None
    assert event.progress is not None
    assert (event.progress.current, event.progress.total) == (3, 9)
    assert split_order(event.order) == (0, Phase.PROGRESS, 0)  # any live report is newer
    meta["result"]["order"] = order_key(1, Phase.PROGRESS, 7)
    exact = snapshot_from_meta(TASK, meta)
    assert exact is not None
    assert exact.order == order_key(1, Phase.PROGRESS, 7)
    meta["result"] = {"current": float("nan"), "order": "junk"}
    junk = snapshot_from_meta(TASK, meta)
    assert junk is not None
    assert junk.progress is not None
    assert junk.progress.current == 0


def event(n: int) -> TaskEvent:
    return TaskEvent(
        type="task.started",
        task_id=TASK,
        task_name=None,
        state="STARTED",
        timestamp=float(n),
        order=order_key(n, Phase.STARTED),
    )


class GatedSource:
    """A snapshot source whose reads wait for the test; counts reads and threads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.reads = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, task_id: str) -> TaskEvent | None:
        with self.lock:
            self.reads += 1
            number = self.reads
        self.threads.add(threading.current_thread().name)
        self.started.release()
        assert self.release.wait(10), "the test never released the read"
        return event(number)


async def test_concurrent_reads_share_one_read_and_nobody_gets_a_stale_one() -> None:
    reader = SnapshotReader()
    source = GatedSource()
    first = asyncio.ensure_future(reader.read(source, TASK, timeout=10))
    await asyncio.to_thread(source.started.acquire, True, 10)
    # These ask while read 1 runs: they must not get it (it began before they asked).
    later = [asyncio.ensure_future(reader.read(source, TASK, timeout=10)) for _ in range(99)]
    await asyncio.sleep(0)
    source.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), 10)
    assert results[0] == event(1)
    assert set(results[1:]) == {event(2)}
    assert source.reads == 2
    assert (reader.requests, reader.reads) == (100, 2)
    assert source.threads
    assert all(t.startswith("aceleryctl-snapshot") for t in source.threads)
    assert reader._tasks == {}


async def test_a_timed_out_waiter_does_not_disturb_the_others() -> None:
    reader = SnapshotReader()
    source = GatedSource()
    patient = asyncio.ensure_future(reader.read(source, TASK, timeout=10))
    await asyncio.to_thread(source.started.acquire, True, 10)
    with pytest.raises(TimeoutError):
        await reader.read(source, TASK, timeout=0.01)
    source.release.set()
    assert await asyncio.wait_for(patient, 10) == event(1)
    # The read the impatient caller was waiting for still runs, for nobody.
    await wait_until_async(lambda: not reader._tasks, timeout=10)
    assert source.reads == 2


async def test_a_failing_source_fails_its_waiters_only_once() -> None:
    reader = SnapshotReader()
    calls = 0

    def broken(task_id: str) -> TaskEvent | None:
        nonlocal calls
        calls += 1
        raise ConnectionError("backend down")

    with pytest.raises(ConnectionError):
        await reader.read(broken, TASK, timeout=5)
    with pytest.raises(ConnectionError):
        await reader.read(broken, TASK, timeout=5)
    assert calls == 2  # a failure is not cached


async def test_reader_for_loop_is_one_per_loop() -> None:
    assert reader_for_loop() is reader_for_loop()
