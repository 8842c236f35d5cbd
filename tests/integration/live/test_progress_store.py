"""What ``report_progress`` stores in a real Redis result backend.

Its one-round-trip write (:mod:`aceleryctl.worker.progress_store`) must leave exactly
what Celery's own ``task.update_state(state="PROGRESS", meta=...)`` leaves: the
same key, the same meta field by field, the same expiry, the same message on the
key's pub/sub channel. And it must never turn a terminal state back into PROGRESS.
Tasks run in this process (``apply()``), on a Celery app whose result backend is
the session's redis-server (db 8).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from aceleryctl import signals
from aceleryctl.events import Progress
from aceleryctl.live import sent
from aceleryctl.live.snapshots import celery_snapshot_source
from aceleryctl.worker import progress as worker_progress
from aceleryctl.worker import progress_store as _progress_store
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until

# Celery's Redis backend calls redis-py's deprecated setex (redis-py 8).
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")

RESULTS_DB = 8
EXPIRES = 1234  # result_expires, seconds
PROGRESS = {"current": 3, "total": 10, "message": "three of ten"}

#: What a task body does with its ``self``.
Body = Callable[[Task[Any, Any]], Any]


def make_app(server: RedisServer, **conf: Any) -> Celery:
    app = Celery("progress-store-tests", set_as_current=False)
    settings: dict[str, Any] = {
        "broker_url": "memory://",
        "result_backend": server.url(RESULTS_DB),
        "result_serializer": "json",
        "accept_content": ["json", "pickle"],
        "result_expires": EXPIRES,
        "task_store_eager_result": False,  # only what the task itself writes
    }
    app.conf.update(settings | conf)
    return app


def make_task(app: Celery, body: Body) -> Any:
    """A new bound task of ``app`` that runs ``body(self)``."""

    def progress_store_task(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
        body(self)

    return app.task(bind=True, name=f"progress_store.{uuid.uuid4().hex}")(progress_store_task)


def run(app: Celery, body: Body | Any, task_id: str, **options: Any) -> None:
    """Run ``body`` (a task made by :func:`make_task`, or a body for a new one) here
    and now as ``task_id``; ``options`` go to ``apply()``."""
    task = body if isinstance(body, Task) else make_task(app, body)
    outcome = task.apply(task_id=task_id, **options)
    if outcome.failed():
        raise AssertionError(f"the task body failed: {outcome.traceback}")


@pytest.fixture(autouse=True)
def worker_side() -> Iterator[None]:
    """Tasks run here as in a worker: the worker's receivers are connected (they
    end each attempt's progress throttle), then this process is a web one again."""
    signals.connect()
    try:
        yield
    finally:
        signals.disconnect()
        sent.install_web()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client(RESULTS_DB)
    yield client
    client.close()


