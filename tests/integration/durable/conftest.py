"""Fixtures of the durable suite: the outbox end to end, with every part real.

* a broker ``redis-server`` of the suite's own (:class:`FaultBroker`: the tests
  kill, restart, pause and resume it on the same port; it persists with
  ``appendfsync always``, so a kill loses nothing Redis acknowledged) and a prefork
  ``celery worker`` on it that sets Django up with this folder's settings (the
  outbox on, so the run-once guard is on, its claims in the session Redis, db 1);
  execution records go to the session Redis (db 2); the faults never touch it;
* per test, child processes started by this session and stopped by their own ids:
  uvicorn serving the ASGI app and waitress serving the WSGI app
  (:mod:`~tests.integration.durable.views`), and ``manage.py aceleryctl_relay``;
  all read :mod:`~tests.integration.durable.settings`, pointed through the
  environment at the test's database: the SQLite file pytest-django created, or
  the session's PostgreSQL test database (``pg_alias.child_env()``).

Tests choose the database with ``@pytest.mark.parametrize("db_kind", BOTH)`` (or
``[POSTGRES]``), which also carries each one's ``django_db`` mark.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from celery import Celery

from aceleryctl import AsyncCeleryController
from tests._support import pg_alias
from tests._support._process import LoggedProcess, accepts, free_port, spawn
from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure
from tests._support.waiting import WaitTimeout, wait_until
from tests._support.websocket_server import uvicorn_argv
from tests._support.worker import CeleryWorker
from tests.integration import celery_app as shared
from tests.integration._helpers import Records, isolated_app, new_marker
from tests.integration.faults.conftest import FaultBroker

from . import settings as child_settings

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
SETTINGS: Final = "tests.integration.durable.settings"
RESULTS_DB, RECORDS_DB = 1, 2
RECORD_TASK: Final = "aceleryctl_tests.record"
#: What the worker logs at start when its run-once guard is on.
GUARD_ON: Final = "The run-once guard is on: each (task id, attempt) runs once"
#: What the guard logs when it skips a copy: ``... task <name>[<id>] attempt <n>: ...``.
SKIPPED = re.compile(r"Skipped a second copy of task \S+\[(?P<id>[^\]]+)\] attempt")

#: The two databases, each with its ``django_db`` mark (PostgreSQL: the ``pg`` alias).
SQLITE = pytest.param("sqlite", marks=pytest.mark.django_db(transaction=True), id="sqlite")
POSTGRES = pytest.param(
    "postgres",
    marks=pytest.mark.django_db(databases=["default", pg_alias.ALIAS], transaction=True),
    id="postgres",
)
BOTH = [SQLITE, POSTGRES]

#: Every child process this session started and has not stopped yet, by label.
_running: dict[str, LoggedProcess] = {}

#: A failed test's report carries the tail of each child's log.
pytest_runtest_makereport = attach_on_failure(
    HERE, lambda: [(label, child.log_tail(60)) for label, child in list(_running.items())]
)


# -- the broker and the worker -----------------------------------------------------------


@pytest.fixture(scope="package")
def durable_broker() -> Iterator[FaultBroker]:
    """The suite's broker Redis (killed, restarted, paused by the tests)."""
    broker = FaultBroker()
    try:
        yield broker
    finally:
        if broker.server.is_alive():
            with contextlib.suppress(ProcessLookupError):
                broker.server.resume()  # a SIGSTOPped server ignores SIGTERM
        broker.stop()


@pytest.fixture(scope="package")
def durable_worker(
    durable_broker: FaultBroker, redis_server: RedisServer
) -> Iterator[CeleryWorker]:
    """A prefork worker on the suite's broker, its Django set up with the durable
    settings; records go to the session Redis."""
    worker = CeleryWorker.start(
        app="tests.integration.durable.worker_app",
        name=f"durable-{os.getpid()}",
        queues=["celery"],
        env={
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            shared.BROKER_ENV: durable_broker.url(0),
            shared.BACKEND_ENV: redis_server.url(RESULTS_DB),
            shared.RECORDS_ENV: redis_server.url(RECORDS_DB),
        },
        cwd=REPO_ROOT,
    )
    _running["celery worker (durable)"] = worker
    try:
        wait_until(
            lambda: GUARD_ON in worker.log(),
            timeout=10.0,
            message=lambda: f"the worker to report its run-once guard on:\n{worker.log_tail()}",
        )
        yield worker
    finally:
        _running.pop("celery worker (durable)", None)
        worker.stop()
        worker.remove_log()


