"""Execution-time log records of real workers: what the settings enable, no secret."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from aceleryctl import AsyncCeleryController
from aceleryctl.correlation import CORRELATION_HEADER
from tests._support.waiting import wait_until

from . import worker_app
from .conftest import Listener, LiveWorker

SECRETS = ("hunter2", "pw-in-url", "LC-planted", "tok-planted-result")
FILE_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - aceleryctl\.signals - (?P<level>[A-Z]+) - "
)


def read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


async def run_both(
    controller: AsyncCeleryController, listener: Listener, worker: LiveWorker, correlation: str
) -> tuple[str, str]:
    """A journey with one retry and a failing task on ``worker``: their ids."""
    journey_id, explode_id = str(uuid.uuid4()), str(uuid.uuid4())
    await listener.follow([journey_id, explode_id])
    await controller.apply_async(
        worker_app.journey,
        (2, 1),
        task_id=journey_id,
        queue=worker.queue,
        headers={CORRELATION_HEADER: correlation},
    )
    await controller.apply_async(
        worker_app.explode,
        ("bob",),
        {"launch_code": "LC-planted-4242"},
        task_id=explode_id,
        queue=worker.queue,
    )
    await listener.collect([journey_id, explode_id], timeout=90)
    return journey_id, explode_id


def lines_of(text: str, task_id: str) -> list[str]:
    return [line for line in text.splitlines() if task_id in line]


async def test_records_and_file_hold_what_the_settings_enable_and_no_secret(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    worker = live_workers["prefork"]  # success and prerun logging on
    journey_id, explode_id = await run_both(live_controller, listener, worker, "corr-log-1")
    records = wait_until(
        lambda: (
            (text := read(worker.records_file))
            and f"Task failed: task=live.explode task_id={explode_id}" in text
            and f"Task succeeded: task=live.journey task_id={journey_id}" in text
            and text
        ),
        timeout=30,
        message=lambda: read(worker.records_file)[-2000:],
    )
    journey = lines_of(records, journey_id)
    prefix = "aceleryctl.signals correlation_id=corr-log-1"
    started = f"Task started: task=live.journey task_id={journey_id} args=[2, 1] kwargs={{}}"
    assert f"INFO {prefix} {started}" in journey
    retry = [line for line in journey if "Task retry" in line]
    assert len(retry) == 1
    assert retry[0].startswith(f"WARNING {prefix} Task retry: task=live.journey")
    assert (
        "reason=Flaky: try again: redis://********@cache:6379/0 (attempt 0) attempt=1 of 3 eta=20"
        in retry[0]
    )
    succeeded = [line for line in journey if "Task succeeded" in line]
    assert len(succeeded) == 1
    assert succeeded[0].startswith(f"INFO {prefix} Task succeeded: task=live.journey")
    assert re.search(
        r"runtime=\d+\.\d{6}s result=\{'done': True, 'attempts': 2, 'api_token': '\*{8}'\}",
        succeeded[0],
    )
    failed = [line for line in lines_of(records, explode_id) if "Task failed" in line]
    assert failed == [
        f"ERROR aceleryctl.signals correlation_id=- Task failed: task=live.explode "
        f"task_id={explode_id} args=['bob'] kwargs={{'launch_code': '********'}} "
        "exception=BrokenPromise: cannot reach redis://********@db:6379/0 for bob"
    ]
    assert "Traceback (most recent call last)" in records
    for secret in SECRETS:
        assert secret not in records

    log_file = read(worker.log_file)
    assert f"Task failed: task=live.explode task_id={explode_id}" in log_file
    levels = {m.group("level") for m in FILE_LINE.finditer(log_file)}
    assert levels == {"ERROR"}
    assert "Traceback (most recent call last)" in log_file
    assert "BrokenPromise: cannot reach redis://********@db:6379/0 for bob" in log_file
    assert "Task started" not in log_file
    assert "Task succeeded" not in log_file
    for secret in SECRETS:
        assert secret not in log_file


async def test_success_and_prerun_records_are_off_by_default(
    live_workers: dict[str, LiveWorker],
    live_controller: AsyncCeleryController,
    listener: Listener,
) -> None:
    worker = live_workers["solo"]  # success and prerun logging off
    journey_id, explode_id = await run_both(live_controller, listener, worker, "corr-log-2")
    records = wait_until(
        lambda: (
            (text := read(worker.records_file))
            and f"task_id={explode_id}" in text
            and f"task_id={journey_id}" in text
            and text
        ),
        timeout=30,
        message=lambda: read(worker.records_file)[-2000:],
    )
    journey = lines_of(records, journey_id)
    assert [line.split(" Task ")[1].split(":")[0] for line in journey] == ["retry"]
    assert journey[0].startswith("WARNING aceleryctl.signals correlation_id=corr-log-2 Task retry")
    assert len([line for line in lines_of(records, explode_id) if "Task failed" in line]) == 1
    assert "Task started" not in records
    assert "Task succeeded" not in records
    for secret in SECRETS:
        assert secret not in records + read(worker.log_file)
