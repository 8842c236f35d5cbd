"""The direct publish path against Celery's stock path: the same messages, the same results.

Differential test, in two views:

* the raw broker messages: every case is published once through a controller on
  the direct path and once through one on the stock path (``apply_async``), into
  a Redis database no worker reads; the stored envelopes are then compared field
  by field. Only ids (task id, correlation id, delivery tag, the per-thread
  ``reply_to``) are ignored; timestamps (``eta``, ``expires``, the ``expiration``
  TTL) must agree within a few seconds and be present in both or neither;
* a real prefork worker runs both sets: it sees the same request either way.

The statistics prove which path each controller took.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
import redis
from celery import Celery, Task, signals

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import TaskDispatchError
from tests._support.broker_messages import queue_keys
from tests._support.redis_server import RedisServer

from . import celery_app as shared
from ._helpers import Records, new_marker, shared_app_worker
from .celery_app import echo_request

CAPTURE_DB = 3
TIMING_SLACK = 5.0  # seconds two publish-time stamps may differ by
ETA = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

#: (case id, task name, args, kwargs, options)
CASES: list[tuple[str, str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("plain", "t.add", (1, 2), {}, {}),
    ("kwargs", "t.add", (), {"x": 1, "y": 2}, {}),
    ("nested args", "t.echo", ([1, {"a": [2, 3]}], "é", None, 1.5, True), {"k": (1,)}, {}),
    ("long string", "t.echo", ("x" * 300,), {"note": "y" * 70}, {}),
    ("countdown", "t.add", (1, 2), {}, {"countdown": 3600}),
    ("eta", "t.add", (1, 2), {}, {"eta": ETA}),
    ("expires seconds", "t.add", (1, 2), {}, {"expires": 600}),
    ("expires datetime", "t.add", (1, 2), {}, {"expires": ETA}),
    ("headers", "t.add", (1, 2), {}, {"headers": {"x-tenant": "t1", "n": 2}}),
    ("priority", "t.add", (1, 2), {}, {"priority": 7}),
    ("queue", "t.add", (1, 2), {}, {"queue": "special"}),
    ("task id", "t.add", (1, 2), {}, {"task_id": "fixed-id"}),
    ("time limits", "t.add", (1, 2), {}, {"time_limit": 30, "soft_time_limit": 20}),
    ("ignore result", "t.add", (1, 2), {}, {"ignore_result": True}),
    ("parent and root", "t.add", (1, 2), {}, {"parent_id": "p-1", "root_id": "r-1"}),
    ("msgpack", "t.add", (1, 2), {}, {"serializer": "msgpack"}),
    ("retry off", "t.add", (1, 2), {}, {"retry": False, "retry_policy": {"max_retries": 1}}),
    ("task_routes", "t.routed", (5,), {}, {}),
    ("class options", "t.limited", (1,), {}, {}),
]


def capture_app(url: str) -> Celery:
    """An app like the shared one (serializers, a route), on a database no worker reads."""
    app = Celery("direct-capture", set_as_current=False)
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        accept_content=["json", "msgpack"],
        enable_utc=True,
        timezone="UTC",
        task_default_queue="celery",
        task_routes={"t.routed": {"queue": "routed"}},
        broker_transport_options={"socket_timeout": 10.0, "socket_connect_timeout": 2.0},
    )

    @app.task(shared=False, name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="t.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    @app.task(shared=False, name="t.routed")
    def routed(i: int) -> int:
        return i

    @app.task(shared=False, name="t.limited", time_limit=60, expires=300, serializer="msgpack")
    def limited(i: int) -> int:
        return i

    app.finalize()
    return app


@pytest.fixture
def capture(redis_server: RedisServer) -> Iterator[tuple[Celery, redis.Redis]]:
    client = redis_server.client(CAPTURE_DB)
    client.flushdb()
    try:
        yield capture_app(redis_server.url(CAPTURE_DB)), client
    finally:
        client.flushdb()
        client.close()


def raw_messages(client: redis.Redis) -> dict[str, tuple[str, bytes]]:
    """``{task id: (redis key, raw envelope)}`` of every message in the capture db."""
    found: dict[str, tuple[str, bytes]] = {}
    for queue in ("celery", "special", "routed"):
        for key in queue_keys(client, queue):
            for raw in client.lrange(key, 0, -1):
                found[json.loads(raw)["headers"]["id"]] = (key, raw)
    return found


def comparable(raw: bytes) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The envelope with ids masked, and its timestamps apart (epoch seconds)."""
    envelope = json.loads(raw)
    headers = dict(envelope.pop("headers"))
    properties = dict(envelope.pop("properties"))
    decoded = decode(base64.b64decode(envelope.pop("body")), envelope["content-type"])
    uuid.UUID(properties.pop("delivery_tag"))  # present, and a UUID
    timed = mask_ids(headers, properties)
    return {"envelope": envelope, "headers": headers, "properties": properties, "body": decoded}, (
        timed
    )