@pytest.fixture(scope="package")
def durable_app(durable_broker: FaultBroker, redis_server: RedisServer) -> Celery:
    """A Celery app of the test process's own on the suite's broker (results in the
    session Redis, which outlives every fault)."""
    return isolated_app("durable", durable_broker.url(0), redis_server.url(RESULTS_DB))


# -- the database --------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """The test's database as this process and its children see it."""

    kind: str  #: ``"sqlite"`` or ``"postgres"``
    alias: str  #: this process's alias for it
    env: dict[str, str]  #: what a child needs to reach it

    def outbox(self) -> list[Any]:
        """Every outbox row, oldest first."""
        from aceleryctl.outbox.models import OutboxMessage

        return list(OutboxMessage.objects.using(self.alias).order_by("pk"))

    def usernames(self) -> set[str]:
        """The users the views created (their names are markers)."""
        from django.contrib.auth.models import User

        return set(User.objects.using(self.alias).values_list("username", flat=True))

    def relay_totals(self) -> dict[str, int]:
        """What each relay reported in its heartbeat: published rows, by relay name."""
        from aceleryctl.outbox.models import RelayHeartbeat

        return dict(RelayHeartbeat.objects.using(self.alias).values_list("name", "published"))

    def store(self, app: Celery, markers: Sequence[str], *, queue: str | None = None) -> list[str]:
        """Rows of ``record(marker)`` dispatches, due now, written in one transaction
        (as a durable store would have); returns their task ids, in order."""
        from django.db import transaction
        from django.utils import timezone

        from aceleryctl.dispatch.build import build_apply_async
        from aceleryctl.outbox import store
        from aceleryctl.outbox.notify import notify

        now = timezone.now()
        task = app.tasks[RECORD_TASK]
        ids = [new_marker("id") for _ in markers]
        rows = []
        for marker, task_id in zip(markers, ids, strict=True):
            options: dict[str, Any] = {"task_id": task_id}
            if queue is not None:
                options["queue"] = queue
            dispatch, _ = build_apply_async(app, "apply_async", task, (marker,), {}, options, 5.0)
            rows.append(store.encode(dispatch, app, reason="durable", now=now, available_at=now))
        with transaction.atomic(using=self.alias):
            store.insert(rows, self.alias)
            notify(self.alias)
        return ids


@pytest.fixture
def database(db_kind: str) -> Database:
    """The test database of ``db_kind`` (parametrize ``db_kind`` with :data:`BOTH`)."""
    from django.db import connections

    if db_kind == "sqlite":
        name = str(connections["default"].settings_dict["NAME"])
        return Database("sqlite", "default", {child_settings.SQLITE_ENV: name})
    return Database("postgres", pg_alias.ALIAS, pg_alias.child_env())


# -- child processes -------------------------------------------------------------------------


@dataclass
class WebServers:
    """uvicorn (ASGI) and waitress (WSGI), each in a process group of its own."""

    asgi: LoggedProcess
    asgi_port: int
    wsgi: LoggedProcess
    wsgi_port: int

    def post(self, server: str, outcome: str, marker: str) -> tuple[int, str]:
        """POST to the ``server`` (``"asgi"``/``"wsgi"``) view that dispatches
        ``record(marker)`` on commit, then commits or rolls back (``outcome``);
        returns the status and the task id."""
        port = self.asgi_port if server == "asgi" else self.wsgi_port
        prefix = "async" if server == "asgi" else "sync"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", f"/{prefix}/{outcome}/{marker}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status in (200, 409), f"{server} answered {response.status}: {body!r}"
        return response.status, str(json.loads(body)["task_id"])

    def kill(self) -> None:
        """SIGKILL both servers' process groups: no shutdown, nothing flushed."""
        for child in (self.asgi, self.wsgi):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait(10)


