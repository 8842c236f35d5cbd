"""Every private library internal in :mod:`aceleryctl.compat` still has the shape relied on.

One test (or a few) per internal: it exists, takes the parameters used, and
returns what the call site reads. No network: Celery apps use kombu's in-memory
broker, a Redis channel is built with its connection check stubbed out, and
redis-py connections are only asked to pack commands, and a channels_redis layer
is built without connecting. The last tests walk every module of the package and
fail when one outside ``aceleryctl.compat`` reaches into a library's private
attribute.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import celery._state
import celery.utils.time
import kombu
import pytest
import redis
import redis.asyncio
from celery import Celery, Task, chain, chord, group, shared_task
from celery import signals as celery_signals
from celery.app.routes import Router
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.canvas import Signature
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import Retry
from celery.utils.dispatch import Signal
from celery.utils.serialization import UnpickleableExceptionWrapper
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from hypothesis import given
from hypothesis import strategies as st
from kombu import Queue, serialization
from kombu.transport import redis as kombu_redis_transport
from kombu.utils.json import JSONEncoder as KombuJSONEncoder
from kombu.utils.json import dumps as kombu_json_dumps

from aceleryctl.compat import amqp as camqp
from aceleryctl.compat import celery as cc
from aceleryctl.compat import celery_consumer as ccc
from aceleryctl.compat import celery_results as ccr
from aceleryctl.compat import celery_worker as cw
from aceleryctl.compat import channels as cch
from aceleryctl.compat import kombu_redis as ckr
from aceleryctl.compat import redis_async as cra
from aceleryctl.compat import stdlib_json as csj
from aceleryctl.wires.redis_message import _NONE_ONLY, DIRECT_OPTIONS


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery(
        "compat-unit",
        set_as_current=False,
        broker="memory://",
        backend="redis://127.0.0.1:1/0",
    )
    app.conf.task_default_queue = "celery"

    @app.task(shared=False, name="c.add", typing=True)
    def add(x: int, y: int) -> int:
        return x + y

    app.finalize()
    yield app
    app.close()


def _params(fn: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


# -- Celery: building a dispatch --------------------------------------------------


def test_canvas_types_recognise_every_group_chain_and_chord(app: Celery) -> None:
    add = app.tasks["c.add"]
    shapes = [
        add.s(1) | add.s(),
        chain(add.s(1, 2), add.s(3)),
        group(add.s(1, 2), add.s(3, 4)),
        chord([add.s(1, 2)], add.s(5)),
    ]
    for canvas in shapes:
        assert isinstance(canvas, cc.CANVAS_TYPES), type(canvas)
    assert not isinstance(add.s(1, 2), cc.CANVAS_TYPES)
    # chain() and ``|`` build instances of the private class, not of ``chain``.
    assert type(add.s(1) | add.s()) is not chain
    assert issubclass(chain, cc.CANVAS_TYPES[1])


def test_a_shared_task_is_a_celery_proxy(app: Celery) -> None:
    @shared_task(name="c.shared")
    def shared() -> None:
        return None

    assert isinstance(shared, cc.TASK_PROXY_TYPE)
    assert not isinstance(app.tasks["c.add"], cc.TASK_PROXY_TYPE)


def test_current_app_object_is_the_app_not_its_proxy(app: Celery) -> None:
    seen: list[Celery] = []

    def on_thread() -> None:
        app.set_current()
        seen.append(cc.current_app_object())

    thread = threading.Thread(target=on_thread)
    thread.start()
    thread.join()
    assert seen == [app]
    assert seen[0] is app
    assert type(seen[0]) is Celery


def test_active_apps_and_the_fallback_app(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    assert callable(celery._state._get_active_apps)
    assert app in cc.active_apps()
    assert not cc.is_fallback_app(app)
    # With no default app yet, a thread without a current app gets a new fallback.
    assert hasattr(celery._state, "default_app")
    monkeypatch.setattr(celery._state, "default_app", None)
    seen: list[Celery] = []
    thread = threading.Thread(target=lambda: seen.append(cc.current_app_object()))
    thread.start()
    thread.join()
    assert seen[0].main == "default"
    assert celery._state.default_app is seen[0]
    assert cc.is_fallback_app(seen[0])


# -- Celery: the direct path's decisions ---------------------------------------


def test_publish_quirk_markers_are_what_apply_async_consults(app: Celery) -> None:
    source = inspect.getsource(Task.apply_async)
    assert Task.__v2_compat__ is False
    assert "__v2_compat__" in source
    if hasattr(Task, "_dump_pydantic_arguments"):  # newer Celery only
        assert Task._dump_pydantic_arguments is None
        assert "_dump_pydantic_arguments" in source
    assert cc.has_publish_quirks(app.tasks["c.add"]) is False

    @app.task(shared=False, name="c.legacy")
    def legacy() -> None:
        return None

    type(legacy).__v2_compat__ = True
    assert cc.has_publish_quirks(legacy) is True


def test_pydantic_tasks_are_marked(app: Celery) -> None:
    pytest.importorskip("pydantic")
    if not hasattr(Task, "_dump_pydantic_arguments"):
        pytest.skip("this Celery does not dump pydantic arguments when publishing")

    @app.task(shared=False, name="c.model", pydantic=True)
    def model(x: int) -> int:
        return x

    assert cc.has_publish_quirks(model) is True


def test_signature_checker_is_the_task_header(app: Celery) -> None:
    assert "__header__" in inspect.getsource(Task.apply_async)
    check = cc.signature_checker(app.tasks["c.add"])
    assert callable(check)
    check(1, 2)
    with pytest.raises(TypeError):
        check(1, 2, 3)
    assert cc.signature_checker(object()) is None  # type: ignore[arg-type]


def test_exec_options_are_the_per_class_cache(app: Celery) -> None:
    assert not [p for p in _params(Task._get_exec_options).values() if p.name != "self"]

    class Routed(Task):  # type: ignore[type-arg]
        priority = 4
        serializer = "json"

    @app.task(shared=False, name="c.routed", base=Routed)
    def routed() -> None:
        return None

    options = cc.exec_options(routed)
    assert isinstance(options, dict)
    assert (options["priority"], options["serializer"]) == (4, "json")
    assert cc.exec_options(routed) is options  # cached per class
    # Every class option must be one the direct path reproduces or refuses; a new
    # one would be dropped silently from direct messages.
    assert set(options) <= DIRECT_OPTIONS | _NONE_ONLY


def test_backend_publish_hook(app: Celery) -> None:
    hook = BaseBackend.on_task_call
    assert list(_params(hook)) == ["self", "producer", "task_id"]
    assert RedisBackend.on_task_call is not hook  # the subscription it replaces
    assert list(_params(RedisBackend.on_task_call)) == ["self", "producer", "task_id"]
    assert cc.backend_sees_publishes(app) is False  # Redis
    rpc = Celery("compat-rpc", set_as_current=False, broker="memory://", backend="rpc://")
    disabled = Celery("compat-off", set_as_current=False, broker="memory://")
    try:
        assert cc.backend_sees_publishes(rpc) is True
        assert cc.backend_sees_publishes(disabled) is False
    finally:
        rpc.close()
        disabled.close()


def test_reply_to_oid_is_per_thread(app: Celery) -> None:
    first = cc.reply_to_oid(app)
    assert isinstance(first, str)
    assert first
    assert cc.reply_to_oid(app) == first
    other: list[str] = []
    thread = threading.Thread(target=lambda: other.append(cc.reply_to_oid(app)))
    thread.start()
    thread.join()
    assert other[0] != first


def test_task_message_v2_takes_the_options_used_and_returns_four_parts(app: Celery) -> None:
    build = cc.task_message_v2(app)
    params = _params(build)
    used = {
        "countdown",
        "eta",
        "expires",
        "reply_to",
        "time_limit",
        "soft_time_limit",
        "root_id",
        "parent_id",
        "ignore_result",
        "origin",
        "argsrepr",
        "kwargsrepr",
    }
    assert used <= set(params), used - set(params)
    assert list(params)[:4] == ["task_id", "name", "args", "kwargs"]
    message = build(
        "tid",
        "c.add",
        (1, 2),
        {},
        reply_to="oid",
        ignore_result=False,
        origin="gen1@host",
        argsrepr="(1, 2)",
        kwargsrepr="{}",
    )
    assert isinstance(message, tuple)
    assert len(message) == 4
    headers, properties, body, sent_event = message
    assert headers["id"] == "tid"
    assert headers["task"] == "c.add"
    assert headers["origin"] == "gen1@host"
    assert headers["argsrepr"] == "(1, 2)"
    assert properties["reply_to"] == "oid"
    assert isinstance(properties, dict)
    assert body[0] == (1, 2)
    assert body[1] == {}
    assert sent_event is None


def _routed_app(routes: Any) -> Celery:
    app = Celery("compat-routes", set_as_current=False, broker="memory://")
    app.conf.task_routes = routes

    @app.task(shared=False, name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_static_route_with_map_routes_only(app: Celery) -> None:
    params = _params(Router.route)
    assert list(params)[:6] == ["self", "options", "name", "args", "kwargs", "task_type"]
    task = app.tasks["c.add"]
    routed = cc.static_route(app, "c.add", None, task)
    assert routed is not None
    assert set(routed) == {"queue"}
    assert isinstance(routed["queue"], Queue)
    assert routed["queue"].name == "celery"
    other = cc.static_route(app, "c.add", "other", task)
    assert other is not None
    assert other["queue"].name == "other"

    globbed = _routed_app({"c.*": {"queue": "globbed"}})
    routed = cc.static_route(globbed, "c.add", None, globbed.tasks["c.add"])
    assert routed is not None
    assert routed["queue"].name == "globbed"

    def by_function(name: str, args: Any, kwargs: Any, options: Any, **rest: Any) -> None:
        return None

    dynamic = _routed_app([by_function])
    assert cc.static_route(dynamic, "c.add", None, dynamic.tasks["c.add"]) is None
    for made in (globbed, dynamic):
        made.close()


def test_routing_keeps_none_only_for_an_explicit_queue_no_route_overrides(app: Celery) -> None:
    task = app.tasks["c.add"]
    assert cc.routing_keeps_none(app, "c.add", None, task) is False  # lpmerge of the default
    assert cc.routing_keeps_none(app, "c.add", "other", task) is True
    routed = _routed_app({"c.*": {"queue": "globbed"}})
    kept = cc.routing_keeps_none(routed, "c.add", "other", routed.tasks["c.add"])
    assert kept is False  # the matched route is merged with lpmerge
    routed.close()


def test_seconds_until_follows_the_installed_celery() -> None:
    helper = getattr(celery.utils.time, "subtract_datetimes", None)
    assert (cc._subtract is None) is (helper is None)
    if helper is not None:
        assert list(_params(helper)) == ["end", "start"]
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert cc.seconds_until(now + timedelta(seconds=10), now) == 10.0
    assert cc.seconds_until(now - timedelta(seconds=3), now) == -3.0


def test_has_receivers_reads_the_signal_list() -> None:
    signal = Signal(name="compat_probe")
    assert isinstance(signal.receivers, list)
    assert cc.has_receivers(signal) is False

    def receiver(**kwargs: Any) -> None:
        return None

    signal.connect(receiver, weak=False)
    assert cc.has_receivers(signal) is True
    signal.disconnect(receiver)
    assert cc.has_receivers(signal) is False


def test_live_receivers_resolves_weak_references_and_skips_dead_ones() -> None:
    signal = Signal(name="compat_live_probe")
    assert cc.live_receivers(signal) == []

    def strong(**kwargs: Any) -> None:
        return None

    def weak(**kwargs: Any) -> None:
        return None

    class Holder:
        def method(self, **kwargs: Any) -> None:
            return None

    holder = Holder()
    signal.connect(strong, weak=False)
    signal.connect(weak)  # a weak reference
    signal.connect(holder.method)  # a weak method
    entry = signal.receivers[0]
    assert isinstance(entry, tuple)
    assert len(entry) == 2  # ((keys), receiver)
    found = cc.live_receivers(signal)
    assert found[:2] == [strong, weak]
    assert found[2] == holder.method
    del holder, found
    import gc

    gc.collect()
    assert cc.live_receivers(signal) == [strong, weak]


def test_all_receivers_holds_for_none_and_asks_each_live_one() -> None:
    signal = Signal(name="compat_all_probe")
    asked: list[Any] = []

    def marked(receiver: Any) -> bool:
        asked.append(receiver)
        return receiver is first

    assert cc.all_receivers(signal, marked) is True  # no receiver: nothing asked
    assert asked == []

    def first(**kwargs: Any) -> None:
        return None

    def second(**kwargs: Any) -> None:
        return None

    signal.connect(first, weak=False)
    assert cc.all_receivers(signal, marked) is True
    signal.connect(second, weak=False)
    assert cc.all_receivers(signal, marked) is False
    assert asked == [first, first, second]


# -- Celery: the publishing thread -------------------------------------------------


def test_freeze_canvas_takes_the_id_as_underscore_id() -> None:
    assert "_id" in _params(Signature.freeze)
    app = _routed_app(None)  # no result backend: a chord's freeze asks it nothing
    add = app.tasks["c.add"]
    for canvas in (add.s(1) | add.s(), chord([add.s(1, 2)], add.s())):
        assert "_id" in _params(type(canvas).freeze)
        assert cc.freeze_canvas(canvas, "given-id") == "given-id"
    # A group takes its id from its own task_id option (assigned when missing).
    assert "_id" in _params(group.freeze)
    fresh = group(add.s(1, 2), add.s(3, 4))
    assert cc.freeze_canvas(fresh, None) == fresh.options["task_id"]
    named = group(add.s(1, 2)).set(task_id="group-id")
    assert cc.freeze_canvas(named, None) == "group-id"
    app.close()


def test_prepare_and_release_a_publishing_thread(app: Celery) -> None:
    assert isinstance(app._local, threading.local)  # type: ignore[attr-defined]
    assert inspect.isfunction(RedisBackend.on_task_call)
    found: dict[str, Any] = {}

    def on_thread() -> None:
        cc.prepare_publishing_thread(app)
        backend = app.backend
        found["current"] = cc.current_app_object()
        found["backend"] = backend
        found["local"] = app._local.backend  # type: ignore[attr-defined]
        found["hook"] = backend.on_task_call
        consumer = backend.result_consumer
        found["pubsub"] = hasattr(consumer, "_pubsub")
        found["subscribed"] = consumer.subscribed_to
        found["stop"] = callable(consumer.stop)
        backend.client  # noqa: B018  (the cached property, created without connecting)
        found["cached"] = "client" in backend.__dict__
        cc.release_thread_backend(app)

    thread = threading.Thread(target=on_thread)
    thread.start()
    thread.join()
    assert found["current"] is app
    assert found["local"] is found["backend"]
    assert found["hook"] is cc._no_subscription
    assert found["pubsub"]
    assert isinstance(found["subscribed"], set)
    assert found["stop"]
    assert found["cached"]
    assert app.backend.on_task_call is not cc._no_subscription  # this thread's own


# -- Celery: the worker side ---------------------------------------------------------


def test_crontab_spec_is_the_five_fields_as_written() -> None:
    from celery.schedules import crontab

    from aceleryctl.compat.celery import crontab_spec

    spec = crontab(minute="*/15", hour="0-6", day_of_week="mon-fri", day_of_month="1,15")
    assert crontab_spec(spec) == ("*/15", "0-6", "1,15", "*", "mon-fri")
    assert " ".join(crontab_spec(spec)) in repr(spec)


def test_current_worker_task_is_the_task_a_worker_runs(app: Celery) -> None:
    assert callable(celery._state.get_current_worker_task)
    assert cw.current_worker_task() is None
    seen: list[Any] = []

    @app.task(shared=False, name="c.who")
    def who() -> None:
        seen.append(cw.current_worker_task())

    who.apply()  # traced as a worker traces it (not called directly)
    assert seen == [who]
    who()  # called directly: not a worker's task
    assert seen == [who, None]


class _UnreadApp:
    """An app whose ``current_worker_task`` records that it was read."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def current_worker_task(self) -> Any:
        self.reads += 1
        return celery._state.get_current_worker_task()


