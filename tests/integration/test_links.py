"""``link`` and ``link_error`` callbacks fire on the worker."""

from __future__ import annotations

from aceleryctl import AsyncCeleryController
from aceleryctl.sync import SyncCeleryController

from ._helpers import Records, new_marker
from .celery_app import add, fail, link_target, record_error


async def test_link_receives_the_result(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    result = await controller.apply_async(add, args=(2, 2), link=link_target.s(marker))

    [entry] = await records.wait_for_async(marker)
    assert entry["payload"] == 4
    assert entry["parent_id"] == result.id


async def test_link_error_fires_when_the_task_fails(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    result = await controller.apply_async(
        fail, args=("boom",), link_error=record_error.s(marker=marker)
    )

    [entry] = await records.wait_for_async(marker)
    assert entry["payload"] == {
        "failed_task_id": result.id,
        "exc_type": "IntendedFailure",
        "exc": "boom",
    }


async def test_link_does_not_fire_when_the_task_fails(
    controller: AsyncCeleryController, records: Records
) -> None:
    ok_marker, error_marker = new_marker("ok"), new_marker("error")

    await controller.apply_async(
        fail,
        args=("no callback",),
        link=link_target.s(ok_marker),
        link_error=record_error.s(marker=error_marker),
    )

    await records.wait_for_async(error_marker)
    assert records.get(ok_marker) == []


def test_link_and_link_error_from_the_sync_facade(
    sync_controller: SyncCeleryController, records: Records
) -> None:
    ok_marker, error_marker = new_marker("ok"), new_marker("error")

    sync_controller.apply_async(add, args=(1, 2), link=link_target.s(ok_marker))
    sync_controller.apply_async(
        fail, args=("sync",), link_error=record_error.s(marker=error_marker)
    )

    assert records.wait_for(ok_marker)[0]["payload"] == 3
    assert records.wait_for(error_marker)[0]["payload"]["exc"] == "sync"
