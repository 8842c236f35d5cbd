"""Fixtures for the Django Tasks backend tests: Django-configured workers running
``@task`` functions, on the session's redis-server (broker db 7, results db 14,
records db 15).

Session scope: two prefork workers of :mod:`.worker_app`: ``main`` consumes Celery's
default queue of the app (Django's ``"default"``), ``other`` the queue Django's
``"other"`` maps to. Function scope: a controller on the tasks app behind the
backend's ``OPTIONS["CONTROLLER"]`` (closed after the test, with the loop's Redis
endpoints ``aget_result`` opened), and the records database, emptied.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure
from tests._support.worker import CeleryWorker

from . import site, worker_app
from .functions import RECORDS_ENV

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
BROKER_DB, RESULTS_DB, RECORDS_DB, LAYER_DB = 7, 14, 15, 5

_tasks_workers: list[CeleryWorker] = []

#: A failed test's report carries the tail of each tasks worker's log.
pytest_runtest_makereport = attach_on_failure(
    HERE, lambda: [(f"tasks worker {w.hostname}", w.log_tail(40)) for w in _tasks_workers]
)


def worker_env(redis_server: RedisServer) -> dict[str, str]:
    """The environment of a tasks worker."""
    return {
        "DJANGO_SETTINGS_MODULE": "tests.integration.tasks.worker_settings",
        worker_app.BROKER_ENV: redis_server.url(BROKER_DB),
        worker_app.BACKEND_ENV: redis_server.url(RESULTS_DB),
        RECORDS_ENV: redis_server.url(RECORDS_DB),
        "ACELERYCTL_TASKS_LAYER_URL": redis_server.url(LAYER_DB),
    }


def launch(redis_server: RedisServer, name: str, queue: str, concurrency: int = 2) -> CeleryWorker:
    """Start a tasks worker consuming ``queue`` (not waiting for it)."""
    worker = CeleryWorker.launch(
        app="tests.integration.tasks.worker_app",
        name=f"tasks-{name}-{os.getpid()}",
        queues=[queue],
        env=worker_env(redis_server),
        cwd=REPO_ROOT,
        concurrency=concurrency,
    )
    _tasks_workers.append(worker)
    return worker


def stop(worker: CeleryWorker) -> None:
    """Stop a worker :func:`launch` started."""
    worker.stop()
    _tasks_workers.remove(worker)
    worker.remove_log()


@pytest.fixture(scope="session")
def tasks_app(redis_server: RedisServer) -> Celery:
    """The tasks app, pointed at the session's Redis."""
    assert getattr(worker_app.app, "_pool", None) is None, "the tasks app was used too early"
    worker_app.configure(
        broker_url=redis_server.url(BROKER_DB), result_backend=redis_server.url(RESULTS_DB)
    )
    os.environ[RECORDS_ENV] = redis_server.url(RECORDS_DB)
    return worker_app.app


@pytest.fixture(scope="session")
def tasks_workers(
    tasks_app: Celery, redis_server: RedisServer
) -> Iterator[dict[str, CeleryWorker]]:
    """``{"main": ..., "other": ...}``, started in parallel, stopped at the end."""
    started = {
        "main": launch(redis_server, "main", site.DEFAULT_QUEUE),
        "other": launch(redis_server, "other", site.OTHER_QUEUE),
    }
    try:
        for worker in started.values():
            worker.wait_ready(timeout=120.0)
        yield started
    finally:
        for worker in started.values():
            stop(worker)


@pytest.fixture
def tasks_records(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The records database, emptied before the test."""
    client = redis_server.client(RECORDS_DB)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def tasks_controller(
    tasks_app: Celery, tasks_workers: dict[str, CeleryWorker]
) -> AsyncIterator[object]:
    """A controller on the tasks app, behind the backend's CONTROLLER; closed after."""
    from aceleryctl import AsyncCeleryController
    from aceleryctl.awaiting import aclose_endpoints

    ctl = AsyncCeleryController(app=tasks_app, dispatch_timeout=10.0, max_workers=2)
    site.use(ctl)
    try:
        yield ctl
    finally:
        site.use(None)
        await aclose_endpoints()  # aget_result's redis.asyncio connections of this loop
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)
        gc.collect()