def test_current_worker_task_of_skips_the_walk_when_no_thread_runs_a_task(app: Celery) -> None:
    # The per-thread storage behind celery._state._task_stack: empty here.
    assert cc._TASK_STACKS is celery._state._task_stack._local.__storage__
    assert cc._TASK_STACKS == {}
    unread = _UnreadApp()
    assert cc.current_worker_task_of(unread) is None  # type: ignore[arg-type]
    assert unread.reads == 0
    seen: list[Any] = []

    @app.task(shared=False, name="c.parent")
    def parent() -> None:
        assert cc._TASK_STACKS  # this thread's stack has the task now
        seen.append(cc.current_worker_task_of(unread))  # type: ignore[arg-type]
        seen.append(cc.current_worker_task_of(app))

    parent.apply()  # traced as a worker traces it
    assert seen == [parent, parent]
    assert unread.reads == 1
    assert cc._TASK_STACKS == {}  # released once the stack is empty again
    parent()  # called directly: on the stack, but not a worker's task
    assert seen[2:] == [None, None]


def test_current_worker_task_of_reads_the_property_when_the_storage_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cc, "_TASK_STACKS", None)
    unread = _UnreadApp()
    assert cc.current_worker_task_of(unread) is None  # type: ignore[arg-type]
    assert unread.reads == 1


