"""Helpers the integration tests share: worker-side records and broker inspection."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from celery import Celery, Task

from tests._support.broker_messages import BrokerMessage, queue_keys, read_queue
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until, wait_until_async
from tests._support.worker import CeleryWorker

from . import celery_app as shared
from .celery_app import record_key

__all__ = [
    "Broker",
    "Records",
    "isolated_app",
    "new_marker",
    "release_thread_backend",
    "shared_app_worker",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def new_marker(prefix: str = "m") -> str:
    """A marker no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def isolated_app(name: str, broker_url: str, result_backend: str) -> Celery:
    """A Celery app of its own (not the shared one, never made current) for fault tests.

    It has two tasks the workers know, ``aceleryctl_tests.add`` and
    ``aceleryctl_tests.record`` (their bodies run in the workers, not here), and
    bounded client timeouts.
    """
    app = Celery(name, set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_backend,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 10.0, "socket_connect_timeout": 2.0},
        redis_socket_timeout=10.0,
        redis_socket_connect_timeout=2.0,
    )

    @app.task(shared=False, name="aceleryctl_tests.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="aceleryctl_tests.record", bind=True)
    def record(self: Task[Any, Any], marker: str, payload: Any = None) -> str:
        return marker

    app.finalize()
    return app


@contextlib.contextmanager
def shared_app_worker(
    name: str,
    broker_url: str,
    redis_server: RedisServer,
    *,
    queues: Sequence[str] = ("celery",),
    env: Mapping[str, str] | None = None,
) -> Iterator[CeleryWorker]:
    """A prefork worker of the shared test app (``tests.integration.celery_app``)
    consuming ``queues`` on ``broker_url``, its results and execution records in
    ``redis_server`` (dbs 1 and 2, where they outlive a broker the test breaks);
    ``env`` adds to its environment. Stopped, its log removed, when the block ends.
    """
    worker_env = {
        shared.BROKER_ENV: broker_url,
        shared.BACKEND_ENV: redis_server.url(1),
        shared.RECORDS_ENV: redis_server.url(2),
        **(env or {}),
    }
    worker = CeleryWorker.start(
        app="tests.integration.celery_app", name=name, queues=queues, env=worker_env, cwd=REPO_ROOT
    )
    with worker.scoped():
        yield worker


def release_thread_backend(app: Celery) -> None:
    """Close this thread's Celery result backend connections; call before the thread ends.

    Celery keeps one result backend per thread. A thread that waited on a result
    holds Redis connections (and a pub/sub subscription) that nobody closes when
    it exits: the sockets are then reported unclosed (ResourceWarning) whenever the
    garbage collector gets to them, possibly during another test.
    """
    backend = app.backend
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
    client = getattr(backend, "client", None)
    if client is not None:
        client.connection_pool.disconnect()


class Records:
    """What tasks wrote with :func:`tests.integration.celery_app.record` (and friends).

    Each entry is a dict with at least ``start`` (``time.time()`` in the worker, in
    seconds); entries written by ``record`` also carry the request summary
    (``task_id``, ``hostname``, ``routing_key``, ...).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, marker: str) -> list[dict[str, Any]]:
        """Every entry recorded for ``marker`` so far, in order."""
        raw = cast("list[bytes]", self.client.lrange(record_key(marker), 0, -1))
        return [json.loads(item) for item in raw]

    def count(self, marker: str) -> int:
        """How many entries ``marker`` has."""
        return int(self.client.llen(record_key(marker)))

    def _at_least(self, marker: str, count: int) -> list[dict[str, Any]] | None:
        entries = self.get(marker)
        return entries if len(entries) >= count else None

    def wait_for(self, marker: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait (bounded, blocking this thread) until ``marker`` has ``count`` entries."""
        return wait_until(
            lambda: self._at_least(marker, count),
            timeout=timeout,
            message=lambda: f"{count} record(s) for {marker!r}; have {self.get(marker)!r}",
        )

    async def wait_for_async(
        self, marker: str, count: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """:meth:`wait_for` that keeps the event loop running between checks."""
        return await wait_until_async(
            lambda: self._at_least(marker, count),
            timeout=timeout,
            message=lambda: f"{count} record(s) for {marker!r}; have {self.get(marker)!r}",
        )


class Broker:
    """A look at the broker and result databases, without consuming anything."""

    def __init__(self, client: redis.Redis, results: redis.Redis) -> None:
        self.client = client
        self.results = results

    def messages(self, queue: str) -> list[BrokerMessage]:
        """Every message waiting in ``queue``."""
        return read_queue(self.client, queue)

    def task_ids(self, queue: str) -> list[str]:
        """The task ids of every message waiting in ``queue``."""
        return [message.task_id for message in self.messages(queue)]

    def purge(self, queue: str) -> None:
        """Delete ``queue``'s messages (all priorities)."""
        keys = queue_keys(self.client, queue)
        if keys:
            self.client.delete(*keys)

    def result_state(self, task_id: str) -> str | None:
        """The state stored in the result backend for ``task_id``, or None."""
        raw = cast("bytes | None", self.results.get(f"celery-task-meta-{task_id}"))
        if raw is None:
            return None
        state: str = json.loads(raw)["status"]
        return state

    async def wait_for_state_async(self, task_id: str, state: str, timeout: float = 20.0) -> None:
        """Wait (bounded, the loop running) until the stored state of ``task_id`` is ``state``."""
        await wait_until_async(
            lambda: self.result_state(task_id) == state,
            timeout=timeout,
            message=lambda: f"task {task_id} in state {state}; it is {self.result_state(task_id)}",
        )
