"""Groups, chains and chords arrive, and their results work in the caller's thread.

Celery's result backend is per thread: a ``GroupResult`` built on a publishing
thread waits on that thread's backend, and ``.get()`` in the caller's thread never
completes. The controller must rebuild results for the caller's thread; these
tests would time out (and fail the backend identity checks) if it did not.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from celery import Celery, chain, chord, group
from celery.result import AsyncResult, GroupResult, ResultBase

from aceleryctl import AsyncCeleryController
from aceleryctl.sync import SyncCeleryController

from ._helpers import release_thread_backend
from .celery_app import add, xsum

RESULT_TIMEOUT = 20.0


def _assert_bound_to_this_thread(result: ResultBase, app: Celery) -> None:
    """Every node of ``result`` (children and parents) uses this thread's backend."""
    backend = app.backend  # thread-local: this thread's instance
    stack: list[Any] = [result]
    while stack:
        node = stack.pop()
        assert node.backend is backend, f"{node!r} holds another thread's result backend"
        if isinstance(node, GroupResult):
            stack.extend(node.results or ())
        if node.parent is not None:
            stack.append(node.parent)


async def test_group_result_get_works_on_the_callers_thread(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(group(add.s(i, i) for i in range(5)))

    assert isinstance(result, GroupResult)
    _assert_bound_to_this_thread(result, celery_app)
    assert result.get(timeout=RESULT_TIMEOUT) == [0, 2, 4, 6, 8]


def _get_on_this_thread(result: ResultBase, app: Celery) -> Any:
    """``result.get()`` on the calling (worker) thread, its backend released after."""
    try:
        return result.get(timeout=RESULT_TIMEOUT)
    finally:
        release_thread_backend(app)


async def test_group_result_get_works_from_another_thread(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    # Stock Celery times out here: the group joins through the waiting thread's
    # backend, its members were registered with the building thread's.
    for run in range(3):
        result = await controller.delay(group(add.s(i, run) for i in range(3)))

        values = await asyncio.to_thread(_get_on_this_thread, result, celery_app)

        assert values == [run, run + 1, run + 2]
        assert result.get(timeout=RESULT_TIMEOUT) == values  # and still on this thread


async def test_chord_header_and_callback_from_another_thread(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(chord((add.s(i, i) for i in range(3)), xsum.s()))
    assert isinstance(result.parent, GroupResult)

    header = await asyncio.to_thread(_get_on_this_thread, result.parent, celery_app)
    total = await asyncio.to_thread(_get_on_this_thread, result, celery_app)

    assert (header, total) == ([0, 2, 4], 6)


async def test_group_with_apply_async_options(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.apply_async(group(add.s(i, 1) for i in range(3)), countdown=0.1)

    assert isinstance(result, GroupResult)
    _assert_bound_to_this_thread(result, celery_app)
    assert result.get(timeout=RESULT_TIMEOUT) == [1, 2, 3]


async def test_group_result_from_the_sync_facade_in_a_plain_thread(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    values: list[object] = []
    errors: list[BaseException] = []

    def legacy_view() -> None:
        try:
            result = controller.sync.delay(group(add.s(i, 10) for i in range(4)))
            _assert_bound_to_this_thread(result, celery_app)
            values.append(result.get(timeout=RESULT_TIMEOUT))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            release_thread_backend(celery_app)

    thread = threading.Thread(target=legacy_view, name="legacy-view", daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, RESULT_TIMEOUT + 5)

    assert not thread.is_alive(), "the sync call did not return in time"
    if errors:
        raise AssertionError("the sync facade failed in a plain thread") from errors[0]
    assert values == [[10, 11, 12, 13]]


def test_group_result_from_the_sync_facade(
    sync_controller: SyncCeleryController, celery_app: Celery
) -> None:
    result = sync_controller.delay(group(add.s(i, 2) for i in range(3)))

    _assert_bound_to_this_thread(result, celery_app)
    assert result.get(timeout=RESULT_TIMEOUT) == [2, 3, 4]


async def test_chain_result_and_its_parents(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(chain(add.s(1, 2), add.s(3), add.s(4)))

    assert isinstance(result, AsyncResult)
    _assert_bound_to_this_thread(result, celery_app)
    assert result.get(timeout=RESULT_TIMEOUT) == 10
    parent: Any = result.parent
    assert parent is not None
    assert parent.get(timeout=RESULT_TIMEOUT) == 6


async def test_chord_result(controller: AsyncCeleryController, celery_app: Celery) -> None:
    result = await controller.delay(chord((add.s(i, i) for i in range(4)), xsum.s()))

    assert isinstance(result, AsyncResult)
    _assert_bound_to_this_thread(result, celery_app)
    assert result.get(timeout=RESULT_TIMEOUT) == 12


async def test_canvas_with_a_chosen_task_id(controller: AsyncCeleryController) -> None:
    result = await controller.apply_async(chain(add.s(5, 5), add.s(1)), task_id="chain-tail-id")

    assert result.id == "chain-tail-id"
    assert result.get(timeout=RESULT_TIMEOUT) == 11