def decode(body: bytes, content_type: str) -> Any:
    """A message body of the cases' serializers (JSON, msgpack)."""
    return msgpack.unpackb(body) if content_type == "application/x-msgpack" else json.loads(body)


def mask_ids(headers: dict[str, Any], properties: dict[str, Any]) -> dict[str, float | None]:
    """Mask the task id where it repeats (in place), check and drop the publishing
    thread's ``reply_to``, and take the timestamps out: ``eta``, ``expires`` and
    ``expiration`` in epoch seconds (``None`` when absent)."""
    task_id = headers.pop("id")
    for mapping, key in ((headers, "root_id"), (properties, "correlation_id")):
        if mapping.get(key) == task_id:
            mapping[key] = "<task id>"
    assert properties.pop("reply_to")  # the publishing thread's oid
    timed: dict[str, float | None] = {}
    for key in ("eta", "expires"):
        value = headers.pop(key)
        timed[key] = None if value is None else datetime.fromisoformat(value).timestamp()
    expiration = properties.pop("expiration", None)
    timed["expiration"] = None if expiration is None else int(expiration) / 1000
    return timed


def assert_same_times(
    case: str, expected: dict[str, float | None], got: dict[str, float | None]
) -> None:
    """Each timestamp present on both messages or on neither, and within
    :data:`TIMING_SLACK` of the other."""
    for name, when in expected.items():
        other = got[name]
        assert (when is None) == (other is None), (case, name)
        if when is not None and other is not None:
            assert abs(when - other) <= TIMING_SLACK, (case, name)


async def publish_all(
    app: Celery, direct: bool, client: redis.Redis | None = None
) -> tuple[list[str], int]:
    """Publish every case once; return the task ids in case order and the direct count.

    With ``client``, every case is published twice by one controller, the capture
    database emptied in between: the direct path builds the first call of each
    shape in full and renders the second from its template (where the shape has
    one); the ids returned are the second pass's.
    """
    passes = 2 if client is not None else 1
    async with AsyncCeleryController(app, direct_publish=direct, dispatch_timeout=5.0) as ctl:
        for done in range(passes):
            if done:
                client.flushdb()  # type: ignore[union-attr]
            ids: list[str] = []
            for _, name, args, kwargs, options in CASES:
                result = await ctl.apply_async(app.tasks[name], args, kwargs, **dict(options))
                ids.append(result.id)
        stats = ctl.statistics()
        templates = getattr(ctl._engine.wire, "direct", None)
    assert stats.dispatched == len(CASES) * passes
    if passes > 1 and direct:
        # Every case's shape but those with times computed per call (countdown,
        # eta, expires, the class options' expiry) has its template.
        learned = [shape for shape, kept in templates._templates._templates.items() if kept]
        assert len(learned) >= 10, learned
    return ids, stats.direct // passes


async def test_direct_and_stock_messages_are_equal_field_by_field(
    capture: tuple[Celery, redis.Redis],
) -> None:
    # The direct messages compared are each case's second publish: rendered from
    # its shape's template where the shape has one (no countdown, eta or expiry).
    app, client = capture
    stock_ids, stock_direct = await publish_all(app, direct=False)
    stock = raw_messages(client)
    client.flushdb()
    direct_ids, direct_count = await publish_all(app, direct=True, client=client)
    direct = raw_messages(client)

    assert stock_direct == 0
    assert direct_count == len(CASES)  # every case took the direct path
    for (case, *_), stock_id, direct_id in zip(CASES, stock_ids, direct_ids, strict=True):
        stock_key, stock_raw = stock[stock_id]
        direct_key, direct_raw = direct[direct_id]
        assert direct_key == stock_key, case
        expected, expected_times = comparable(stock_raw)
        got, got_times = comparable(direct_raw)
        assert got == expected, case
        assert_same_times(case, expected_times, got_times)