def _retrying_app() -> Celery:
    """An app that can publish a retry without a network (no result backend)."""
    app = Celery("compat-retry", set_as_current=False, broker="memory://")
    app.conf.task_default_queue = "celery"

    @app.task(shared=False, name="c.flaky", default_retry_delay=7)
    def flaky(x: int) -> int:
        return x

    app.finalize()
    return app


def _retry_seen_while_publishing(task: Any, **retry_kwargs: Any) -> tuple[Any, Retry]:
    """Call ``task.retry(**retry_kwargs)`` as a worker would, and return what
    :func:`cw.retry_call_on_stack` finds from ``before_task_publish`` (and the Retry)."""
    seen: list[Any] = []

    def on_publish(**kwargs: Any) -> None:
        seen.append(cw.retry_call_on_stack(64))

    celery_signals.before_task_publish.connect(on_publish, weak=False)
    task.push_request(id="retry-id", args=(1,), kwargs={}, retries=0, called_directly=False)
    try:
        with pytest.raises(Retry) as raised:
            task.retry(**retry_kwargs)
    finally:
        task.pop_request()
        celery_signals.before_task_publish.disconnect(on_publish)
    [found] = seen
    return found, raised.value


def test_retry_call_on_stack_reads_task_retrys_frame() -> None:
    assert cw.TASK_RETRY_CODE is Task.retry.__code__
    # The locals read: its arguments, and ``ret``, the Retry made before publishing.
    names = Task.retry.__code__.co_varnames
    assert {"exc", "eta", "countdown", "ret"} <= set(names)
    source = inspect.getsource(Task.retry)
    assert source.index("ret = Retry(") < source.index("S.apply_async()")
    assert cw.retry_call_on_stack(64) is None  # no retry on this stack

    app = _retrying_app()
    flaky = app.tasks["c.flaky"]
    error = ConnectionError("down")
    found, raised = _retry_seen_while_publishing(flaky, exc=error, countdown=5)
    assert isinstance(found, cw.RetryCall)
    assert found.retry is raised
    assert found.retry.exc is error
    assert (found.exc, found.eta, found.countdown) == (error, None, 5)
    when = datetime(2030, 1, 1, tzinfo=UTC)
    found, raised = _retry_seen_while_publishing(flaky, eta=when)
    assert found.retry is raised
    assert (found.exc, found.eta) == (None, when)
    found, _ = _retry_seen_while_publishing(flaky)
    assert found.countdown == 7  # the task's default delay
    app.close()


def test_unpickleable_exception_name_is_the_wrapped_class() -> None:
    wrapper = UnpickleableExceptionWrapper.from_exception(ValueError("bad"))
    assert wrapper.exc_cls_name == "ValueError"
    assert cw.unpickleable_exception_name(wrapper) == "ValueError"
    assert cw.unpickleable_exception_name(ValueError("bad")) is None


def test_worker_request_dict_is_the_messages_fields(app: Celery) -> None:
    assert isinstance(inspect.getattr_static(Request, "request_dict"), property)
    message = TaskMessage(
        "c.add", id="req-id", args=(1, 2), kwargs={}, retries=2, correlation="c-1"
    )
    request = Request(message, app=app)
    fields = cw.worker_request_dict(request)
    assert (fields["id"], fields["task"], fields["retries"]) == ("req-id", "c.add", 2)
    assert fields["correlation"] == "c-1"  # custom headers too
    assert cw.worker_request_dict(object()) == {}


def test_the_progress_store_reproduces_redis_backend_methods(app: Celery) -> None:
    for name in cw.REDIS_RESULT_STORE_METHODS:
        assert callable(getattr(RedisBackend, name)), name
    assert {"result", "state", "traceback", "request"} <= set(_params(BaseBackend._get_result_meta))
    backend = app.backend
    assert isinstance(backend, RedisBackend)
    meta = cw.result_meta(backend, {"done": 1}, "PROGRESS", None)
    assert list(meta)[:5] == ["status", "result", "traceback", "children", "date_done"]
    assert (meta["status"], meta["result"], meta["traceback"]) == ("PROGRESS", {"done": 1}, None)
    app.conf.result_extended = True
    request = celery.app.task.Context(id="x", task="c.add", args=[1], kwargs={}, retries=2)
    extended = cw.result_meta(backend, 1, "PROGRESS", request)
    assert (extended["name"], extended["args"], extended["retries"]) == ("c.add", [1], 2)

    assert isinstance(RedisBackend._MAX_STR_VALUE_SIZE, int)
    assert cw.max_stored_value_size(backend) == RedisBackend._MAX_STR_VALUE_SIZE
    assert cw.max_stored_value_size(object()) == 512 * 1024 * 1024


# -- Celery: the consumer's task strategies (the run-once guard) --------------------


class _StandInConsumer(SimpleNamespace):
    """Hashable: it is the sender of ``task_received``, whose receivers are cached by
    sender."""

    __hash__ = object.__hash__


def _strategy_of(app: Celery, name: str, handled: list[Any]) -> Any:
    """The strategy Celery's ``Tasks`` step builds for task ``name``, for a consumer
    standing in with the attributes a strategy reads (no broker, no pool)."""
    consumer = _StandInConsumer(
        hostname="w@compat",
        connection_errors=(),
        event_dispatcher=None,
        timer=SimpleNamespace(call_at=lambda *a, **k: None),
        apply_eta_task=handled.append,
        disable_rate_limits=True,
        task_buckets={},
        on_task_request=handled.append,
        _limit_task=None,
        _limit_post_eta=None,
        pool=SimpleNamespace(apply_async=None),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=set())),
    )
    return app.tasks[name].start_strategy(app, consumer)


def test_the_consumer_calls_a_strategy_with_five_positional_arguments() -> None:
    source = inspect.getsource(Consumer.create_task_handler)
    call = source[source.index("strategy(\n") :]
    names = [part.strip() for part in call[len("strategy(") : call.index(")")].split(",")]
    expected = ["message", "payload", "ack", "reject", "callbacks"]
    assert [n.split("_")[0] for n in names if n] == expected


def test_a_request_settles_through_the_strategys_ack_and_reject(app: Celery) -> None:
    handled: list[Any] = []
    strategy = _strategy_of(app, "c.add", handled)
    settled: list[tuple[str, tuple[Any, ...]]] = []

    def ack(*args: Any) -> None:
        settled.append(("ack", args))

    def reject(*args: Any) -> None:
        settled.append(("reject", args))

    for task_id in ("acked", "requeued"):
        message = TaskMessage("c.add", id=task_id, args=(1, 2))
        strategy(message, None, ack, reject, [])
    first, second = handled
    try:
        assert isinstance(first, Request)
        first.acknowledge()
        first.acknowledge()  # once only
        second.reject(requeue=True)
        [(kind, args), (kind2, args2)] = settled
        assert kind == "ack"
        assert len(args) == 2  # (logger, connection_errors)
        assert (kind2, args2[2]) == ("reject", True)  # (logger, connection_errors, requeue)
    finally:
        for request in handled:
            worker_state.task_ready(request)


