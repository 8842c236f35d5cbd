"""``aread_meta``: a task's stored meta read on the loop (Redis) or in a thread."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.awaiting import aread_meta
from tests._support.redis_server import RedisServer
from tests.integration.celery_app import IntendedFailure, add, fail

RESULT_TIMEOUT = 20.0


async def test_the_meta_of_a_finished_task_as_the_backend_stores_it(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(add, 2, 3)
    result.get(timeout=RESULT_TIMEOUT)
    threads = threading.active_count()

    meta = await aread_meta(celery_app, result.id)

    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert meta is not None
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", 5, result.id)
    assert meta["name"] == "aceleryctl_tests.add"  # result_extended is on
    assert meta == celery_app.backend.get_task_meta(result.id, cache=False)


async def test_a_failure_comes_back_with_its_exception_rebuilt(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(fail, "meta")
    with pytest.raises(IntendedFailure):
        result.get(timeout=RESULT_TIMEOUT)

    meta = await aread_meta(celery_app, result.id)

    assert meta is not None
    assert meta["status"] == "FAILURE"
    assert isinstance(meta["result"], IntendedFailure)
    assert "IntendedFailure" in meta["traceback"]


async def test_nothing_stored_is_none(celery_app: Celery) -> None:
    assert await aread_meta(celery_app, str(uuid.uuid4())) is None


async def test_an_empty_task_id_is_refused(celery_app: Celery) -> None:
    with pytest.raises(ValueError, match="non-empty task id"):
        await aread_meta(celery_app, "")


@pytest.fixture
def prefixed_app(redis_server: RedisServer) -> Iterator[Celery]:
    """An app whose result keys carry a ``global_keyprefix``."""
    app = Celery("prefixed", set_as_current=False, broker="memory://")
    app.conf.update(
        result_backend=redis_server.url(1),
        result_backend_transport_options={"global_keyprefix": "tenant7"},
        result_serializer="json",
        result_accept_content=["json"],
    )
    try:
        yield app
    finally:
        app.close()


async def test_the_global_keyprefix_is_honoured(
    prefixed_app: Celery, redis_server: RedisServer
) -> None:
    task_id = str(uuid.uuid4())
    prefixed_app.backend.store_result(task_id, {"answer": 42}, "SUCCESS")
    raw = redis_server.client(1)
    try:
        assert raw.exists(f"tenant7_celery-task-meta-{task_id}")
    finally:
        raw.close()

    meta = await aread_meta(prefixed_app, task_id)

    assert meta is not None
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"answer": 42})


async def test_another_backend_is_read_in_a_thread() -> None:
    app = Celery("cached", set_as_current=False, broker="memory://", backend="cache+memory://")
    try:
        task_id = str(uuid.uuid4())
        assert await aread_meta(app, task_id) is None
        app.backend.store_result(task_id, [1, 2], "SUCCESS")

        meta = await aread_meta(app, task_id)

        assert meta is not None
        assert (meta["status"], meta["result"]) == ("SUCCESS", [1, 2])
    finally:
        app.close()
