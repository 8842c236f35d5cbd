"""On-commit dispatch against a real database transaction (a SQLite file).

Django keeps a transaction on the connection of the thread that opened it. Async
code opens its transactions on asgiref's thread-sensitive thread (everything
``sync_to_async`` runs), either a whole sync function at a time or, as here with
:func:`async_atomic`, by entering and leaving ``atomic`` there across awaits.

Proving absence: after a rollback, a sentinel goes through the same queue and the
test waits for it and for the controller's pool to be idle; only then does it
assert that the rolled-back task never ran and left no message.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections, transaction

from aceleryctl import AsyncCeleryController
from aceleryctl.sync import SyncCeleryController
from tests._support.transactions import async_atomic
from tests._support.waiting import wait_until, wait_until_async

from ._helpers import Broker, Records, new_marker
from .celery_app import echo_request, record

pytestmark = pytest.mark.django_db(transaction=True)

RESULT_TIMEOUT = 20.0


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture
async def close_thread_sensitive_connections() -> AsyncIterator[None]:
    """Close the database connection the thread-sensitive thread opened."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


async def _user_exists(username: str) -> bool:
    return await User.objects.filter(username=username).aexists()


def _short(marker: str) -> str:
    return marker[:150]  # User.username's max_length


async def _wait_until_idle(controller: AsyncCeleryController) -> None:
    def idle() -> bool:
        pool = controller.statistics().pool
        return pool.running == 0 and pool.waiting == 0

    await wait_until_async(idle, timeout=10, message="the controller's pool to be idle")


async def _assert_never_published(
    controller: AsyncCeleryController, records: Records, broker: Broker, marker: str, task_id: str
) -> None:
    sentinel = new_marker("sentinel")
    await controller.delay(record, sentinel)
    await records.wait_for_async(sentinel)
    await _wait_until_idle(controller)
    assert records.get(marker) == [], "the rolled-back task ran"
    assert task_id not in broker.task_ids("celery")
    assert broker.result_state(task_id) is None


# -- async: atomic entered on the thread-sensitive thread, awaits inside -------


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_async_commit_publishes_after_the_commit(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    async with async_atomic():
        await User.objects.acreate(username=_short(marker))
        result = await controller.delay_on_commit(record, marker)
        # Not before the commit: a sentinel sent now runs, the deferred task does not.
        sentinel = new_marker("sentinel")
        await controller.delay(record, sentinel)
        await records.wait_for_async(sentinel)
        await _wait_until_idle(controller)
        assert records.get(marker) == []

    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id
    assert await _user_exists(_short(marker))


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_async_rollback_never_publishes(
    controller: AsyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker()

    with pytest.raises(Rollback):
        async with async_atomic():
            await User.objects.acreate(username=_short(marker))
            result = await controller.delay_on_commit(record, marker)
            raise Rollback

    await _assert_never_published(controller, records, broker, marker, result.id)
    assert not await _user_exists(_short(marker))


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_async_rollback_leaves_no_message_in_the_queue(
    controller: AsyncCeleryController, broker: Broker
) -> None:
    queue = f"parked-{uuid.uuid4().hex}"
    try:
        with pytest.raises(Rollback):
            async with async_atomic():
                rolled_back = await controller.apply_async_on_commit(
                    record, args=("never",), queue=queue
                )
                raise Rollback
        sentinel = await controller.apply_async(record, args=("sentinel",), queue=queue)
        await _wait_until_idle(controller)
        assert broker.task_ids(queue) == [sentinel.id]
        assert rolled_back.id != sentinel.id
    finally:
        broker.purge(queue)


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_async_apply_async_on_commit_passes_options(
    controller: AsyncCeleryController,
) -> None:
    task_id = f"on-commit-{uuid.uuid4()}"

    async with async_atomic():
        result = await controller.apply_async_on_commit(
            echo_request,
            args=("x-trace",),
            task_id=task_id,
            headers={"x-trace": "committed"},
            using="default",
        )
        assert result.id == task_id

    seen = result.get(timeout=RESULT_TIMEOUT)
    assert (seen["task_id"], seen["headers"]) == (task_id, {"x-trace": "committed"})


# -- async view doing its transactional work in one sync function ---------------


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_sync_block_in_an_async_view_commit(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    def create_user_and_dispatch() -> str:
        with transaction.atomic():
            User.objects.create(username=_short(marker))
            result = controller.sync.delay_on_commit(record, marker)
        return str(result.id)

    task_id = await sync_to_async(create_user_and_dispatch, thread_sensitive=True)()

    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == task_id
    assert await _user_exists(_short(marker))


@pytest.mark.usefixtures("close_thread_sensitive_connections")
async def test_sync_block_in_an_async_view_rollback(
    controller: AsyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker()
    ids: list[str] = []

    def create_user_dispatch_and_fail() -> None:
        with transaction.atomic():
            User.objects.create(username=_short(marker))
            ids.append(controller.sync.delay_on_commit(record, marker).id)
            raise Rollback

    with pytest.raises(Rollback):
        await sync_to_async(create_user_dispatch_and_fail, thread_sensitive=True)()

    [task_id] = ids
    await _assert_never_published(controller, records, broker, marker, task_id)
    assert not await _user_exists(_short(marker))


# -- no transaction: published at once ------------------------------------------


async def test_async_without_a_transaction_publishes_at_once(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    result = await controller.delay_on_commit(record, marker)

    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id


def test_sync_without_a_transaction_publishes_at_once(
    sync_controller: SyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    result = sync_controller.delay_on_commit(record, marker)

    assert records.wait_for(marker)[0]["task_id"] == result.id


# -- the sync facade in a plain sync context --------------------------------------


def test_sync_commit_publishes_after_the_commit(
    sync_controller: SyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    with transaction.atomic():
        User.objects.create(username=_short(marker))
        result = sync_controller.delay_on_commit(record, marker)
        sentinel = new_marker("sentinel")
        sync_controller.delay(record, sentinel)
        records.wait_for(sentinel)
        assert records.get(marker) == []

    assert records.wait_for(marker)[0]["task_id"] == result.id
    assert User.objects.filter(username=_short(marker)).exists()


def test_sync_rollback_never_publishes(
    sync_controller: SyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker()

    with pytest.raises(Rollback), transaction.atomic():
        User.objects.create(username=_short(marker))
        result = sync_controller.delay_on_commit(record, marker)
        raise Rollback

    sentinel = new_marker("sentinel")
    sync_controller.delay(record, sentinel)
    records.wait_for(sentinel)
    wait_until(
        lambda: sync_controller.statistics().pool.running == 0,
        timeout=10,
        message="the controller's pool to be idle",
    )
    assert records.get(marker) == []
    assert broker.result_state(result.id) is None
    assert not User.objects.filter(username=_short(marker)).exists()


def test_sync_nested_savepoint_rollback_keeps_the_outer_dispatch(
    sync_controller: SyncCeleryController, records: Records
) -> None:
    outer, inner = new_marker("outer"), new_marker("inner")

    with transaction.atomic():
        sync_controller.delay_on_commit(record, outer)
        with pytest.raises(Rollback), transaction.atomic():
            sync_controller.delay_on_commit(record, inner)
            raise Rollback

    records.wait_for(outer)
    sentinel = new_marker("sentinel")
    sync_controller.delay(record, sentinel)
    records.wait_for(sentinel)
    assert records.get(inner) == []
