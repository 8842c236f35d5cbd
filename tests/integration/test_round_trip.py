"""A dispatch reaches a real worker and its result comes back, async and sync."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult, EagerResult

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import AsyncContextError
from aceleryctl.sync import SyncCeleryController

from ._helpers import Records, new_marker, release_thread_backend
from .celery_app import add, record

RESULT_TIMEOUT = 20.0


async def test_delay_from_a_coroutine_returns_a_result_the_worker_completes(
    controller: AsyncCeleryController,
) -> None:
    result = await controller.delay(add, 2, 3)

    assert isinstance(result, AsyncResult)
    assert result.get(timeout=RESULT_TIMEOUT) == 5
    assert result.state == "SUCCESS"


async def test_apply_async_with_args_and_kwargs(controller: AsyncCeleryController) -> None:
    result = await controller.apply_async(add, args=(4,), kwargs={"y": 5})

    assert result.get(timeout=RESULT_TIMEOUT) == 9


def test_sync_facade_round_trip_on_the_main_thread(sync_controller: SyncCeleryController) -> None:
    result = sync_controller.delay(add, 20, 22)

    assert isinstance(result, AsyncResult)
    assert result.get(timeout=RESULT_TIMEOUT) == 42


async def test_sync_facade_from_a_plain_thread_while_the_loop_runs(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    outcome: dict[str, object] = {}

    def legacy_view() -> None:
        # A plain thread (a WSGI worker thread, say): dispatch and wait right here.
        try:
            outcome["value"] = controller.sync.delay(add, 7, 8).get(timeout=RESULT_TIMEOUT)
        except BaseException as exc:  # reported to the test below
            outcome["error"] = exc
        finally:
            release_thread_backend(celery_app)

    thread = threading.Thread(target=legacy_view, name="legacy-view", daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, RESULT_TIMEOUT + 5)

    assert not thread.is_alive(), "the sync call did not return in time"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"] == 15


async def test_sync_facade_on_the_event_loop_thread_refuses_at_once(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    with pytest.raises(AsyncContextError, match="await"):
        controller.sync.delay(record, marker)

    # Nothing was sent: a sentinel through the same queue runs, the refused call never.
    sentinel = new_marker("sentinel")
    await controller.delay(record, sentinel)
    await records.wait_for_async(sentinel)
    assert records.get(marker) == []


async def test_send_task_by_name(controller: AsyncCeleryController) -> None:
    result = await controller.send_task("aceleryctl_tests.add", args=(1, 1))

    assert result.get(timeout=RESULT_TIMEOUT) == 2


def test_send_task_by_name_from_the_sync_facade(sync_controller: SyncCeleryController) -> None:
    result = sync_controller.send_task("aceleryctl_tests.add", args=(2, 2))

    assert result.get(timeout=RESULT_TIMEOUT) == 4


async def test_zero_argument_callable_is_dispatched_and_its_result_returned(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()
    publishing_threads: list[str] = []

    def dispatch() -> AsyncResult[Any]:
        publishing_threads.append(threading.current_thread().name)
        return record.delay(marker, payload="wrapped")

    result = await controller.delay(dispatch)

    assert isinstance(result, AsyncResult)
    entries = await records.wait_for_async(marker)
    assert entries[0]["task_id"] == result.id
    assert entries[0]["payload"] == "wrapped"
    # The wrapper ran once, on a publishing thread, not on the event loop.
    assert len(publishing_threads) == 1
    assert publishing_threads[0] != threading.current_thread().name


async def test_signature_is_dispatched(controller: AsyncCeleryController) -> None:
    result = await controller.delay(add.s(10, 5))

    assert result.get(timeout=RESULT_TIMEOUT) == 15


async def test_apply_runs_in_process_and_returns_an_eager_result(
    controller: AsyncCeleryController,
) -> None:
    result = await controller.apply(add, args=(3, 4))

    assert isinstance(result, EagerResult)
    assert result.get() == 7


def test_apply_from_the_sync_facade(sync_controller: SyncCeleryController) -> None:
    result = sync_controller.apply(add, args=(5, 6))

    assert isinstance(result, EagerResult)
    assert result.get() == 11