class _RecordingSettle:
    def __init__(self) -> None:
        self.told: list[str] = []

    def acked(self) -> None:
        self.told.append("acked")

    def rejected(self, requeue: bool) -> None:
        self.told.append(f"rejected requeue={requeue}")

    def abandoned(self) -> None:
        self.told.append("abandoned")


def test_wrap_strategy_runs_drops_or_reports_how_a_message_settled(app: Celery) -> None:
    handled: list[Any] = []
    strategy = _strategy_of(app, "c.add", handled)
    settle = _RecordingSettle()
    answers: list[Any] = [ccc.Verdict.RUN, ccc.Verdict.DROP, settle, settle]
    asked: list[Any] = []

    def admit(message: Any, body: Any) -> Any:
        asked.append((message.headers["id"], body))
        return answers.pop(0)

    wrapped = ccc.wrap_strategy(strategy, admit, ("errors",))
    assert ccc.is_wrapped(wrapped)
    assert ccc.wrap_strategy(wrapped, admit, ()) is wrapped
    acks: list[tuple[Any, ...]] = []
    rejects: list[tuple[Any, ...]] = []

    def ack(*args: Any) -> None:
        acks.append(args)

    def reject(*args: Any) -> None:
        rejects.append(args)

    try:
        for task_id in ("run", "drop", "ack", "reject"):
            wrapped(TaskMessage("c.add", id=task_id), None, ack, reject, [])
        assert [a[0] for a in asked] == ["run", "drop", "ack", "reject"]
        assert [r.id for r in handled] == ["run", "ack", "reject"]  # "drop" never ran
        assert [a[1] for a in acks] == [("errors",)]  # the dropped one, acked at once
        handled[1].acknowledge()
        handled[2].reject(requeue=True)
        assert settle.told == ["acked", "rejected requeue=True"]
        assert len(acks) == 2
        assert rejects[-1][2] is True
    finally:
        for request in handled:
            worker_state.task_ready(request)

    def broken(*args: Any) -> None:
        raise ValueError("not a task message")

    failing = ccc.wrap_strategy(broken, lambda m, b: settle, ())
    with pytest.raises(ValueError, match="not a task message"):
        failing(TaskMessage("c.add", id="bad"), None, ack, reject, [])
    assert settle.told[-1] == "abandoned"


def test_message_attempt_reads_the_headers_celery_writes(app: Celery) -> None:
    when = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    headers, *_ = cc.task_message_v2(app)(
        "tid-1",
        "c.add",
        (1, 2),
        {},
        retries=2,
        eta=when,
        replaced_task_nesting=1,
    )
    message = SimpleNamespace(headers=headers)
    found = ccc.message_attempt(message, None)
    assert found == ccc.MessageAttempt("c.add", "tid-1", 2, 1, when.timestamp())
    plain = ccc.message_attempt(SimpleNamespace(headers={"id": "t", "task": "c.add"}), None)
    assert plain == ccc.MessageAttempt("c.add", "t", 0, 0, None)
    # Protocol 1: the consumer hands the decoded body to the strategy.
    body = {"id": "t1", "task": "c.add", "retries": 1, "eta": "2030-01-01T12:00:00"}
    old = ccc.message_attempt(SimpleNamespace(headers={}), body)
    assert old == ccc.MessageAttempt("c.add", "t1", 1, 0, when.timestamp())
    assert ccc.message_attempt(SimpleNamespace(headers={}), None) is None
    assert ccc.message_attempt(SimpleNamespace(headers={"id": ""}), None) is None


def test_task_replace_hands_the_id_on_with_a_nesting_header() -> None:
    source = inspect.getsource(Task.replace)
    assert "sig.freeze(self.request.id)" in source
    assert "replaced_task_nesting=replaced_task_nesting" in source
    assert "replaced_task_nesting" in _params(celery.app.amqp.AMQP.as_task_v2)


# -- kombu and redis-py -------------------------------------------------------------


@pytest.fixture
def channel() -> Iterator[Any]:
    """A kombu Redis channel whose connection check is stubbed (nothing connects)."""
    connection = kombu.Connection("redis://127.0.0.1:1/0")
    with mock.patch.object(redis.Redis, "ping", return_value=True):
        made = connection.channel()
    assert isinstance(made, kombu_redis_transport.Channel)
    yield made
    connection.release()


def _stock_push(
    channel: Any, message: dict[str, Any], routing_key: str, tag: str
) -> tuple[str, str]:
    """What kombu's own ``basic_publish`` LPUSHes for ``message`` (key, payload)."""
    pushed: list[tuple[str, str]] = []

    class Client:
        def lpush(self, key: str, payload: str) -> None:
            pushed.append((key, payload))

    @contextlib.contextmanager
    def acquire(*args: Any, **kwargs: Any) -> Iterator[Client]:
        yield Client()

    with (
        mock.patch.object(channel, "conn_or_acquire", acquire),
        mock.patch.object(channel, "_next_delivery_tag", return_value=tag),
    ):
        channel.basic_publish(message, "", routing_key)
    [push] = pushed
    return push


@pytest.mark.parametrize("priority", [None, 0, 3, 9])
def test_redis_envelope_is_what_the_channel_pushes(channel: Any, priority: int | None) -> None:
    for name in ("prepare_message", "encode_body", "_q_for_pri", "_get_message_priority"):
        assert callable(getattr(channel, name)), name
    assert isinstance(channel.body_encoding, str)
    assert list(_params(channel._q_for_pri)) == ["queue", "pri"]

    def message_args() -> tuple[Any, ...]:
        props = {"correlation_id": "tid", "reply_to": "oid", "delivery_mode": 2}
        return ("[[1, 2], {}, {}]", priority, "application/json", "utf-8", {"id": "tid"}, props)

    stock_key, stock_payload = _stock_push(
        channel, channel.prepare_message(*message_args()), "work", "tag-1"
    )
    key, envelope = ckr.redis_envelope(channel, "work", "tag-1", *message_args())
    assert isinstance(key, str)
    assert key == stock_key
    assert json.loads(kombu_json_dumps(envelope)) == json.loads(stock_payload)


def test_encoded_body_is_the_envelopes_body(channel: Any) -> None:
    for data in ("[[1, 2], {}, {}]", b"\x93\x01\x02", "é"):
        _, envelope = ckr.redis_envelope(
            channel, "work", "tag-1", data, None, "application/json", "utf-8", {}, {}
        )
        assert ckr.encoded_body(channel, data) == envelope["body"]


@pytest.mark.parametrize(("priority", "suffix"), [(None, ""), (9, "\x06\x169")])
def test_redis_envelope_key_carries_the_global_keyprefix(priority: int | None, suffix: str) -> None:
    # kombu's prefixed client adds the prefix to the key of every LPUSH it sends;
    # the direct path writes below that client, so the key must already carry it.
    connection = kombu.Connection(
        "redis://127.0.0.1:1/0", transport_options={"global_keyprefix": "tenant-a:"}
    )
    with mock.patch.object(redis.Redis, "ping", return_value=True):
        prefixed = connection.channel()
    try:
        assert prefixed.global_keyprefix == "tenant-a:"
        props = {"delivery_mode": 2}
        key, _ = ckr.redis_envelope(
            prefixed, "work", "tag-1", "[]", priority, "application/json", "utf-8", {}, props
        )
        assert key == "tenant-a:work" + suffix
        sent: list[Any] = []
        with mock.patch.object(redis.Redis, "execute_command", lambda _, *a, **k: sent.append(a)):
            bare = prefixed._q_for_pri("work", prefixed.priority(priority or 0))
            prefixed.client.lpush(bare, "x")
        assert sent == [("LPUSH", key, "x")]  # what kombu's own client would write
    finally:
        connection.release()