def key_of(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


class Published:
    """The messages published on a task's meta key, which is what
    ``AsyncResult.get()`` listens to."""

    def __init__(self, client: redis.Redis, task_id: str) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(key_of(task_id))
        self.messages: list[bytes] = []

    def until(self, count: int) -> list[bytes]:
        def arrived() -> bool:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                self.messages.append(message["data"])
            return len(self.messages) >= count

        wait_until(arrived, timeout=10, interval=0)
        return self.messages

    def close(self) -> None:
        self.pubsub.close()


def report(self: Task[Any, Any]) -> None:
    signals.report_progress(self, PROGRESS["current"], PROGRESS["total"], PROGRESS["message"])


def celery_update_state(self: Task[Any, Any]) -> None:
    self.update_state(state="PROGRESS", meta=dict(PROGRESS))


@pytest.mark.parametrize("extended", [False, True], ids=["plain", "result_extended"])
def test_the_stored_value_is_what_update_state_stores(
    redis_server: RedisServer, raw: redis.Redis, extended: bool
) -> None:
    app = make_app(redis_server, result_extended=extended)
    ours, celerys = str(uuid.uuid4()), str(uuid.uuid4())
    options = {"args": (7,), "kwargs": {"colour": "blue"}, "retries": 2}
    stored: dict[str, tuple[dict[str, Any], int, list[bytes]]] = {}

    def body(self: Task[Any, Any]) -> None:
        self.request.group = "the-group"  # the optional fields of the meta, too
        self.request.parent_id = "the-parent"
        self.request.children.append(app.AsyncResult("a-child"))
        (report if self.request.id == ours else celery_update_state)(self)

    task = make_task(app, body)  # one task for both: its name is stored too
    for task_id in (ours, celerys):
        published = Published(raw, task_id)
        try:
            run(app, task, task_id, **options)
            value = raw.get(key_of(task_id))
            assert value is not None, "nothing was stored"
            stored[task_id] = (json.loads(value), raw.ttl(key_of(task_id)), published.until(1))
            assert published.messages == [value]  # what was stored was published
        finally:
            published.close()

    mine, my_ttl, _ = stored[ours]
    theirs, their_ttl, _ = stored[celerys]
    assert mine.pop("task_id") == ours
    assert theirs.pop("task_id") == celerys
    assert mine.keys() == theirs.keys()
    for field in mine:
        assert mine[field] == theirs[field], field
    assert mine["status"] == "PROGRESS"
    assert mine["result"] == PROGRESS
    assert (mine["group_id"], mine["parent_id"]) == ("the-group", "the-parent")
    assert mine["children"] == [[["a-child", None], None]]
    if extended:
        assert (mine["args"], mine["kwargs"], mine["retries"]) == ([7], {"colour": "blue"}, 2)
    assert 0 < their_ttl <= EXPIRES
    assert 0 < my_ttl <= EXPIRES
    assert abs(my_ttl - their_ttl) <= 2  # the same expiry, set a moment apart


def test_the_fast_path_was_the_one_taken(redis_server: RedisServer) -> None:
    """The comparison above must not pass merely because the fallback ran."""
    app = make_app(redis_server)
    handled: list[bool] = []

    def body(self: Task[Any, Any]) -> None:
        handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))

    run(app, body, str(uuid.uuid4()))
    assert handled == [True]


@pytest.mark.parametrize("terminal", ["SUCCESS", "FAILURE", "REVOKED"])
def test_a_terminal_state_is_never_replaced_by_progress(
    redis_server: RedisServer, raw: redis.Redis, terminal: str
) -> None:
    app = make_app(redis_server)
    task_id = str(uuid.uuid4())
    outcome: Any = {"rows": 3} if terminal == "SUCCESS" else ValueError("broken")
    app.backend.store_result(task_id, outcome, terminal)
    before = raw.get(key_of(task_id))
    published = Published(raw, task_id)
    try:
        # A late report of the same task (a duplicate delivery, say), then a marker
        # on the same channel: once the marker is in, anything before it would be.
        run(app, report, task_id)
        raw.publish(key_of(task_id), b"marker")
        assert published.until(1) == [b"marker"]
    finally:
        published.close()
    assert raw.get(key_of(task_id)) == before
    assert app.AsyncResult(task_id).state == terminal


@pytest.mark.parametrize("earlier", ["STARTED", "RETRY", "PROGRESS"])
def test_a_non_terminal_state_is_replaced(
    redis_server: RedisServer, raw: redis.Redis, earlier: str
) -> None:
    app = make_app(redis_server)
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, {"pid": 1} if earlier != "RETRY" else KeyError(), earlier)
    run(app, report, task_id)
    result = app.AsyncResult(task_id)
    assert (result.state, result.info) == ("PROGRESS", PROGRESS)


@pytest.mark.parametrize(
    "conf",
    [{"result_serializer": "pickle"}, {"result_compression": "zlib"}],
    ids=["pickle", "compressed"],
)
def test_other_encodings_go_through_update_state(
    redis_server: RedisServer, conf: dict[str, Any]
) -> None:
    app = make_app(redis_server, **conf)
    task_id = str(uuid.uuid4())
    handled: list[bool] = []

    def body(self: Task[Any, Any]) -> None:
        handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))
        report(self)

    run(app, body, task_id)
    assert handled == [False]  # not for this path: report_progress fell back
    result = app.AsyncResult(task_id)
    assert (result.state, result.info) == ("PROGRESS", PROGRESS)