async def test_a_global_keyprefix_is_honoured_like_celerys_own(
    capture: tuple[Celery, redis.Redis], redis_server: RedisServer
) -> None:
    # broker_transport_options["global_keyprefix"]: kombu prefixes every key it
    # writes, and workers read the prefixed lists. A direct write to the bare key
    # would be stored where no worker looks.
    _, client = capture
    app = capture_app(redis_server.url(CAPTURE_DB))
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "global_keyprefix": "tenant-a:",
    }
    cases = [c for c in CASES if c[0] in ("plain", "priority", "queue", "task_routes")]
    keys: dict[bool, list[str]] = {}
    bodies: dict[bool, list[dict[str, Any]]] = {}
    for direct in (False, True):
        client.flushdb()
        async with AsyncCeleryController(app, direct_publish=direct) as ctl:
            ids = [
                (await ctl.apply_async(app.tasks[name], args, kwargs, **dict(options))).id
                for _, name, args, kwargs, options in cases
            ]
            assert ctl.statistics().direct == (len(cases) if direct else 0)
        found = {}
        for raw_key in client.scan_iter(match="*"):
            key = raw_key.decode()
            if client.type(key) == b"list":
                for raw in client.lrange(key, 0, -1):
                    found[json.loads(raw)["headers"]["id"]] = (key, raw)
        keys[direct] = [found[i][0] for i in ids]
        bodies[direct] = [comparable(found[i][1])[0] for i in ids]
    assert all(key.startswith("tenant-a:") for key in keys[False])
    assert keys[True] == keys[False]
    assert bodies[True] == bodies[False]


#: App settings that shape a message or its list key: (id, settings, whether the
#: direct path takes the call). Each must leave the two paths' messages equal.
SETTING_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("time limits", {"task_time_limit": 30, "task_soft_time_limit": 20}, True),
    ("default priority", {"task_default_priority": 7}, True),
    ("transient delivery", {"task_default_delivery_mode": "transient"}, True),
    ("acks late, rate limit", {"task_acks_late": True, "task_default_rate_limit": "9/s"}, True),
    (
        "list separator",
        {"broker_transport_options": {"sep": "::"}, "task_default_priority": 7},
        True,
    ),
    ("priority steps", {"broker_transport_options": {"priority_steps": [0, 5, 9]}}, True),
    ("key prefix", {"broker_transport_options": {"global_keyprefix": "p:"}}, True),
    ("queue max priority (declared queue arguments)", {"task_queue_max_priority": 10}, False),
    (
        "key prefix and priority",
        {"broker_transport_options": {"global_keyprefix": "p:"}, "task_default_priority": 7},
        True,
    ),
]


@pytest.mark.parametrize(
    ("case", "settings", "direct"), SETTING_CASES, ids=[c[0] for c in SETTING_CASES]
)
async def test_settings_shape_both_paths_messages_alike(
    capture: tuple[Celery, redis.Redis],
    redis_server: RedisServer,
    case: str,
    settings: dict[str, Any],
    direct: bool,
) -> None:
    _, client = capture
    seen: dict[bool, tuple[str, dict[str, Any]]] = {}
    for on in (False, True):
        client.flushdb()
        app = capture_app(redis_server.url(CAPTURE_DB))
        options = {
            **app.conf.broker_transport_options,
            **settings.get("broker_transport_options", {}),
        }
        app.conf.update({**settings, "broker_transport_options": options})
        async with AsyncCeleryController(app, direct_publish=on) as ctl:
            await ctl.delay(app.tasks["t.add"], 1, 2)
            assert ctl.statistics().direct == int(on and direct), case
        [key] = [k.decode() for k in client.scan_iter(match="*") if client.type(k) == b"list"]
        [raw] = client.lrange(key, 0, -1)
        seen[on] = key, comparable(raw)[0]
    assert seen[True] == seen[False], case


#: A broker database of its own for the worker reading prefixed lists.
PREFIXED_BROKER_DB = 4


async def test_a_worker_reading_prefixed_lists_runs_what_the_direct_path_sent(
    redis_server: RedisServer, records: Records
) -> None:
    url = redis_server.url(PREFIXED_BROKER_DB)
    app = Celery("prefixed-sender", set_as_current=False)
    app.conf.update(
        broker_url=url,
        task_default_queue="celery",
        broker_transport_options={
            "socket_timeout": 10.0,
            "socket_connect_timeout": 2.0,
            "global_keyprefix": "tenant-a:",
        },
    )

    @app.task(shared=False, name="aceleryctl_tests.record")
    def record(marker: str, payload: Any = None) -> str:  # the worker runs its own
        return marker

    env = {shared.BROKER_KEYPREFIX_ENV: "tenant-a:"}
    with shared_app_worker("prefixed", url, redis_server, env=env):
        async with AsyncCeleryController(app) as ctl:
            markers = [new_marker("prefixed") for _ in range(3)]
            for marker in markers:
                await ctl.delay(record, marker)
            assert ctl.statistics().direct == len(markers)
            for marker in markers:
                await records.wait_for_async(marker)


