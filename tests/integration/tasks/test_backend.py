"""The Django Tasks backend against real prefork workers: enqueue, aenqueue, results,
status transitions, errors, signals, and a forged function path.

Each status is read from Celery's result backend as a web process would. Both
Django pairs run these: Django 6.1's ``django.tasks``, and Django 5.2 with the
``django-tasks`` backport.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from aceleryctl.backends import CeleryBackend
from aceleryctl.compat.django_tasks import (
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
)
from tests._support.waiting import wait_until

from . import functions, site

pytestmark = pytest.mark.usefixtures("tasks_controller")


def finished(result_id: str, timeout: float = 30.0) -> Any:
    """Wait for the task to finish; return its fresh result (another backend instance:
    nothing comes from this process's memory of what it enqueued)."""
    fresh = CeleryBackend("default", site.TASKS["default"])

    def read() -> Any:
        try:
            result = fresh.get_result(result_id)
        except TaskResultDoesNotExist:  # not taken by a worker yet: unknown elsewhere
            return None
        return result if result.is_finished else None

    return wait_until(
        read,
        timeout=timeout,
        message=f"task {result_id} did not finish",
    )


def signals_of(client: redis.Redis, result_id: str, count: int) -> list[dict[str, Any]]:
    """The worker-side signal records of a task, once there are ``count``."""
    key = f"signals:{result_id}"
    raw = wait_until(
        lambda: len(items := client.lrange(key, 0, -1)) >= count and items,
        timeout=30.0,
        message=f"{count} signal records of {result_id}",
    )
    return [json.loads(item) for item in raw]


def test_enqueue_runs_on_a_worker_and_the_result_maps_every_field(
    tasks_records: redis.Redis,
) -> None:
    result = functions.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    assert result.args == [2, 3]
    assert result.backend == "default"
    done = finished(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.task.func is functions.add.func
    assert done.args == [2, 3]
    assert done.kwargs == {}
    assert done.enqueued_at == result.enqueued_at
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.last_attempted_at == done.started_at
    assert done.errors == []
    assert len(done.worker_ids) == 1
    assert done.worker_ids[0].startswith("tasks-main-")
    assert done.attempts == 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5


def test_keyword_arguments_of_any_name_reach_the_function() -> None:
    kwargs = {"path": "os.system", "alias": "x", "enqueued_at": None, "n": [1, {"a": 2}]}
    result = functions.echo.enqueue("p", 2.5, None, **kwargs)
    done = finished(result.id)
    assert done.return_value == {"args": ["p", 2.5, None], "kwargs": kwargs}
    assert done.args == ["p", 2.5, None]
    assert done.kwargs == kwargs


async def test_aenqueue_from_many_coroutines_each_runs_once(tasks_records: redis.Redis) -> None:
    import asyncio

    results = await asyncio.gather(*(functions.add.aenqueue(i, i) for i in range(50)))
    assert len({r.id for r in results}) == 50
    for i, result in enumerate(results):
        done = await asyncio.to_thread(finished, result.id)
        assert done.return_value == 2 * i


def test_a_raising_function_fails_with_its_class_path_and_a_redacted_traceback() -> None:
    result = functions.fail.enqueue("cannot reach redis://admin:hunter2@db:6379/0")
    done = finished(result.id)
    assert done.status == TaskResultStatus.FAILED
    assert len(done.errors) == 1
    error = done.errors[0]
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "Traceback (most recent call last)" in error.traceback
    assert "raise ValueError(message)" in error.traceback
    assert "hunter2" not in error.traceback
    assert "redis://********@db:6379/0" in error.traceback
    assert done.started_at is not None
    assert done.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        done.return_value  # noqa: B018


def test_status_goes_ready_running_successful(tasks_records: redis.Redis) -> None:
    key = "gate:transitions"
    result = functions.gated.enqueue(key, 30.0)
    assert result.status == TaskResultStatus.READY
    assert functions.gated.get_result(result.id).status == TaskResultStatus.READY
    wait_until(lambda: tasks_records.llen(f"{key}:started"), timeout=30.0, message="gated start")
    running = wait_until(
        lambda: (
            (r := functions.gated.get_result(result.id)).status == TaskResultStatus.RUNNING and r
        ),
        timeout=10.0,
        message="RUNNING",
    )
    assert running.started_at is not None
    assert running.finished_at is None
    assert running.worker_ids[0].startswith("tasks-other-")  # the "other" queue's worker
    fresh = CeleryBackend("default", site.TASKS["default"])
    seen_elsewhere = fresh.get_result(result.id)  # from the STARTED record alone
    assert seen_elsewhere.status == TaskResultStatus.RUNNING
    assert seen_elsewhere.args == [key, 30.0]
    tasks_records.rpush(key, "open")
    done = finished(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == "opened"


def test_an_unknown_id_does_not_exist() -> None:
    backend = task_backends["default"]
    with pytest.raises(TaskResultDoesNotExist, match="no task result"):
        backend.get_result("no-such-task-id")


def test_signals_fire_on_the_web_side_and_on_the_worker(tasks_records: redis.Redis) -> None:
    seen: list[Any] = []

    def enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append((sender, task_result))

    task_enqueued.connect(enqueued)
    try:
        result = functions.add.enqueue(1, 1)
        failing = functions.fail.enqueue("no")
    finally:
        task_enqueued.disconnect(enqueued)
    assert [(s, r.id) for s, r in seen] == [(CeleryBackend, result.id), (CeleryBackend, failing.id)]
    assert seen[0][1].status == TaskResultStatus.READY
    records = signals_of(tasks_records, result.id, 2)
    assert [r["kind"] for r in records] == ["started", "finished"]
    assert records[0]["status"] == "RUNNING"
    assert records[1]["status"] == "SUCCESSFUL"
    assert records[0]["path"] == functions.add.module_path
    assert records[1]["worker_ids"]
    assert records[1]["worker_ids"] == records[0]["worker_ids"]
    failed = signals_of(tasks_records, failing.id, 2)
    assert [r["status"] for r in failed] == ["RUNNING", "FAILED"]
    assert failed[1]["errors"] == ["builtins.ValueError"]


async def test_aenqueue_sends_task_enqueued_to_sync_and_async_receivers() -> None:
    # Signal.send would raise on the loop's thread for the async receiver (after
    # the message was published); aenqueue awaits it instead.
    seen: list[Any] = []

    def on_sync(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append(("sync", sender, task_result.id))

    async def on_async(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append(("async", sender, task_result.id))

    task_enqueued.connect(on_sync)
    try:
        only_sync = await functions.add.aenqueue(1, 2)
        task_enqueued.connect(on_async)
        both = await functions.add.aenqueue(3, 4)
    finally:
        task_enqueued.disconnect(on_sync)
        task_enqueued.disconnect(on_async)
    assert seen[0] == ("sync", CeleryBackend, only_sync.id)
    # Signal.asend's order of sync and async receivers differs among Django versions.
    assert sorted(seen[1:]) == [("async", CeleryBackend, both.id), ("sync", CeleryBackend, both.id)]
    assert len(seen) == 3


async def test_a_forged_function_path_is_rejected_never_imported(
    tasks_controller: Any, tasks_records: redis.Redis, tasks_workers: dict[str, Any]
) -> None:
    from aceleryctl.backends.records import RUNNER_NAME

    runner = tasks_controller.app.tasks[RUNNER_NAME]
    forged = [
        "tests.integration.tasks.canary.explode",
        "os.system",
        "tests.integration.tasks.functions.records",  # in a task module, not a @task
    ]
    sent = []
    for path in forged:
        sent.append(await tasks_controller.apply_async(runner, [path, "default", None, "true"]))
    worker = tasks_workers["main"]
    for path in forged:
        wait_until(
            lambda p=path: f"{p!r} is not a @task function" in worker.log(),
            timeout=30.0,
            message=f"the rejection of {path} in the worker's log",
        )
    assert tasks_records.llen("canary:imported") == 0
    assert tasks_records.llen("canary:called") == 0
    assert "ERROR" in worker.log()
    # The worker goes on: a real task after them runs.
    after = await functions.add.aenqueue(4, 4)
    import asyncio

    done = await asyncio.to_thread(finished, after.id)
    assert done.return_value == 8
    assert all(r.id for r in sent)
