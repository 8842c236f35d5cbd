"""The backend's features on real workers: aget_result and arefresh without threads,
defer (``run_after``), queues, priority order, async functions, the context, and
Celery options passed through ``@task``.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.utils import timezone

from aceleryctl.backends import CeleryBackend
from aceleryctl.backends.records import RUNNER_NAME
from aceleryctl.compat.django_tasks import TaskResultDoesNotExist, TaskResultStatus
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until_async

from . import functions, site
from .conftest import launch, stop
from .test_backend import finished

pytestmark = pytest.mark.usefixtures("tasks_controller")


async def afinished(result: Any, timeout: float = 30.0) -> Any:
    """Wait, on the loop, until ``result`` (refreshed with ``arefresh``) is finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await result.arefresh()
        if result.is_finished:
            return result
        assert loop.time() < deadline, f"task {result.id} did not finish: {result.status}"
        await asyncio.sleep(0.02)


async def test_aget_result_and_arefresh_hold_no_thread() -> None:
    results = [await functions.add.aenqueue(i, 1) for i in range(20)]
    for result in results:
        await afinished(result)
    before = threading.active_count()
    fetched = await asyncio.gather(*(functions.add.aget_result(r.id) for r in results * 2))
    assert threading.active_count() == before
    assert [f.return_value for f in fetched[:20]] == [i + 1 for i in range(20)]
    fresh = CeleryBackend("default", site.TASKS["default"])
    elsewhere = await fresh.aget_result(results[0].id)
    assert elsewhere.status == TaskResultStatus.SUCCESSFUL
    assert elsewhere.return_value == 1
    with pytest.raises(TaskResultDoesNotExist):
        await fresh.aget_result("never-enqueued")


async def test_run_after_defers_the_run() -> None:
    run_after = timezone.now() + timedelta(seconds=2)
    result = await functions.add.using(run_after=run_after).aenqueue(1, 2)
    await asyncio.sleep(0.5)
    await result.arefresh()
    assert result.status == TaskResultStatus.READY
    await afinished(result)
    assert result.started_at >= run_after
    assert result.return_value == 3


async def test_queues_map_to_celery_queues(tasks_workers: dict[str, Any]) -> None:
    main = await afinished(await functions.add.aenqueue(1, 1))
    other = await afinished(await functions.add.using(queue_name="other").aenqueue(1, 1))
    assert main.worker_ids[0] == tasks_workers["main"].hostname
    assert other.worker_ids[0] == tasks_workers["other"].hostname
    from aceleryctl.compat.django_tasks import InvalidTask

    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid"):
        functions.add.using(queue_name="nowhere")


async def test_higher_priority_runs_first(
    redis_server: RedisServer, tasks_records: redis.Redis
) -> None:
    # Enqueued before any worker consumes the queue, lowest first; then one worker
    # with one process takes them in priority order.
    for priority, label in ((-100, "low"), (0, "mid"), (100, "high")):
        for n in range(3):
            await functions.noted.using(priority=priority).aenqueue(f"{label}{n}")
    worker = launch(redis_server, "prio", site.PRIO_QUEUE, concurrency=1)
    try:
        worker.wait_ready(timeout=120.0)
        raw = await wait_until_async(
            lambda: tasks_records.llen("noted") == 9 and tasks_records.lrange("noted", 0, -1),
            timeout=60.0,
            message="9 noted runs",
        )
    finally:
        stop(worker)
    labels = [item.decode() for item in raw]
    assert [label[:-1] for label in labels] == ["high"] * 3 + ["mid"] * 3 + ["low"] * 3


async def test_async_functions_run_on_one_loop_per_worker_process() -> None:
    results = [await functions.aadd.aenqueue(i, i) for i in range(12)]
    done = [await afinished(r) for r in results]
    values = [d.return_value for d in done]
    assert [v["sum"] for v in values] == [2 * i for i in range(12)]
    loops_per_pid: dict[int, set[int]] = {}
    for v in values:
        loops_per_pid.setdefault(v["pid"], set()).add(v["loop"])
    assert all(len(loops) == 1 for loops in loops_per_pid.values()), loops_per_pid


async def test_the_context_has_the_attempt_and_the_running_result() -> None:
    result = await functions.with_context.aenqueue(7)
    done = await afinished(result)
    value = done.return_value
    assert value["x"] == 7
    assert value["attempt"] == 1
    assert value["id"] == result.id
    assert value["status"] == "RUNNING"
    assert value["worker_ids"] == done.worker_ids


async def test_task_options_reach_the_celery_message(tasks_controller: Any) -> None:
    assert functions.limited.celery_options() == {
        "expires": 120.0,
        "soft_time_limit": 20.0,
        "time_limit": 30.0,
    }
    seen: list[dict[str, Any]] = []
    from celery import signals as celery_signals

    def before(headers: dict[str, Any], **kwargs: Any) -> None:
        if headers.get("task") == RUNNER_NAME:
            seen.append(headers)

    celery_signals.before_task_publish.connect(before, weak=False)
    try:
        result = await functions.limited.aenqueue()
        plain = await functions.add.aenqueue(1, 1)
    finally:
        celery_signals.before_task_publish.disconnect(before)
    by_id = {h["id"]: h for h in seen}
    assert by_id[result.id]["timelimit"] == (30.0, 20.0) or by_id[result.id]["timelimit"] == [
        30.0,
        20.0,
    ]
    assert by_id[result.id]["expires"] is not None
    assert by_id[plain.id]["expires"] is not None  # OPTIONS["CELERY_OPTIONS"]["expires"]
    assert (await afinished(result)).return_value == "limited"


def test_progress_is_stored_while_it_runs() -> None:
    result = functions.progress.enqueue(3)
    done = finished(result.id)
    assert done.return_value == 3