def test_message_copy_is_the_delivery_tag_redis_keeps_when_it_restores(channel: Any) -> None:
    _, envelope = ckr.redis_envelope(
        channel, "work", "tag-of-the-publish",
        "[[1, 2], {}, {}]", None, "application/json", "utf-8", {"id": "tid"}, {},
    )  # fmt: skip
    first = channel.message_to_python(json.loads(kombu_json_dumps(envelope)))
    assert ckr.message_copy(first, "redis") == ("tag-of-the-publish", False)
    assert ckr.message_copy(first, "amqp") == (None, False)

    pushed: list[tuple[str, str, str]] = []

    class Pipe:
        def lpush(self, key: str, payload: str) -> None:
            pushed.append(("lpush", key, payload))

        def rpush(self, key: str, payload: str) -> None:
            pushed.append(("rpush", key, payload))

    # What reject(requeue=True), restore_unacked and restore_visible all end in.
    with mock.patch.object(channel, "_lookup", return_value=["work"]):
        channel._do_restore_message(envelope, "", "work", Pipe(), leftmost=True)
    [(_, key, payload)] = pushed
    assert key == "work"
    restored = channel.message_to_python(json.loads(payload))
    assert ckr.message_copy(restored, "redis") == ("tag-of-the-publish", True)
    assert restored.delivery_info["redelivered"] is True


def test_the_channel_pool_is_redis_py_and_unconnected(channel: Any) -> None:
    pool = ckr.channel_pool(channel)
    assert isinstance(pool, redis.ConnectionPool)
    assert callable(pool.get_connection)
    assert callable(pool.release)


def test_take_connection_asks_as_this_redis_py_wants() -> None:
    parameter = _params(redis.ConnectionPool.get_connection).get("command_name")
    required = parameter is not None and parameter.default is inspect.Parameter.empty
    assert ckr._needs_command_name(redis.ConnectionPool) is required

    class OldPool:
        def get_connection(self, command_name: str, *keys: Any) -> Any:
            return ("old", command_name)

    class NewPool:
        def get_connection(self, command_name: str | None = None, *keys: Any) -> Any:
            return ("new", command_name)

    assert ckr.take_connection(OldPool()) == ("old", "LPUSH")
    assert ckr.take_connection(NewPool()) == ("new", None)


def test_send_lpushes_uses_the_connection_below_the_client() -> None:
    connection_type = redis.Connection
    assert "check_health" in _params(connection_type.send_packed_command)
    read = _params(connection_type.read_response)
    assert all(p.default is not inspect.Parameter.empty for n, p in read.items() if n != "self")
    real = connection_type()  # packing opens nothing
    packed = real.pack_command("LPUSH", "k", "a", "b")
    assert all(isinstance(chunk, bytes | memoryview) for chunk in packed)
    assert b"".join(packed) == b"*4\r\n$5\r\nLPUSH\r\n$1\r\nk\r\n$1\r\na\r\n$1\r\nb\r\n"

    sent: list[tuple[Any, dict[str, Any]]] = []
    fake = mock.Mock()
    fake.pack_command.side_effect = real.pack_command
    fake.send_packed_command.side_effect = lambda command, **kw: sent.append((command, kw))
    ckr.send_lpushes(fake, {"q1": ["a"], "q2": ["b", "c"]})
    [(command, kwargs)] = sent
    assert kwargs == {"check_health": False}
    assert command == [
        b"".join(real.pack_command("LPUSH", "q1", "a") + real.pack_command("LPUSH", "q2", "b", "c"))
    ]
    assert fake.read_response.call_count == 2


def test_send_lpushes_can_end_with_a_wait_for_replicas() -> None:
    real = redis.Connection()  # packing opens nothing
    sent: list[Any] = []
    fake = mock.Mock()
    fake.pack_command.side_effect = real.pack_command
    fake.send_packed_command.side_effect = lambda command, **kw: sent.append(command)
    fake.read_response.side_effect = [3, 1]  # LPUSH's length, then WAIT's replica count
    assert ckr.send_lpushes(fake, {"q1": ["a"]}, (1, 0)) == 1
    # One buffer; a WAIT of 0 ms (wait forever) is never sent: at least 1 ms.
    lpush_then_wait = real.pack_command("LPUSH", "q1", "a") + real.pack_command("WAIT", 1, 1)
    assert sent == [[b"".join(lpush_then_wait)]]
    fake.read_response.side_effect = [0]
    sent.clear()
    assert ckr.wait_for_replicas(fake, 2, 250) == 0
    assert sent == [[b"".join(real.pack_command("WAIT", 2, 250))]]


def test_ping_channel_uses_the_redis_client_property(channel: Any) -> None:
    assert hasattr(inspect.getattr_static(type(channel), "client"), "__get__")  # a property
    with mock.patch.object(redis.Redis, "ping", return_value=True) as ping:
        assert isinstance(channel.client, redis.Redis)
        ckr.ping_channel(channel)
    assert ping.call_count == 1
    ckr.ping_channel(object())  # no client: nothing to do


def test_publish_batch_or_immediate_publishes() -> None:
    with kombu.Connection("memory://") as connection:
        queue = Queue("compat-batch", routing_key="compat-batch")
        producer = kombu.Producer(connection.default_channel)
        if hasattr(kombu.Producer, "batch"):
            assert "max_size" in _params(kombu.Producer.batch)
        with ckr.publish_batch(producer, max_size=8):
            for n in range(3):
                producer.publish({"n": n}, routing_key="compat-batch", declare=[queue])
        received = []
        simple = connection.SimpleQueue(queue)
        for _ in range(3):
            received.append(simple.get(timeout=1).payload["n"])
        simple.close()
    assert received == [0, 1, 2]
    assert isinstance(ckr.publish_batch(object(), max_size=1), contextlib.nullcontext)


# -- py-amqp: the AMQP wire's confirms ----------------------------------------------


@pytest.fixture
def amqp_channel() -> Any:
    """A py-amqp channel on a connection that was never opened (no network)."""
    import amqp

    connection = amqp.Connection("127.0.0.1:1")
    return amqp.Channel(connection, channel_id=1)


def test_listen_for_confirms_uses_the_channel_event_sets(amqp_channel: Any) -> None:
    import amqp

    heard: list[tuple[str, tuple[Any, ...]]] = []
    with mock.patch.object(amqp_channel, "confirm_select") as select:
        camqp.listen_for_confirms(
            amqp_channel,
            lambda *a: heard.append(("ack", a)),
            lambda *a: heard.append(("nack", a)),
            lambda *a: heard.append(("return", a)),
        )
    select.assert_called_once_with()
    # py-amqp's own dispatch of the three methods reaches the callbacks.
    amqp_channel._on_basic_ack(3, True)
    amqp_channel._on_basic_nack(4, False)
    message = amqp.Message(b"x", correlation_id="id-1")
    amqp_channel._on_basic_return(312, "NO_ROUTE", "ex", "rk", message)
    assert heard[:2] == [("ack", (3, True)), ("nack", (4, False))]
    kind, (exc, exchange, routing_key, returned) = heard[2]
    assert (kind, exchange, routing_key, returned) == ("return", "ex", "rk", message)
    assert "NO_ROUTE" in str(exc)
    assert returned.properties["correlation_id"] == "id-1"


def test_count_publishes_makes_every_publish_mandatory_and_counts_it(amqp_channel: Any) -> None:
    import amqp

    # The attribute py-amqp itself replaces in confirm mode, with the keywords kombu passes.
    assert amqp.Channel.basic_publish is amqp.Channel._basic_publish
    assert {"exchange", "routing_key", "mandatory", "immediate", "timeout"} <= set(
        _params(amqp.Channel._basic_publish)
    )
    sent: list[tuple[Any, dict[str, Any]]] = []
    counted: list[Any] = []
    amqp_channel.basic_publish = lambda message, **kw: sent.append((message, kw))
    camqp.count_publishes(amqp_channel, counted.append)
    message = amqp.Message(b"x")
    amqp_channel.basic_publish(
        message, exchange="", routing_key="q", mandatory=False, confirm_timeout=None
    )
    assert sent == [(message, {"exchange": "", "routing_key": "q", "mandatory": True})]
    assert counted == [message]

    def broken(message: Any, **kw: Any) -> None:
        raise OSError("reset")

    amqp_channel.basic_publish = broken
    camqp.count_publishes(amqp_channel, counted.append)
    with pytest.raises(OSError, match="reset"):
        amqp_channel.basic_publish(message, exchange="", routing_key="q")
    assert counted == [message, message]  # a failed write may have reached the broker