async def test_publish_signals_fire_alike_and_may_change_the_message(
    capture: tuple[Celery, redis.Redis],
) -> None:
    app, client = capture
    seen: list[tuple[str, Any, Any, Any, Any]] = []

    def before(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        headers["x-traced"] = "yes"  # instrumentation adds headers here
        seen.append(("before", sender, kwargs["exchange"], kwargs["routing_key"], None))

    def after(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        seen.append(("after", sender, kwargs["exchange"], kwargs["routing_key"], headers["id"]))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    try:
        results = {}
        for direct in (False, True):
            seen.clear()
            client.flushdb()
            async with AsyncCeleryController(app, direct_publish=direct) as ctl:
                result = await ctl.delay(app.tasks["t.add"], 1, 2)
                assert ctl.statistics().direct == int(direct)
            [(_, raw)] = raw_messages(client).values()
            assert json.loads(raw)["headers"]["x-traced"] == "yes"
            results[direct] = [entry[:4] for entry in seen], [entry[4] for entry in seen]
            assert results[direct][1] == [None, result.id]
        assert results[True][0] == results[False][0]
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)


class _OwnApplyAsync(Task):  # type: ignore[type-arg]
    def apply_async(self, *args: Any, **kwargs: Any) -> Any:
        return super().apply_async(*args, **kwargs)


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("compression", {"compression": "zlib"}),
        ("link", {"link": "t.add"}),
        ("exchange", {"exchange": "other", "routing_key": "celery"}),
        ("publish retry", {"retry": True}),
        ("an AMQP property", {"content_language": "en"}),
    ],
)
async def test_other_calls_take_the_stock_path(
    capture: tuple[Celery, redis.Redis], case: str, options: dict[str, Any]
) -> None:
    app, client = capture
    if case == "link":
        options = {"link": app.tasks["t.add"].s(1)}
    async with AsyncCeleryController(app) as ctl:
        result = await ctl.apply_async(app.tasks["t.add"], (1, 2), **options)
        stats = ctl.statistics()
    assert (stats.dispatched, stats.direct) == (1, 0), case
    assert result.id in raw_messages(client) or case == "exchange"


async def test_a_task_class_with_its_own_apply_async_takes_the_stock_path(
    capture: tuple[Celery, redis.Redis],
) -> None:
    app, client = capture

    @app.task(shared=False, name="t.custom", base=_OwnApplyAsync)
    def custom(i: int) -> int:
        return i

    async with AsyncCeleryController(app) as ctl:
        result = await ctl.delay(app.tasks["t.custom"], 1)
        assert ctl.statistics().direct == 0
    assert result.id in raw_messages(client)


async def test_direct_path_errors_match_the_stock_path(
    capture: tuple[Celery, redis.Redis],
) -> None:
    app, client = capture
    errors = {}
    for direct in (False, True):
        async with AsyncCeleryController(app, direct_publish=direct) as ctl:
            with pytest.raises(TaskDispatchError) as wrong_arity:
                await ctl.delay(app.tasks["t.add"], 1)
            with pytest.raises(TaskDispatchError) as unserializable:
                await ctl.delay(app.tasks["t.add"], object(), 2)
        errors[direct] = (
            type(wrong_arity.value),
            type(wrong_arity.value.__cause__),
            type(unserializable.value),
        )
    assert errors[True] == errors[False]
    assert raw_messages(client) == {}  # nothing was sent for either


# -- a real worker runs both sets -----------------------------------------------------------

RUN_CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("countdown", {"countdown": 0.2}),
    ("expires", {"expires": 600}),
    ("headers", {"headers": {"x-tenant": "t1"}}),
    ("priority", {"priority": 7}),
    ("queue", {"queue": "special"}),
    ("time limits", {"time_limit": 30, "soft_time_limit": 20}),
    ("parent and root", {"parent_id": "p-1", "root_id": "r-1"}),
    ("msgpack", {"serializer": "msgpack"}),
]


@pytest.fixture
async def stock_controller(
    celery_app: Celery, workers: Any
) -> AsyncIterator[AsyncCeleryController]:
    async with AsyncCeleryController(celery_app, direct_publish=False) as ctl:
        yield ctl


async def test_a_worker_sees_the_same_request_from_either_path(
    controller: AsyncCeleryController, stock_controller: AsyncCeleryController
) -> None:
    seen: dict[bool, list[dict[str, Any]]] = {}
    for direct, ctl in ((True, controller), (False, stock_controller)):
        results = [
            await ctl.apply_async(echo_request, ("x-tenant",), **dict(options))
            for _, options in RUN_CASES
        ]
        summaries = []
        for result in results:
            summary = result.get(timeout=20.0)
            assert summary.pop("task_id") == summary.pop("correlation_id") == result.id
            if summary["root_id"] == result.id:
                summary["root_id"] = "<task id>"
            for key in ("eta", "expires"):  # stamped at publish time
                summary[key] = summary[key] is not None
            summaries.append(summary)
        seen[direct] = summaries
        assert ctl.statistics().direct == (len(RUN_CASES) if direct else 0)
    for (case, _), got, expected in zip(RUN_CASES, seen[True], seen[False], strict=True):
        assert got == expected, case