def test_a_stored_value_the_script_cannot_read_goes_through_update_state(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    app = make_app(redis_server)
    task_id = str(uuid.uuid4())
    raw.set(key_of(task_id), b"\x80 not json")
    handled: list[bool] = []

    def body(self: Task[Any, Any]) -> None:
        handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))

    run(app, body, task_id)
    assert handled == [False]
    assert raw.get(key_of(task_id)) == b"\x80 not json"  # the script wrote nothing


def test_a_server_that_refuses_scripts_is_asked_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(redis_server)
    client = app.backend.client
    loads: list[str] = []

    def refuse(script: str) -> str:
        loads.append(script)
        raise redis.exceptions.ResponseError("ERR unknown command 'SCRIPT'")

    monkeypatch.setattr(client, "script_load", refuse)
    handled: list[bool] = []

    def body(self: Task[Any, Any]) -> None:
        for _ in range(3):
            handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))

    task_id = str(uuid.uuid4())
    run(app, body, task_id)
    assert handled == [False, False, False]
    assert len(loads) == 1  # then update_state for this backend, without asking again
    run(app, report, task_id)
    assert app.AsyncResult(task_id).info == PROGRESS


def test_a_flushed_script_cache_is_reloaded(redis_server: RedisServer, raw: redis.Redis) -> None:
    app = make_app(redis_server)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    run(app, report, first)
    raw.script_flush()  # as after a restart of the server
    handled: list[bool] = []

    def body(self: Task[Any, Any]) -> None:
        handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))

    run(app, body, second)
    assert handled == [True]
    assert app.AsyncResult(second).info == PROGRESS


def test_a_late_subscriber_reads_the_progress_from_the_backend(redis_server: RedisServer) -> None:
    app = make_app(redis_server)
    task_id = str(uuid.uuid4())
    run(app, report, task_id)
    snapshot = celery_snapshot_source(app)(task_id)  # what the websocket consumer reads
    assert snapshot is not None
    assert (snapshot.type, snapshot.progress) == (
        "task.progress",
        Progress(PROGRESS["current"], PROGRESS["total"], PROGRESS["message"]),
    )


def test_a_connection_the_server_dropped_falls_back_and_is_replaced(
    redis_server: RedisServer, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(redis_server)
    task_id = str(uuid.uuid4())
    run(app, report, task_id)  # the writer now keeps an idle connection
    # Drop the writer's connections server-side, as a server restart would; only
    # those: the session's workers and listeners share this server.
    from aceleryctl.worker.progress_store import _writers

    idle = _writers[app.backend]._idle
    assert idle
    for connection in idle:
        connection.send_command("CLIENT", "ID")
        assert raw.client_kill_filter(_id=connection.read_response()) == 1
    fallbacks: list[str] = []
    celerys = worker_progress._store_progress

    def fallback(task: Any, task_id: str, progress: Any) -> None:
        fallbacks.append(task_id)
        celerys(task, task_id, progress)

    monkeypatch.setattr(worker_progress, "_store_progress", fallback)

    def later(self: Task[Any, Any]) -> None:
        signals.report_progress(self, 4, 10, "after the drop")

    run(app, later, task_id)
    assert fallbacks == [task_id]  # the dead connection failed: update_state stored it
    assert app.AsyncResult(task_id).info == {"current": 4, "total": 10, "message": "after the drop"}
    handled: list[bool] = []

    def again(self: Task[Any, Any]) -> None:
        handled.append(_progress_store.store_progress(self, self.request.id, dict(PROGRESS)))

    run(app, again, task_id)
    assert handled == [True]  # on a new connection
    assert app.AsyncResult(task_id).info == PROGRESS


def test_a_time_limit_striking_during_the_write_reaches_the_task(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(redis_server)

    def strike(self: Any, connection: Any) -> None:
        connection.disconnect()
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(_progress_store._Writer, "receive", strike)
    seen: list[str] = []

    def body(self: Task[Any, Any]) -> None:
        try:
            report(self)
        except SoftTimeLimitExceeded:
            seen.append("time limit")

    run(app, body, str(uuid.uuid4()))
    assert seen == ["time limit"]
