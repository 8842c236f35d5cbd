"""Fixtures for the live-events tests: Django-configured workers on the real
channels_redis layer, and a listener subscribed to task groups.

Session scope: four ``celery worker`` processes of :mod:`.worker_app`, each on a
queue of its own, started in parallel on the session's redis-server (broker db 3,
results db 4, channel layer db 5):

* ``prefork``: prefork pool, 2 children, success and prerun logging on;
* ``recycle``: prefork pool, 2 children replaced every 5 tasks (forks while the
  main process's emitter runs);
* ``solo``: solo pool, success and prerun logging off;
* ``threads``: threads pool, 4 threads.

Function scope: the test process's ``CHANNEL_LAYERS`` points at the same layer (so
``task.sent``, published here, reaches it), a controller on the live app, and a
:class:`Listener`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from channels_redis.core import RedisChannelLayer
from django.test import override_settings

from aceleryctl import AsyncCeleryController
from aceleryctl.events import TERMINAL_TYPES, TaskEvent, group_name
from aceleryctl.live.sent import LiveEventsListener
from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure
from tests._support.waiting import WaitTimeout
from tests._support.worker import CeleryWorker

from . import worker_app
from . import worker_settings as ws

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
BROKER_DB, RESULTS_DB, LAYER_DB = 3, 4, 5
LAYER_CAPACITY = 20_000

_live_workers: list[CeleryWorker] = []


#: A failed test's report carries the tail of each live worker's log.
pytest_runtest_makereport = attach_on_failure(
    HERE, lambda: [(f"live worker {w.hostname}", w.log_tail(40)) for w in _live_workers]
)


@dataclass(frozen=True)
class LiveWorker:
    """One live worker and where its aceleryctl logs go."""

    worker: CeleryWorker
    queue: str
    log_file: Path  # ACELERYCTL["LOG_FILE"]: the rotating ERROR file
    records_file: Path  # every aceleryctl.signals record, INFO and up
    success_logging: bool
    prerun_logging: bool

    def log(self) -> str:
        """The worker's stdout and stderr so far."""
        return self.worker.log()


_SPECS: dict[str, dict[str, Any]] = {
    "prefork": {"extra": [], "concurrency": 2, "success": True, "prerun": True},
    "recycle": {"extra": ["--max-tasks-per-child=5"], "concurrency": 2},
    "solo": {"extra": ["--pool=solo"], "concurrency": 1},
    "threads": {"extra": ["--pool=threads"], "concurrency": 4},
}


@pytest.fixture(scope="session")
def live_app(redis_server: RedisServer) -> Celery:
    """The live app, pointed at the session's Redis."""
    assert getattr(worker_app.app, "_pool", None) is None, "the live app was used too early"
    worker_app.configure(
        broker_url=redis_server.url(BROKER_DB), result_backend=redis_server.url(RESULTS_DB)
    )
    return worker_app.app


@pytest.fixture(scope="session")
def live_workers(
    live_app: Celery, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LiveWorker]]:
    """The four live workers, started in parallel, stopped at the end of the session."""
    logs = tmp_path_factory.mktemp("live-logs")
    started: dict[str, LiveWorker] = {}
    try:
        for name, spec in _SPECS.items():
            queue = f"live-{name}-{os.getpid()}"
            log_file = logs / name / "celery_logs.txt"
            records_file = logs / f"{name}-records.txt"
            env = {
                "DJANGO_SETTINGS_MODULE": "tests.integration.live.worker_settings",
                worker_app.BROKER_ENV: redis_server.url(BROKER_DB),
                worker_app.BACKEND_ENV: redis_server.url(RESULTS_DB),
                ws.LAYER_ENV: redis_server.url(LAYER_DB),
                ws.LOG_FILE_ENV: str(log_file),
                ws.RECORDS_FILE_ENV: str(records_file),
                ws.SUCCESS_ENV: "1" if spec.get("success") else "0",
                ws.PRERUN_ENV: "1" if spec.get("prerun") else "0",
            }
            worker = CeleryWorker.launch(
                app="tests.integration.live.worker_app",
                name=f"live-{name}-{os.getpid()}",
                queues=[queue],
                env=env,
                cwd=REPO_ROOT,
                concurrency=spec["concurrency"],
                extra_args=spec["extra"],
            )
            _live_workers.append(worker)
            started[name] = LiveWorker(
                worker,
                queue,
                log_file,
                records_file,
                bool(spec.get("success")),
                bool(spec.get("prerun")),
            )
        for live in started.values():
            live.worker.wait_ready(timeout=120.0)
        yield started
    finally:
        for live in started.values():
            live.worker.stop()
        for live in started.values():
            _live_workers.remove(live.worker)
            live.worker.remove_log()


def layer_config(redis_server: RedisServer) -> dict[str, Any]:
    """``CHANNEL_LAYERS`` for the test process: the workers' layer."""
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_server.url(LAYER_DB)], "capacity": LAYER_CAPACITY},
        }
    }


@pytest.fixture
def publishing_here(redis_server: RedisServer) -> Iterator[None]:
    """The test process publishes its events (``task.sent``) to the workers' layer.

    Leaving the override closes the process's emitter (and its thread).
    """
    with override_settings(CHANNEL_LAYERS=layer_config(redis_server)):
        yield
    left = [t.name for t in threading.enumerate() if t.name == "aceleryctl-events"]
    assert not left, "the emitter thread outlived the override"