def test_frame_buffer_writes_what_basic_publish_writes_in_one_sendall(amqp_channel: Any) -> None:
    import amqp

    connection = amqp_channel.connection
    transport = mock.MagicMock()  # what an established connection holds
    connection._transport = transport
    message = amqp.Message(b'{"x": 1}', content_type="application/json", correlation_id="c1")
    # What py-amqp's own basic_publish writes, mandatory, captured from its frame writer.
    expected: list[bytes] = []
    connection.frame_writer = amqp.method_framing.frame_writer(
        connection, SimpleNamespace(write=lambda data: expected.append(bytes(data)))
    )
    with mock.patch.object(connection, "drain_events"):
        connection.client_properties = {}
        amqp.Channel._basic_publish(amqp_channel, message, "", "q", mandatory=True)
    transport.write.assert_not_called()  # py-amqp wrote through the captured writer
    frames = camqp.FrameBuffer(amqp_channel)
    frames.publish(message, "", "q")
    frames.publish(message, "", "q")
    transport.write.assert_not_called()
    frames.flush()
    transport.write.assert_called_once_with(b"".join(expected) * 2)
    frames.flush()  # nothing buffered: nothing written
    transport.write.assert_called_once()


def test_round_trip_sends_qos_and_waits_bounded(amqp_channel: Any) -> None:
    import amqp
    from amqp import spec

    assert "timeout" in _params(amqp.Channel.wait)
    assert "timeout" in _params(amqp.Connection.drain_events)
    with (
        mock.patch.object(amqp_channel, "send_method") as send,
        mock.patch.object(amqp_channel, "wait") as wait,
    ):
        camqp.round_trip(amqp_channel, 0.25)
    send.assert_called_once_with(spec.Basic.Qos, "lBb", (0, 0, False))
    wait.assert_called_once_with(spec.Basic.QosOk, timeout=0.25)
    with mock.patch.object(amqp_channel.connection, "drain_events") as drain:
        camqp.drain(amqp_channel, 0.5)
    drain.assert_called_once_with(timeout=0.5)


def test_new_pool_connection_is_made_like_the_pools_own() -> None:
    pool = redis.ConnectionPool.from_url("redis://:secret@127.0.0.1:1/3", socket_timeout=2.5)
    made = ckr.new_pool_connection(pool)
    assert type(made) is pool.connection_class
    assert (made.host, made.port, made.db, made.password) == ("127.0.0.1", 1, 3, "secret")
    assert made.socket_timeout == 2.5
    assert made._sock is None  # nothing connected
    sends = _params(redis.Connection.send_command)
    assert any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sends.values())
    assert callable(made.send_command)
    assert callable(made.read_response)


@pytest.mark.parametrize(
    ("url", "twin"),
    [
        ("redis://u:secret@127.0.0.1:1/3", redis.asyncio.Connection),
        ("rediss://127.0.0.1:1/3?ssl_cert_reqs=required", redis.asyncio.SSLConnection),
        ("unix:///tmp/none.sock?db=3", redis.asyncio.UnixDomainSocketConnection),
    ],
)
def test_async_connection_factory_makes_twins_of_the_pools_connections(
    url: str, twin: type
) -> None:
    pool = redis.ConnectionPool.from_url(url, socket_timeout=2.5, socket_connect_timeout=1.5)
    assert isinstance(pool.connection_kwargs, dict)
    factory, why = cra.async_connection_factory(pool)
    assert factory is not None, why
    made = factory()
    assert type(made) is twin
    assert made.db == 3
    assert made.socket_timeout == 2.5
    assert made.socket_connect_timeout == 1.5
    assert made.retry.get_retries() == 0  # never a silent second write
    if twin is redis.asyncio.Connection:
        assert (made.host, made.port, made.username, made.password) == (
            "127.0.0.1",
            1,
            "u",
            "secret",
        )
    assert not made.is_connected
    with pytest.raises(ConnectionError):
        cra.stream_writer(made)  # not connected: no writer


def test_close_now_closes_and_forgets_the_streams() -> None:
    made = redis.asyncio.Connection(host="127.0.0.1", port=1)
    assert callable(made._close)
    closed: list[bool] = []

    class Writer:
        def close(self) -> None:
            closed.append(True)

    made._writer = Writer()  # type: ignore[assignment]
    cra.close_now(made)
    assert closed == [True]
    assert made._writer is None  # collected without an "unclosed Connection" warning
    cra.close_now(made)  # idempotent


def test_async_connection_factory_refuses_other_connection_classes() -> None:
    class Custom(redis.Connection):
        pass

    pool = redis.ConnectionPool(connection_class=Custom)
    factory, why = cra.async_connection_factory(pool)
    assert factory is None
    assert "Custom" in why


