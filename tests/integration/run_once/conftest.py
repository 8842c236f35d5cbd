"""Fixtures for the run-once tests: real ``celery worker`` processes of
:mod:`.worker_app` with the guard on, off, or pointed at a Redis that is not there.

Session scope, on the session's redis-server (broker db 10, results and the
guard's claims db 11, task records db 12), started in parallel, each on a queue of
its own and writing its ``aceleryctl.guard`` records to a file of its own:

* ``guarded``: prefork pool, 2 children, the guard on (its Redis: the result backend);
* ``threads``: threads pool, 3 threads, the guard on;
* ``solo``: solo pool, the guard on;
* ``off``: solo pool, ``RUN_ONCE["ENABLED"] = False``;
* ``down``: solo pool, the guard on with ``REDIS_URL`` on a port nothing listens on.

Function scope: :func:`worker_pair` starts two guarded workers on a fresh queue
and a broker database of their own (``broker_db``), for tests that kill or stop
one of them; their transport options are the test's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests._support._process import free_port, read_log
from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure
from tests._support.worker import CeleryWorker

from . import worker_app
from . import worker_settings as ws

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
BROKER_DB, CLAIMS_DB, RECORDS_DB = 10, 11, 12

_running: list[CeleryWorker] = []

#: A failed test's report carries the tail of each run-once worker's log.
pytest_runtest_makereport = attach_on_failure(
    HERE, lambda: [(f"run-once worker {w.hostname}", w.log_tail(40)) for w in _running]
)


@dataclass(frozen=True)
class OnceWorker:
    """One worker, its queue, and the file its ``aceleryctl.guard`` records go to."""

    worker: CeleryWorker
    queue: str
    records_file: Path

    def records(self, level: str | None = None) -> list[str]:
        """The guard's records so far (``"LEVEL aceleryctl.guard message"`` lines)."""
        lines = read_log(self.records_file).splitlines()
        return [line for line in lines if level is None or line.startswith(f"{level} ")]

    def skips(self, task_id: str) -> list[str]:
        """The WARNING records of skipped copies of ``task_id``."""
        return [line for line in self.records("WARNING") if f"[{task_id}]" in line]


def _launch(
    redis_server: RedisServer,
    *,
    name: str,
    queue: str,
    setting: dict[str, Any],
    pool: str,
    concurrency: int,
    broker_db: int = BROKER_DB,
    transport: dict[str, Any] | None = None,
) -> OnceWorker:
    fd, path = tempfile.mkstemp(prefix=f"aceleryctl-once-{name}-", suffix=".records")
    os.close(fd)
    env = {
        worker_app.BROKER_ENV: redis_server.url(broker_db),
        worker_app.BACKEND_ENV: redis_server.url(CLAIMS_DB),
        worker_app.RECORDS_ENV: redis_server.url(RECORDS_DB),
        worker_app.TRANSPORT_ENV: json.dumps(transport or {}),
        ws.RUN_ONCE_ENV: json.dumps(setting),
        ws.RECORDS_FILE_ENV: path,
        "DJANGO_SETTINGS_MODULE": "tests.integration.run_once.worker_settings",
    }
    worker = CeleryWorker.launch(
        app="tests.integration.run_once.worker_app",
        name=f"once-{name}-{os.getpid()}",
        queues=[queue],
        env=env,
        cwd=REPO_ROOT,
        concurrency=concurrency,
        extra_args=[f"--pool={pool}"],
    )
    _running.append(worker)
    return OnceWorker(worker, queue, Path(path))


def _stop(started: list[OnceWorker]) -> None:
    for once in started:
        once.worker.stop()
    for once in started:
        with contextlib.suppress(ValueError):
            _running.remove(once.worker)
        once.worker.remove_log()
        once.records_file.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def once_app(redis_server: RedisServer) -> Celery:
    """The run-once app, pointed at the session's Redis (publishes from this process)."""
    assert getattr(worker_app.app, "_pool", None) is None, "the run-once app was used too early"
    worker_app.configure(
        broker_url=redis_server.url(BROKER_DB),
        result_backend=redis_server.url(CLAIMS_DB),
        records_url=redis_server.url(RECORDS_DB),
    )
    return worker_app.app


_SPECS: dict[str, dict[str, Any]] = {
    "guarded": {"setting": {"ENABLED": True}, "pool": "prefork", "concurrency": 2},
    "threads": {"setting": {"ENABLED": True}, "pool": "threads", "concurrency": 3},
    "solo": {"setting": {"ENABLED": True}, "pool": "solo", "concurrency": 1},
    "off": {"setting": {"ENABLED": False}, "pool": "solo", "concurrency": 1},
    "down": {"setting": {"ENABLED": True}, "pool": "solo", "concurrency": 1},
}


@pytest.fixture(scope="session")
def once_workers(once_app: Celery, redis_server: RedisServer) -> Iterator[dict[str, OnceWorker]]:
    """The session workers, by name (see the module docstring)."""
    started: list[OnceWorker] = []
    try:
        for name, spec in _SPECS.items():
            setting = dict(spec["setting"])
            if name == "down":
                setting["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
            started.append(
                _launch(
                    redis_server,
                    name=name,
                    queue=f"once-{name}",
                    setting=setting,
                    pool=spec["pool"],
                    concurrency=spec["concurrency"],
                )
            )
        for once in started:
            once.worker.wait_ready(timeout=120.0)
        yield dict(zip(_SPECS, started, strict=True))
    finally:
        _stop(started)


@pytest.fixture
def records(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the records database."""
    client = redis_server.client(RECORDS_DB)
    yield client
    client.close()


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session workers' broker database."""
    client = redis_server.client(BROKER_DB)
    yield client
    client.close()


def in_broker(broker: redis.Redis, queue: str, task_id: str) -> int:
    """How many messages of ``task_id`` the broker still holds: waiting in ``queue``,
    or delivered and not acked (kombu's ``unacked`` hash)."""
    held = [*broker.lrange(queue, 0, -1), *broker.hvals("unacked")]
    return sum(task_id.encode() in raw for raw in held)


@pytest.fixture
def claims(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the database the guard keeps its claims in (the result backend)."""
    client = redis_server.client(CLAIMS_DB)
    yield client
    client.close()


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


PairFactory = Callable[..., list[OnceWorker]]


@pytest.fixture
def worker_pair(once_app: Celery, redis_server: RedisServer) -> Iterator[PairFactory]:
    """Start two guarded prefork workers (1 child each) on a fresh queue and a broker
    database of their own: ``worker_pair(broker_db=13, transport={...})``. Stopped
    after the test (those still alive)."""
    started: list[OnceWorker] = []

    def start(*, broker_db: int, transport: dict[str, Any] | None = None) -> list[OnceWorker]:
        redis_server.client(broker_db).flushdb()
        queue = unique("once-pair")
        pair = [
            _launch(
                redis_server,
                name=f"pair{n}",
                queue=queue,
                setting={"ENABLED": True},
                pool="prefork",
                concurrency=1,
                broker_db=broker_db,
                transport=transport,
            )
            for n in (1, 2)
        ]
        started.extend(pair)
        for once in pair:
            once.worker.wait_ready(timeout=120.0)
        return pair

    yield start
    _stop(started)