@dataclass(frozen=True)
class Request:
    """One planned request and what came of it."""

    server: str  #: ``"asgi"`` or ``"wsgi"``
    outcome: str  #: ``"commit"`` or ``"rollback"``
    marker: str
    status: int = 0
    task_id: str = ""


def plan(count: int, *, rollback_every: int) -> list[Request]:
    """``count`` requests alternating between the two servers; every
    ``rollback_every``-th pair rolls back."""
    return [
        Request(
            "asgi" if i % 2 == 0 else "wsgi",
            "rollback" if (i // 2) % rollback_every == rollback_every - 1 else "commit",
            new_marker("c" if (i // 2) % rollback_every != rollback_every - 1 else "r"),
        )
        for i in range(count)
    ]


def fire(web: WebServers, requests: Sequence[Request]) -> list[Request]:
    """Send every request at once (one thread each) and return them answered."""

    def send(request: Request) -> Request:
        status, task_id = web.post(request.server, request.outcome, request.marker)
        return Request(request.server, request.outcome, request.marker, status, task_id)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def uvicorn_command(port: int) -> list[str]:
    """uvicorn serving the ASGI app on 127.0.0.1:``port`` (one process)."""
    return uvicorn_argv("tests.integration.durable.asgi:application", port)


def waitress_command(port: int) -> list[str]:
    """waitress serving the WSGI app on 127.0.0.1:``port``, 25 threads: every request
    of a test's burst is served at once."""
    return [
        sys.executable, "-m", "waitress", "--host=127.0.0.1", f"--port={port}",
        "--threads=25", "tests.integration.durable.wsgi:application",
    ]  # fmt: skip


@dataclass
class Children:
    """Starts the test's child processes and stops them (by PID) after it."""

    broker: FaultBroker
    redis_server: RedisServer
    started: list[tuple[str, LoggedProcess]] = field(default_factory=list)

    def env(
        self,
        database: Database,
        *,
        grace: float = 30.0,
        deadline: float = 2.0,
        batch: int = 100,
    ) -> dict[str, str]:
        """The environment of a child on ``database`` and the suite's broker."""
        return {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            shared.BROKER_ENV: self.broker.url(0),
            shared.BACKEND_ENV: self.redis_server.url(RESULTS_DB),
            shared.RECORDS_ENV: self.redis_server.url(RECORDS_DB),
            child_settings.GRACE_ENV: str(grace),
            child_settings.DEADLINE_ENV: str(deadline),
            child_settings.BATCH_ENV: str(batch),
            **database.env,
        }

    def _spawn(self, label: str, argv: list[str], env: dict[str, str]) -> LoggedProcess:
        child = spawn(argv, env=env, cwd=REPO_ROOT, log_prefix=f"aceleryctl-durable-{label}-")
        label = f"{label} (pid {child.process.pid})"
        self.started.append((label, child))
        _running[label] = child
        return child

    def relay(self, env: dict[str, str], *args: str) -> LoggedProcess:
        """``manage.py aceleryctl_relay`` (long-running unless ``--once``), started
        and past its set-up (it printed its banner)."""
        argv = [sys.executable, "-m", "django", "aceleryctl_relay", *args]
        relay = self._spawn("relay", argv, env)
        if "--once" not in args:
            wait_until(
                lambda: "aceleryctl relay on database" in relay.log() or not relay.is_alive(),
                timeout=30.0,
                message=lambda: f"the relay to start:\n{relay.log_tail()}",
            )
            assert relay.is_alive(), f"the relay exited:\n{relay.log_tail()}"
        return relay

    def web(self, env: dict[str, str]) -> WebServers:
        """uvicorn and waitress on free ports of 127.0.0.1, both answering (a port
        taken in the meantime is retried on another)."""
        asgi, asgi_port = self._server("uvicorn", uvicorn_command, env)
        wsgi, wsgi_port = self._server("waitress", waitress_command, env)
        return WebServers(asgi, asgi_port, wsgi, wsgi_port)

    def _server(
        self, label: str, command: Callable[[int], list[str]], env: dict[str, str]
    ) -> tuple[LoggedProcess, int]:
        for _ in range(3):
            port = free_port()
            child = self._spawn(label, command(port), env)

            def up_or_gone(child: LoggedProcess = child, port: int = port) -> bool:
                return not child.is_alive() or accepts(port)

            with contextlib.suppress(WaitTimeout):
                wait_until(up_or_gone, timeout=30.0, interval=0.05)
            if child.is_alive() and accepts(port):
                return child, port
            child.stop(5.0)
        pytest.fail(f"{label} did not start:\n{child.log_tail()}")

    def stop_all(self) -> None:
        for label, child in reversed(self.started):
            if child.is_alive():
                child.stop(10.0)
            _running.pop(label, None)
            child.remove_log()


@pytest.fixture
def children(
    database: Database,
    durable_broker: FaultBroker,
    durable_worker: CeleryWorker,
    redis_server: RedisServer,
) -> Iterator[Children]:
    """Starts the test's web servers and relays; stops them after the test, before its
    database is emptied (PostgreSQL would wait on their sessions)."""
    started = Children(durable_broker, redis_server)
    try:
        yield started
    finally:
        started.stop_all()


# -- the broker up and the worker consuming at the start of each test ------------------------


@pytest.fixture
def durable_controller(durable_app: Celery) -> Iterator[AsyncCeleryController]:
    """A controller of the test process on the suite's broker, closed after the test."""
    ctl = AsyncCeleryController(app=durable_app, dispatch_timeout=5.0)
    try:
        yield ctl
    finally:
        ctl.sync.close(5.0)


@pytest.fixture
def durable(
    durable_broker: FaultBroker,
    durable_worker: CeleryWorker,
    durable_controller: AsyncCeleryController,
    records: Records,
) -> Iterator[FaultBroker]:
    """The suite's broker, up, with the worker consuming from it (a sentinel task
    ran), for the test; left up and running after it."""
    _broker_up(durable_broker)
    try:
        sentinel = new_marker("sentinel")
        durable_controller.sync.apply_async(durable_controller.app.tasks[RECORD_TASK], (sentinel,))
        # The worker may still be backing off after an earlier test's broker kill
        # (kombu retries after 2, 4, 6, 8... s).
        records.wait_for(sentinel, timeout=60.0)
        yield durable_broker
    finally:
        _broker_up(durable_broker)


def _broker_up(broker: FaultBroker) -> None:
    if broker.server.is_alive():
        broker.server.resume()
    else:
        broker.restart()


def broker_client(broker: FaultBroker) -> redis.Redis:
    """A client of the broker's db 0 with bounded timeouts."""
    return redis.Redis.from_url(broker.url(0), socket_connect_timeout=2.0, socket_timeout=10.0)


def drained(broker: FaultBroker, queue: str = "celery") -> bool:
    """Whether ``queue`` is empty and no message is delivered but unacknowledged."""
    client = broker_client(broker)
    try:
        return int(client.llen(queue)) == 0 and int(client.hlen("unacked")) == 0
    finally:
        client.close()


def ran_once(records: Records, markers: Sequence[str]) -> None:
    """Every ``marker``'s task ran, and ran once."""
    counts = {m: records.count(m) for m in markers}
    missing = [m for m, n in counts.items() if n == 0]
    assert not missing, f"{len(missing)} of {len(markers)} dispatches never ran: {missing[:5]}"
    twice = {m: n for m, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} of {len(markers)} ran more than once: {twice}"


def skipped(worker: CeleryWorker, task_ids: Iterable[str]) -> Counter[str]:
    """How many copies of each of ``task_ids`` the worker's run-once guard skipped."""
    wanted = set(task_ids)
    found = (SKIPPED.search(line) for line in worker.log().splitlines())
    return Counter(m["id"] for m in found if m is not None and m["id"] in wanted)


def never_ran(records: Records, markers: Sequence[str]) -> None:
    """No ``marker``'s task ran."""
    ran = [m for m in markers if records.count(m)]
    assert not ran, f"rolled-back dispatches ran: {ran}"


def first_start(records: Records, markers: Sequence[str]) -> dict[str, float]:
    """When each marker's task first started (the worker's ``time.time()``)."""
    return {m: min(e["start"] for e in records.get(m)) for m in markers}