async def test_stream_writer_is_the_connections_own() -> None:
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A recording stand-in for Redis: "+OK" to each command (a line starting "*").
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"*"):
                writer.write(b"+OK\r\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    factory, _ = cra.async_connection_factory(
        redis.ConnectionPool.from_url(f"redis://127.0.0.1:{port}/0", protocol=2)
    )
    assert factory is not None
    connection = factory()
    try:
        await connection.connect()
        writer = cra.stream_writer(connection)
        assert isinstance(writer, asyncio.StreamWriter)
        writer.writelines([b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"])
        assert await connection.read_response() in (b"OK", "OK")
        assert b"hi\r\n" in received  # written synchronously, as it was handed over
    finally:
        await connection.disconnect()
        server.close()
        await server.wait_closed()


def test_serializer_encoder_is_the_registrys_json_encoder() -> None:
    codec = serialization.registry._encoders["json"]  # type: ignore[attr-defined]
    assert isinstance(codec, tuple)
    assert len(codec) == 3
    assert codec[0] == "application/json"
    encode = ckr.serializer_encoder("json")
    assert encode is kombu_json_dumps
    value = {"status": "PROGRESS", "result": {"n": 1}, "task_id": "t"}
    assert encode(value) == serialization.dumps(value, serializer="json")[2]
    assert ckr.serializer_encoder("no-such-serializer") is None
    assert ckr.serializer_codec("json") == ("application/json", "utf-8", kombu_json_dumps)
    assert ckr.serializer_codec("no-such-serializer") is None
    # The registry's dict is read once, at import: a serializer registered later is found.
    serialization.register("later", repr, repr, content_type="application/x-later")
    try:
        assert ckr.serializer_codec("later") == ("application/x-later", "utf-8", repr)
    finally:
        serialization.unregister("later")
    assert ckr.serializer_codec("later") is None


# -- Django Channels ----------------------------------------------------------------


def test_routing_tree_attributes() -> None:
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.middleware import BaseMiddleware
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    from aceleryctl.checks import _routes_consumer
    from aceleryctl.consumers import TaskEventsConsumer

    class Other(AsyncWebsocketConsumer):
        pass

    leaf = TaskEventsConsumer.as_asgi()
    assert cch.routed_consumer_class(leaf) is TaskEventsConsumer
    assert cch.routed_consumer_class(Other.as_asgi()) is Other
    urls = URLRouter([path("ws/tasks/", leaf)])
    middleware = BaseMiddleware(urls)
    router = ProtocolTypeRouter({"websocket": middleware})
    assert router.application_mapping == {"websocket": middleware}
    assert middleware.inner is urls
    assert [route.callback for route in urls.routes] == [leaf]
    assert {"application_mapping", "routes", "callback", "inner"} <= set(cch.ASGI_CHILD_ATTRIBUTES)
    assert _routes_consumer(router)
    assert not _routes_consumer(
        ProtocolTypeRouter({"websocket": URLRouter([path("x/", Other.as_asgi())])})
    )


def test_redis_groups_with_members_reads_channels_redis_groups() -> None:
    core = pytest.importorskip("channels_redis.core")
    layer_type = core.RedisChannelLayer
    layer = layer_type(hosts=["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1"], prefix="p")
    assert layer._group_key("g") == b"p:group:g"
    assert layer.consistent_hash("g") in range(2)
    assert isinstance(layer.group_expiry, int)
    assert list(_params(layer_type.connection)) == ["self", "index"]
    # A group is a sorted set of channel -> join time; group_send skips old members.
    adds = inspect.getsource(layer_type.group_add)
    assert "_group_key(group)" in adds
    assert "zadd(group_key, {channel: time.time()})" in adds
    sends = inspect.getsource(layer_type.group_send)
    assert "zremrangebyscore" in sends
    assert "self.group_expiry" in sends

    evaluated: list[tuple[int, int, tuple[Any, ...]]] = []

    class Client:
        def __init__(self, index: int) -> None:
            self.index = index

        async def eval(self, script: str, numkeys: int, *args: Any) -> list[int]:
            assert "ZCOUNT" in script
            assert numkeys == 0  # the keys travel as one argument, one per line
            since, keys = args
            evaluated.append((self.index, since, keys.split(b"\n")))
            return [n + 1 for n, key in enumerate(keys.split(b"\n")) if key.endswith(b"watched")]

    groups = [f"g{n}-watched" if n % 3 == 0 else f"g{n}" for n in range(12)]
    with mock.patch.object(layer, "connection", Client):
        found = asyncio.run(cch.redis_groups_with_members(layer, groups))
    assert found is not None
    assert sorted(found) == sorted(g for g in groups if g.endswith("watched"))
    assert {index for index, _, _ in evaluated} == {0, 1}  # one EVAL per shard
    for index, since, keys in evaluated:
        assert all(layer.consistent_hash(k.decode()[len("p:group:") :]) == index for k in keys)
        assert str(since).startswith("(")  # join times after now - group_expiry
    assert asyncio.run(cch.redis_groups_with_members(object(), ["g"])) is None


# -- Django's task framework (aceleryctl.compat.django_tasks) ---------------------------


def test_the_task_framework_is_django_tasks_when_django_has_it() -> None:
    import importlib.util

    from aceleryctl.compat import django_tasks as dt

    expected = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
    framework = dt.FRAMEWORK
    assert framework == expected
    assert dt.Task.__module__.startswith(expected)
    assert issubclass(dt.InvalidTask, Exception)
    assert (dt.TASK_MIN_PRIORITY, dt.DEFAULT_TASK_PRIORITY, dt.TASK_MAX_PRIORITY) == (-100, 0, 100)


def test_set_return_value_fills_what_return_value_reads() -> None:
    from aceleryctl.compat import django_tasks as dt
    from tests.integration.tasks import functions

    result = dt.TaskResult(
        task=functions.add,
        id="x",
        status=dt.TaskResultStatus.SUCCESSFUL,
        enqueued_at=None,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=[],
        kwargs={},
        backend="default",
        errors=[],
        worker_ids=[],
    )
    dt.set_return_value(result, {"v": 1})
    assert result.return_value == {"v": 1}
    assert "_return_value" in dt.TaskResult.__dataclass_fields__


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, 2), {}),
        ([1, "a", 2.5, True, None], {"x": 1, "y": "z", "n": None}),
        ((), {}),
        # Not plain: these take the constructor (normalize_json's own results).
        (((1, 2), [3]), {"nested": {"a": (1,)}}),
        ((b"bytes",), {"k": b"v"}),
        ((), {1: "int key"}),
    ],
)
def test_new_ready_result_is_what_the_constructor_makes(args: Any, kwargs: Any) -> None:
    from aceleryctl.compat import django_tasks as dt
    from tests.integration.tasks import functions

    assert dt._FILL_DIRECTLY, "TaskResult's fields changed: new_ready_result must follow"
    now = datetime.now(UTC)
    made = dt.new_ready_result(functions.add, "x", now, args, kwargs, "default")
    expected = dt.TaskResult(
        task=functions.add,
        id="x",
        status=dt.TaskResultStatus.READY,
        enqueued_at=now,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=args,
        kwargs=kwargs,
        backend="default",
        errors=[],
        worker_ids=[],
    )
    assert type(made) is dt.TaskResult
    assert made == expected
    assert repr(made) == repr(expected)
    assert [type(getattr(made, f)) for f in dt.RESULT_FIELDS] == [
        type(getattr(expected, f)) for f in dt.RESULT_FIELDS
    ]
    assert made.args is not args  # copies, as normalising makes
    assert made.kwargs is not kwargs
    with pytest.raises(ValueError, match="not finished"):
        made.return_value  # noqa: B018


@pytest.mark.parametrize("bad", [object(), {1, 2}])
def test_new_ready_result_raises_what_the_constructor_raises(bad: Any) -> None:
    from aceleryctl.compat import django_tasks as dt
    from tests.integration.tasks import functions

    with pytest.raises(TypeError, match="Unsupported type"):
        dt.new_ready_result(functions.add, "x", None, (bad,), {}, "default")
    with pytest.raises(TypeError, match="Unsupported type"):
        dt.new_ready_result(functions.add, "x", None, (), {"k": bad}, "default")


def test_send_from_loop_calls_sync_receivers_here_and_returns_asend_for_async_ones() -> None:
    from django.dispatch import Signal

    from aceleryctl.compat import django_tasks as dt

    signal = Signal()
    seen: list[Any] = []
    threads: set[int] = set()

    def first(sender: Any, **kwargs: Any) -> None:
        seen.append(("first", sender, kwargs["value"]))
        threads.add(threading.get_ident())

    def second(sender: Any, **kwargs: Any) -> None:
        seen.append(("second", sender, kwargs["value"]))
        threads.add(threading.get_ident())

    async def pending(sender: Any, **kwargs: Any) -> None:
        seen.append(("async", sender, kwargs["value"]))

    signal.connect(first)
    signal.connect(second)
    sync, async_ = signal._live_receivers("s")
    assert (sync, async_) == ([first, second], [])
    assert dt.send_from_loop(signal, "s", value=1) is None
    assert seen == [("first", "s", 1), ("second", "s", 1)]
    assert threads == {threading.get_ident()}  # no thread hop without async receivers
    signal.connect(pending)
    seen.clear()
    pending_send = dt.send_from_loop(signal, "s", value=2)
    assert pending_send is not None
    assert seen == []  # nothing called until awaited
    asyncio.run(pending_send)  # type: ignore[arg-type]
    assert sorted(seen) == [("async", "s", 2), ("first", "s", 2), ("second", "s", 2)]


# -- Celery: the result backend, awaited on the event loop (aceleryctl.awaiting) -----


def test_async_redis_pool_kwargs_mirror_the_backends_connparams() -> None:
    for name in ccr.REDIS_CLIENT_METHODS:
        assert hasattr(RedisBackend, name), name
    assert "_ConnectionPool" in RedisBackend.__init__.__code__.co_names
    plain = Celery(
        "r",
        set_as_current=False,
        broker="memory://",
        backend="redis://:secret@127.0.0.1:6390/3?socket_timeout=2.5",
    )
    tls = Celery(
        "t",
        set_as_current=False,
        broker="memory://",
        backend="rediss://127.0.0.1:6390/1?ssl_cert_reqs=required",
    )
    other = Celery("c", set_as_current=False, broker="memory://", backend="cache+memory://")
    try:
        kwargs = ccr.async_redis_pool_kwargs(plain.backend)
        assert kwargs is not None
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 3)
        assert (kwargs["password"], kwargs["socket_timeout"]) == ("secret", 2.5)
        assert "connection_class" not in kwargs
        # What a redis.asyncio pool takes, and the connection it would make.
        pool = redis.asyncio.ConnectionPool(**kwargs)
        connection = pool.make_connection()
        assert (connection.host, connection.port, connection.db) == ("127.0.0.1", 6390, 3)
        tls_kwargs = ccr.async_redis_pool_kwargs(tls.backend)
        assert tls_kwargs is not None
        assert tls_kwargs["connection_class"] is redis.asyncio.SSLConnection
        redis.asyncio.ConnectionPool(**tls_kwargs).make_connection()
        assert ccr.async_redis_pool_kwargs(other.backend) is None
        plain.backend.ConnectionPool  # noqa: B018 (set lazily to redis-py's own class)
        assert ccr.async_redis_pool_kwargs(plain.backend) is not None

        class Overriding(RedisBackend):
            def get(self, key: Any) -> Any:
                return None

        overriding = Overriding(app=plain, url="redis://127.0.0.1:6390/0")
        assert ccr.async_redis_pool_kwargs(overriding) is None

        class OwnPool(redis.ConnectionPool):
            pass

        custom_pool = RedisBackend(
            app=plain, url="redis://127.0.0.1:6390/0", connection_pool=OwnPool
        )
        assert ccr.async_redis_pool_kwargs(custom_pool) is None
    finally:
        for a in (plain, tls, other):
            a.close()


