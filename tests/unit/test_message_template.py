"""The direct path's message templates: a rendered call is the full build, byte for byte.

A kombu Redis channel whose connection check is stubbed (nothing connects) and a
Celery app on protocol 2: every test builds the same call once in full
(``DirectPath._build``, Celery's ``as_task_v2`` and kombu's envelope) and once from
its shape's template, with the same delivery tag, and compares the texts. The
broker-side comparison with Celery's stock publish (every case of
tests/integration/test_direct_path.py, published twice) is in that module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from unittest import mock

import kombu
import pytest
import redis
from celery import Celery, signals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aceleryctl.compat.celery import exec_options
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.wires import message_template, template_shapes
from aceleryctl.wires.celery_message import Prepared
from aceleryctl.wires.message_template import Placeholders
from aceleryctl.wires.redis_message import DirectPath
from aceleryctl.wires.template_shapes import shape_key


@pytest.fixture(scope="module")
def app() -> Celery:
    app = Celery("template-unit", set_as_current=False, broker="redis://127.0.0.1:1/0")
    app.conf.update(task_default_queue="work", accept_content=["json", "msgpack"])

    @app.task(shared=False, name="u.echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    @app.task(shared=False, name="u.limited", time_limit=60, serializer="msgpack")
    def limited(*args: Any, **kwargs: Any) -> Any:
        return args, kwargs

    @app.task(shared=False, name="u.expiring", expires=300)
    def expiring() -> None:
        return None

    app.finalize()
    return app


@pytest.fixture(scope="module")
def channel() -> Iterator[Any]:
    connection = kombu.Connection("redis://127.0.0.1:1/0")
    with mock.patch.object(redis.Redis, "ping", return_value=True):
        made = connection.channel()
    yield made
    connection.release()


def both(
    direct: DirectPath, app: Celery, channel: Any, name: str, args: Any, kwargs: Any, **given: Any
) -> tuple[Prepared, Prepared]:
    """The call built in full and rendered from its template (learned first if
    needed), with one delivery tag."""
    task = app.tasks[name]
    given.setdefault("task_id", new_task_id())
    snapshot = direct.configured()
    assert snapshot is not None
    learned = direct.prepare(task, args, kwargs, given, channel, snapshot)  # learns the shape
    rendered = direct.prepare(task, args, kwargs, given, channel, snapshot)
    assert learned is not None
    assert rendered is not None
    assert rendered.rendered is not None, "the second call was not rendered"
    tag = json.loads(rendered.payload)["properties"]["delivery_tag"]
    options = dict(exec_options(task), **given)
    options.setdefault("ignore_result", task.ignore_result)
    destination = direct._routes[(name, given.get("queue"))]
    full = direct._build(name, args, kwargs, options, destination, channel, snapshot, tag)
    return full, rendered


def prepare_times(
    direct: DirectPath, app: Celery, channel: Any, times: int
) -> list[Prepared | None]:
    """``u.echo(1)`` prepared ``times`` times, each with a new task id."""
    snapshot = direct.configured()
    assert snapshot is not None
    task = app.tasks["u.echo"]
    return [
        direct.prepare(task, (1,), {}, {"task_id": new_task_id()}, channel, snapshot)
        for _ in range(times)
    ]


def assert_same(full: Prepared, rendered: Prepared) -> None:
    assert rendered.payload == full.payload
    assert rendered.key == full.key
    assert rendered.body == full.body
    assert rendered.message_headers() == full.headers
    assert (rendered.task_id, rendered.name, rendered.routing_key, rendered.queue) == (
        full.task_id,
        full.name,
        full.routing_key,
        full.queue,
    )


texts = st.text(max_size=30)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.lists(json_values, max_size=5).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    headers=st.none() | st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=3),
    priority=st.none() | st.integers(0, 9),
    linked=st.booleans(),
)
def test_a_rendered_call_is_the_full_build(
    app: Celery,
    channel: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    headers: dict[str, Any] | None,
    priority: int | None,
    linked: bool,
) -> None:
    given_options: dict[str, Any] = {"priority": priority}
    if headers is not None:
        given_options["headers"] = headers
    if linked:  # a call from inside a running task
        given_options.update(parent_id=new_task_id(), root_id=new_task_id())
    full, rendered = both(DirectPath(app), app, channel, "u.echo", args, kwargs, **given_options)
    assert_same(full, rendered)


@pytest.mark.parametrize(
    ("name", "given_options"),
    [
        ("u.echo", {}),
        ("u.echo", {"queue": "other", "ignore_result": True}),
        ("u.echo", {"time_limit": 30, "soft_time_limit": 20, "serializer": "msgpack"}),
        ("u.echo", {"countdown": 0, "eta": None, "expires": None}),
        ("u.limited", {}),  # the class's options: a time limit and msgpack
        ("u.echo", {"headers": {"id": "a header named like Celery's own"}}),
        ("u.echo", {"task_id": 'a fixed id with "quotes" and é'}),
    ],
)
def test_options_that_keep_a_shape_render_like_the_full_build(
    app: Celery, channel: Any, name: str, given_options: dict[str, Any]
) -> None:
    full, rendered = both(
        DirectPath(app), app, channel, name, (1, "é", None), {"k": [1]}, **given_options
    )
    assert_same(full, rendered)


@pytest.mark.parametrize(
    "given_options",
    [{"countdown": 5}, {"eta": "2030-01-01T00:00:00+00:00"}, {"expires": 60}],
)
def test_times_computed_per_call_rule_templates_out(given_options: dict[str, Any]) -> None:
    assert shape_key("t", {}, given_options, False, ()) is None
    assert shape_key("t", {"expires": 300}, {}, False, ()) is None  # the task class's expiry
    assert shape_key("t", {"expires": 300}, {"expires": None}, False, ()) is not None


def test_values_are_keyed_with_their_types_and_unhashable_ones_rule_out() -> None:
    fixed: dict[str, Any] = {}  # the task's options: keyed by identity
    keys = {shape_key("t", fixed, {"priority": value}, False, ()) for value in (1, 1.0, True)}
    assert len(keys) == 3
    assert shape_key("t", fixed, {"priority": [1]}, False, ()) is None
    assert shape_key("t", fixed, {"headers": {1: "x"}}, False, ()) is None
    # Header values and ids are slots: they do not change the shape.
    one = shape_key("t", fixed, {"headers": {"h": "a"}, "task_id": "1"}, False, ())
    assert one == shape_key("t", fixed, {"headers": {"h": "b"}, "task_id": "2"}, False, ())
    assert one != shape_key("t", fixed, {"headers": {"g": "a"}}, False, ())


def test_a_placeholder_inside_a_longer_string_rules_the_shape_out() -> None:
    holders = Placeholders(())
    whole = json.dumps({"id": holders[0], "x": 1})
    assert holders.cut(whole) == (['{"id": ', ', "x": 1}'], [0])
    assert holders.cut(json.dumps({"id": "meta-" + holders[0]})) is None


def test_a_template_that_renders_otherwise_is_never_used(
    app: Celery, channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A learned template whose render differs from the full build (here: a field
    # changed behind its back) is dropped, and the shape is built in full.
    learn = message_template.learn_template

    def skewed(*args: Any) -> Any:
        template = learn(*args)
        assert template is not None
        return message_template.MessageTemplate(
            template.key,
            template.queue,
            template.serializer,
            template.text.replace('"lang": "py"', '"lang": "rb"'),
            template.pick,
            template.used,
            template.channel,
            template.fixed,
            template.headers,
            template.fills,
            template.embed,
        )

    monkeypatch.setattr("aceleryctl.wires.redis_message.learn_template", skewed)
    made = prepare_times(DirectPath(app), app, channel, 3)
    assert all(m is not None and m.rendered is None for m in made)
    assert all(json.loads(m.payload)["headers"]["lang"] == "py" for m in made if m)


def test_a_shape_whose_learning_fails_is_built_in_full_and_its_call_still_sent(
    app: Celery, channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("learning failed")

    monkeypatch.setattr("aceleryctl.wires.redis_message.learn_template", broken)
    made = prepare_times(DirectPath(app), app, channel, 2)
    assert all(m is not None and m.rendered is None for m in made)
    assert all(json.loads(m.payload)["headers"]["task"] == "u.echo" for m in made if m)


def test_a_before_task_publish_receiver_gets_full_builds_and_its_changes_land(
    app: Celery, channel: Any
) -> None:
    def stamp(headers: dict[str, Any], **_: Any) -> None:
        headers["stamped"] = "yes"

    direct = DirectPath(app)
    task = app.tasks["u.echo"]
    snapshot = direct.configured()
    assert snapshot is not None
    direct.prepare(task, (1,), {}, {"task_id": new_task_id()}, channel, snapshot)  # learned
    signals.before_task_publish.connect(stamp, weak=False)
    try:
        made = direct.prepare(task, (1,), {}, {"task_id": new_task_id()}, channel, snapshot)
    finally:
        signals.before_task_publish.disconnect(stamp)
    assert made is not None
    assert made.rendered is None
    assert json.loads(made.payload)["headers"]["stamped"] == "yes"


def test_the_worker_retry_announcer_does_not_rule_templates_out(app: Celery, channel: Any) -> None:
    # aceleryctl's own before_task_publish receiver (connected in workers) acts only
    # on messages with retries > 0, which the direct path never renders.
    from aceleryctl.worker import retry

    signals.before_task_publish.connect(retry.on_before_publish, weak=False)
    try:
        assert template_shapes.templates_allowed()
        full, rendered = both(DirectPath(app), app, channel, "u.echo", (1,), {})
        assert_same(full, rendered)
        fixed: dict[str, Any] = {}
        assert shape_key("t", fixed, {"headers": {"retries": 1}}, False, ()) is None

        def other(**_: Any) -> None:
            return None

        signals.before_task_publish.connect(other, weak=False)
        try:
            assert not template_shapes.templates_allowed()
        finally:
            signals.before_task_publish.disconnect(other)
    finally:
        signals.before_task_publish.disconnect(retry.on_before_publish)


def test_after_task_publish_headers_are_fresh_for_every_message(app: Celery, channel: Any) -> None:
    full, rendered = both(DirectPath(app), app, channel, "u.echo", (1,), {})
    headers = rendered.message_headers()
    headers["timelimit"].append("changed by a receiver")
    headers["stamps"]["x"] = 1
    _, again = both(DirectPath(app), app, channel, "u.echo", (1,), {})
    assert again.message_headers()["timelimit"] == full.headers["timelimit"]
    assert again.message_headers()["stamps"] == {}


def test_a_new_channel_learns_again(app: Celery, channel: Any) -> None:
    direct = DirectPath(app)
    task = app.tasks["u.echo"]
    snapshot = direct.configured()
    assert snapshot is not None

    def call(on: Any) -> Prepared:
        made = direct.prepare(task, (1,), {}, {"task_id": new_task_id()}, on, snapshot)
        assert made is not None
        return made

    call(channel)
    assert call(channel).rendered is not None
    connection = kombu.Connection("redis://127.0.0.1:1/0")
    with mock.patch.object(redis.Redis, "ping", return_value=True):
        other = connection.channel()
    try:
        assert call(other).rendered is None  # learned for the new channel
        assert call(other).rendered is not None
    finally:
        connection.release()


def test_the_cache_is_bounded_and_a_task_stops_learning_new_shapes() -> None:
    cache = template_shapes.TemplateCache()
    for i in range(template_shapes.MAX_TEMPLATES + 5):
        cache.put((f"task {i}", i), None)
    assert len(cache) <= template_shapes.MAX_TEMPLATES
    # Shapes that never repeat (a header name per tenant): a task stops learning.
    cache = template_shapes.TemplateCache()
    for i in range(template_shapes.MAX_SHAPES_PER_TASK):
        assert cache.get(("t", i), None, None) is False
        cache.put(("t", i), None)
    assert cache.get(("t", "one more"), None, None) is None  # built in full, not learned
    assert cache.get(("other task", 0), None, None) is False