@pytest.fixture
async def live_controller(
    live_app: Celery, live_workers: dict[str, LiveWorker], publishing_here: None
) -> AsyncIterator[AsyncCeleryController]:
    """A controller on the live app, closed after the test. Its dispatches' task.sent
    come off its LiveEventsListener, as the docs tell users who build their own."""
    ctl = AsyncCeleryController(
        app=live_app, dispatch_timeout=10.0, max_workers=2, listeners=[LiveEventsListener()]
    )
    try:
        yield ctl
    finally:
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)


def order(event: TaskEvent) -> int:
    """The event's order key (a sort key)."""
    return event.order


def lifecycle(events: list[TaskEvent]) -> str:
    """Event types in order-key order, runs of progress collapsed: ``"sent received
    started progress+ retried ..."``."""
    words: list[str] = []
    for event in sorted(events, key=order):
        word = event.type.removeprefix("task.")
        if word == "progress":
            if words and words[-1] == "progress+":
                continue
            word = "progress+"
        words.append(word)
    return " ".join(words)


def expecting(expected: str) -> Callable[[list[TaskEvent]], bool]:
    """A ``collect(until=...)`` predicate: the task's lifecycle is ``expected``."""
    return lambda events: lifecycle(events) == expected


@dataclass
class Received:
    """One event as the listener got it, with its arrival time (``time.time()``)."""

    event: TaskEvent
    arrived: float


@dataclass
class Listener:
    """A channel of the real channels_redis layer, subscribed to task groups."""

    layer: RedisChannelLayer
    channel: str
    groups: set[str] = field(default_factory=set)
    events: dict[str, list[Received]] = field(default_factory=dict)
    #: Events whose order key had come before (the worker's second copy of an
    #: announced task.retried): kept apart, as a subscriber keeps one.
    repeats: dict[str, list[Received]] = field(default_factory=dict)

    async def follow(self, task_ids: Iterable[str]) -> None:
        """Join each task's group (before dispatching, to see ``task.sent``)."""
        for task_id in task_ids:
            group = group_name(task_id)
            await self.layer.group_add(group, self.channel)
            self.groups.add(group)

    async def collect(
        self,
        task_ids: Iterable[str],
        *,
        timeout: float,
        until: str | Callable[[list[TaskEvent]], bool] = "complete",
    ) -> dict[str, list[Received]]:
        """Receive until every one of ``task_ids`` has what ``until`` asks for, for
        at most ``timeout`` seconds: ``"complete"``, its ``task.sent`` and a terminal
        event; ``"terminal"``; an event type; or a predicate on the task's events
        in order-key order.

        Events come from several processes over several connections: ``task.sent``
        from this one, ``task.received`` from the worker's main process, the rest
        from a pool child. They can arrive in any order (a quick task's terminal
        event before its ``task.received``), so wait for what a test expects.

        Every message is validated with ``TaskEvent.from_dict``.

        Raises:
            WaitTimeout: some task did not get there; the message lists what arrived.
        """
        ids = list(task_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def reached(task_id: str) -> bool:
            if callable(until):
                seen = sorted((r.event for r in self.events.get(task_id, [])), key=order)
                return until(seen)
            types = {r.event.type for r in self.events.get(task_id, [])}
            ended = bool(types & TERMINAL_TYPES)
            if until == "complete":
                return ended and "task.sent" in types
            if until == "terminal":
                return ended
            return until in types

        waiting = {t for t in ids if not reached(t)}
        while waiting:
            remaining = deadline - loop.time()
            if remaining <= 0:
                some = sorted(waiting)[:3]
                seen = {t: [r.event.type for r in self.events.get(t, [])] for t in some}
                raise WaitTimeout(
                    f"after {timeout} s, {len(waiting)} tasks had no {until} event; "
                    f"some of them, with what they got: {seen}"
                )
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), remaining)
            except TimeoutError:
                continue
            event = TaskEvent.from_dict(message["event"])
            assert message["type"] == event.type
            got = self.events.setdefault(event.task_id, [])
            if any(r.event.order == event.order for r in got):
                self.repeats.setdefault(event.task_id, []).append(Received(event, time.time()))
                continue
            got.append(Received(event, time.time()))
            if event.task_id in waiting and reached(event.task_id):
                waiting.discard(event.task_id)
        return {t: self.events.get(t, []) for t in ids}


@pytest.fixture
async def listener(redis_server: RedisServer) -> AsyncIterator[Listener]:
    """A listener on its own channels_redis layer instance, closed after the test."""
    # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s for which
    # channels_redis blocks in BZPOPMIN: an idle receive() would then raise
    # redis.exceptions.TimeoutError. A receiving layer needs a longer socket timeout.
    host = {"address": redis_server.url(LAYER_DB), "socket_timeout": 15.0}
    layer = RedisChannelLayer(hosts=[host], capacity=LAYER_CAPACITY)
    channel = await layer.new_channel()
    subscribed = Listener(layer, channel)
    try:
        yield subscribed
    finally:
        for group in subscribed.groups:
            await layer.group_discard(group, channel)
        await layer.close_pools()