def test_set_result_cache_is_what_waiting_fills(app: Celery) -> None:
    result = app.AsyncResult("cached-id")
    pending = {"status": "STARTED", "result": None, "task_id": "cached-id"}
    ccr.set_result_cache(result, dict(pending))
    assert result._cache is None  # only ready states are cached
    ready = {
        "status": "SUCCESS",
        "result": 7,
        "traceback": None,
        "children": [],
        "task_id": "cached-id",
    }
    ccr.set_result_cache(result, dict(ready))
    assert result._cache is not None
    assert (result.state, result.get(timeout=0.01)) == ("SUCCESS", 7)


# -- the standard library's JSON encoder (aceleryctl.compat.stdlib_json) ------------

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_prebuilt_encode_writes_what_the_encoder_writes(value: Any) -> None:
    encoder = KombuJSONEncoder()
    encode = csj.prebuilt_encode(encoder)
    assert encode is not None  # CPython has the C accelerator
    assert encode(value) == encoder.encode(value) == kombu_json_dumps(value)


def test_prebuilt_encode_raises_what_the_encoder_raises() -> None:
    encoder = KombuJSONEncoder()
    encode = csj.prebuilt_encode(encoder)
    assert encode is not None
    cycle: list[Any] = []
    cycle.append(cycle)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for value, error in (
        (cycle, ValueError),  # the C encoder recursed without the check; encode() names it
        ({"x": object()}, TypeError),
        ({(1, 2): 1}, TypeError),
        (deep, RecursionError),
    ):
        with pytest.raises(error) as ours:
            encode(value)
        with pytest.raises(error) as theirs:
            encoder.encode(value)
        assert str(ours.value) == str(theirs.value)
    strict = json.JSONEncoder(allow_nan=False)
    strict_encode = csj.prebuilt_encode(strict)
    assert strict_encode is not None
    with pytest.raises(ValueError, match="Out of range float values"):
        strict_encode([float("nan")])


def test_prebuilt_encode_declines_what_it_cannot_copy() -> None:
    class OwnEncode(json.JSONEncoder):
        def encode(self, o: Any) -> str:
            return "mine"

    class OwnIterencode(json.JSONEncoder):
        def iterencode(self, o: Any, _one_shot: bool = False) -> Iterator[str]:
            yield "mine"

    assert csj.prebuilt_encode(json.JSONEncoder(indent=2)) is None
    assert csj.prebuilt_encode(OwnEncode()) is None
    assert csj.prebuilt_encode(OwnIterencode()) is None
    with mock.patch.object(json.encoder, "c_make_encoder", None):
        assert csj.prebuilt_encode(json.JSONEncoder()) is None
    unicode = csj.prebuilt_encode(json.JSONEncoder(ensure_ascii=False, sort_keys=True))
    assert unicode is not None
    assert unicode({"é": 1, "a": "ü"}) == '{"a": "ü", "é": 1}'


# -- no private library attribute outside aceleryctl.compat ---------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "aceleryctl"

#: Every module of the package outside ``aceleryctl.compat``.
SCOPE = sorted(
    path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] != "compat"
)

#: aceleryctl's own private attributes read on objects other than ``self``/``cls``
#: (one class of the package using another's). Each must be defined in aceleryctl.
OWN_PRIVATE = frozenset(
    {
        # the dispatch side
        "_apply",
        "_apply_async_call",
        "_apply_async_unread",
        "_close_blocking",
        "_delay_call",
        "_durable",
        "_eager",
        "_engine",
        "_failures",
        "_probe_timeout",
        "_schedule",
        "_send",
        "_send_task_call",
        "_take_durable",
        # breaker.py: the state classes and the permit read the breaker's fields
        "_backoff_factor",
        "_clock",
        "_close",
        "_consecutive_failures",
        "_current_reset_timeout",
        "_done",
        "_failure_rate_threshold",
        "_failure_threshold",
        "_forced_message",
        "_half_open",
        "_half_open_max_calls",
        "_issuer",
        "_max_reset_timeout",
        "_minimum_calls",
        "_open",
        "_open_message",
        "_probing_message",
        "_probing_retry_after",
        "_settle",
        "_slow_call_after",
        "_slow_call_rate_threshold",
        "_span",
        "_total_rejections",
        "_window",
        # _logging.py: the dispatch-failure record uses the Redactor's text scrubber
        "_text",
        # the worker side: an Emitter's fork hook, and its owning process id
        "_after_fork",
        "_pid",
    }
)

#: Python's own double-underscore names that are fine anywhere.
PYTHON_DUNDERS = frozenset(
    {
        "__cause__",
        "__class__",
        "__closure__",
        "__context__",
        "__dict__",
        "__doc__",
        "__init__",
        "__module__",
        "__name__",
        "__new__",  # a copy of an exception without running its __init__ (_logging.py)
        "__notes__",  # BaseException.add_note's list (PEP 678)
        "__qualname__",
        "__set__",  # a slot's member descriptor (the descriptor protocol; record.py)
        "__setattr__",  # object.__setattr__ past a class's own (_proxy.py)
        "__suppress_context__",  # set by "raise ... from" (the language reference)
        "__traceback__",
        "__wrapped__",
    }
)

#: Underscored names that a library documents as public API.
DOCUMENTED_PUBLIC = frozenset(
    {
        "_meta",  # Django's Model _meta API (docs: "Model _meta API")
    }
)

LIBRARIES = ("celery", "kombu", "redis", "channels", "asgiref")


def _private_uses(path: Path) -> list[str]:
    """``name (line)`` for each private-looking library access in one module."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name: str | None = None
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in {"self", "cls"}):
                name = node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in {"getattr", "hasattr", "setattr"} and len(node.args) > 1:
                literal = node.args[1]
                if isinstance(literal, ast.Constant) and str(literal.value).startswith("_"):
                    name = str(literal.value)
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            name = node.arg
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] in LIBRARIES:
                hidden = [p for p in parts if p.startswith("_")]
                hidden += [a.name for a in node.names if a.name.startswith("_")]
                found += [f"{node.module}: {h} (line {node.lineno})" for h in hidden]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in LIBRARIES and any(p.startswith("_") for p in parts):
                    found.append(f"import {alias.name} (line {node.lineno})")
        if (
            name is None
            or name in OWN_PRIVATE
            or name in PYTHON_DUNDERS
            or name in DOCUMENTED_PUBLIC
        ):
            continue
        found.append(f"{name} (line {getattr(node, 'lineno', '?')})")
    return found


def test_the_scope_is_not_empty() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in SCOPE}
    assert {"dispatch/build.py", "wires/redis_message.py", "wires/redis.py", "conf.py"} <= names
    assert {
        "breaker.py",
        "correlation.py",
        "events.py",
        "live/sent.py",
        "signals.py",
        "worker/progress_store.py",
        "worker/retry.py",
        "management/commands/aceleryctl_health.py",
    } <= names
    assert not [name for name in names if name.startswith("compat/")]


@pytest.mark.parametrize("path", SCOPE, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_private_library_internal_outside_compat(path: Path) -> None:
    assert _private_uses(path) == [], (
        "a private attribute is used outside aceleryctl.compat: move it into a compat "
        "function with a docstring and a shape test here (or, if it is aceleryctl's own, "
        "add it to OWN_PRIVATE)"
    )


def test_the_scanner_catches_what_it_is_meant_to(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from celery.canvas import _chain\n"
        "from celery import _state\n"
        "import celery._state\n"
        "x = channel._q_for_pri('q', 0)\n"
        "y = task.__header__\n"
        "z = getattr(task, '_dump_pydantic_arguments', None)\n"
        "w = canvas.freeze(_id='x')\n"
        "ok = self._fine, cls._fine, exc.__cause__, core._engine\n"
    )
    found = " ".join(_private_uses(sample))
    for expected in ("_chain", "_state", "import celery._state", "_q_for_pri", "__header__"):
        assert expected in found
    assert "_dump_pydantic_arguments" in found
    assert "_id" in found
    assert "_fine" not in found
    assert "__cause__" not in found
    assert "_engine" not in found


def test_own_private_names_are_defined_in_aceleryctl() -> None:
    defined: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                defined.add(node.value)  # __slots__ entries
    assert defined >= OWN_PRIVATE, OWN_PRIVATE - defined
