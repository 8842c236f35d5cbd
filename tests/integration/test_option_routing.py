"""Routing options, ``headers`` and ``task_id`` arrive at the worker."""

from __future__ import annotations

import uuid

from celery.result import AsyncResult

from aceleryctl import AsyncCeleryController
from aceleryctl.sync import SyncCeleryController
from tests._support.worker import CeleryWorker

from ._helpers import Records, new_marker
from .celery_app import SPECIAL_QUEUE, echo_request, record

RESULT_TIMEOUT = 20.0


async def test_queue_reaches_only_the_worker_on_that_queue(
    controller: AsyncCeleryController,
    records: Records,
    default_worker: CeleryWorker,
    special_worker: CeleryWorker,
) -> None:
    marker = new_marker()

    results = [
        await controller.apply_async(record, args=(marker, i), queue=SPECIAL_QUEUE)
        for i in range(6)
    ]

    entries = await records.wait_for_async(marker, count=len(results))
    assert {entry["hostname"] for entry in entries} == {special_worker.hostname}
    assert {entry["routing_key"] for entry in entries} == {SPECIAL_QUEUE}
    assert sorted(entry["task_id"] for entry in entries) == sorted(r.id for r in results)
    # And the default queue still goes to the default worker only.
    default_marker = new_marker()
    await controller.delay(record, default_marker)
    [entry] = await records.wait_for_async(default_marker)
    assert entry["hostname"] == default_worker.hostname


async def test_queue_with_its_routing_key(
    controller: AsyncCeleryController, special_worker: CeleryWorker
) -> None:
    result = await controller.apply_async(
        echo_request, queue=SPECIAL_QUEUE, routing_key=SPECIAL_QUEUE
    )

    seen = result.get(timeout=RESULT_TIMEOUT)
    assert seen["hostname"] == special_worker.hostname
    assert seen["routing_key"] == SPECIAL_QUEUE


async def test_headers_and_task_id_arrive(controller: AsyncCeleryController) -> None:
    task_id = f"chosen-{uuid.uuid4()}"
    headers = {"x-correlation-id": "corr-123", "x-tenant": "acme"}

    result = await controller.apply_async(
        echo_request, args=tuple(headers), task_id=task_id, headers=headers
    )

    assert result.id == task_id
    seen = result.get(timeout=RESULT_TIMEOUT)
    assert seen["task_id"] == task_id
    assert seen["headers"] == headers


def test_headers_and_task_id_arrive_from_the_sync_facade(
    sync_controller: SyncCeleryController,
) -> None:
    task_id = f"chosen-{uuid.uuid4()}"

    result = sync_controller.apply_async(
        echo_request, args=("x-trace",), task_id=task_id, headers={"x-trace": "t-1"}
    )

    assert isinstance(result, AsyncResult)
    assert result.id == task_id
    seen = result.get(timeout=RESULT_TIMEOUT)
    assert (seen["task_id"], seen["headers"]) == (task_id, {"x-trace": "t-1"})


async def test_send_task_honours_queue_and_task_id(
    controller: AsyncCeleryController, special_worker: CeleryWorker
) -> None:
    task_id = f"by-name-{uuid.uuid4()}"

    result = await controller.send_task(
        "aceleryctl_tests.echo_request", task_id=task_id, queue=SPECIAL_QUEUE
    )

    seen = result.get(timeout=RESULT_TIMEOUT)
    assert (seen["task_id"], seen["hostname"]) == (task_id, special_worker.hostname)
