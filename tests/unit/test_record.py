"""The Dispatch record: plain frozen data that round-trips through Celery's serializer.

Dispatches are built by the controller's own builder (what a real call makes),
serialized with kombu's registry (JSON and pickle), loaded back, and compared;
a loaded dispatch is then published through the stock wire's function on
kombu's in-memory transport and read back as a message.
"""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from kombu.exceptions import EncodeError

from aceleryctl.correlation import CORRELATION_HEADER, correlation_id
from aceleryctl.dispatch.build import build_apply_async, build_callable, build_send_task
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind, NotData
from aceleryctl.wires.stock import send_with_celery


@pytest.fixture
def app() -> Celery:
    app = Celery("record", broker="memory://", set_as_current=False)

    @app.task(name="record.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="record.total", shared=False)
    def total(values: list[int]) -> int:
        return sum(values)

    return app


def built(app: Celery, task: Any, *args: Any, **options: Any) -> Dispatch:
    dispatch, _ = build_apply_async(app, "apply_async", task, args, {}, dict(options), 2.5)
    return dispatch


def kinds(app: Celery) -> list[Dispatch]:
    add = app.tasks["record.add"]
    token = correlation_id.set("req-42")
    try:
        return [
            built(app, add, 1, 2, countdown=5, queue="fast", headers={"tenant": "t1"}),
            built(app, add, 1, 2, eta=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
            built(app, add.s(1), 2, priority=3),
            built(app, group(add.s(i, i) for i in range(3)), task_id="g-1"),
            built(app, chain(add.s(1, 2), add.s(3)), task_id="c-1"),
            built(app, chord([add.s(1, 1)], app.tasks["record.total"].s()), task_id="h-1"),
            build_send_task(app, "send_task", "elsewhere.job", ("x",), {"n": "é"}, {}, 1.0)[0],
        ]
    finally:
        correlation_id.reset(token)


def test_the_builder_makes_frozen_plain_data(app: Celery) -> None:
    dispatch = kinds(app)[0]
    assert dispatch.kind is DispatchKind.TASK
    assert dispatch.task_name == "record.add"
    assert dispatch.options["task_id"] == dispatch.task_id
    assert dispatch.options["headers"] == {"tenant": "t1", CORRELATION_HEADER: "req-42"}
    assert dispatch.correlation_id == "req-42"
    assert (dispatch.timeout, dispatch.method, dispatch.queue) == (2.5, "apply_async", "fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        dispatch.task_id = "other"  # type: ignore[misc]


def test_dispatch_init_is_the_dataclass_one_only_faster() -> None:
    # Dispatch.__init__ is replaced (slots set through their descriptors); it must
    # take what the generated one takes, with the same defaults, and set every field.
    params = list(inspect.signature(Dispatch.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Dispatch)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        expected = (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
        assert param.default == expected, field.name
        assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    values = {f.name: object() for f in fields}
    made = Dispatch(**values)
    assert all(getattr(made, name) is value for name, value in values.items())
    positional = Dispatch(*values.values())
    assert all(getattr(positional, name) is value for name, value in values.items())
    with pytest.raises(TypeError):
        Dispatch(DispatchKind.TASK, "t")  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.kind = DispatchKind.CANVAS  # type: ignore[misc]


def test_every_data_kind_round_trips_through_pickle_exactly(app: Celery) -> None:
    for original in kinds(app):
        loaded = Dispatch.loads(*_swap(original.dumps("pickle")))
        assert loaded == original, original.kind
        assert loaded.target is None  # the live object is not data


def test_every_data_kind_round_trips_through_json(app: Celery) -> None:
    # JSON has no tuples, so a loaded dispatch is what JSON makes of the original
    # (as with Celery's own messages): equal in every stored field, and its
    # serialized form is a fixed point.
    for original in kinds(app):
        serialized = original.dumps("json")
        loaded = Dispatch.loads(*_swap(serialized))
        assert loaded.dumps("json") == serialized, original.kind
        for name in ("kind", "task_name", "task_id", "timeout", "method", "by_name"):
            assert getattr(loaded, name) == getattr(original, name), name
        assert loaded.correlation_id == original.correlation_id
        assert list(loaded.args) == list(original.args)
        assert loaded.options.keys() == original.options.keys()


def _swap(serialized: tuple[str, str, bytes | str]) -> tuple[bytes | str, str, str]:
    content_type, encoding, payload = serialized
    return payload, content_type, encoding


def test_the_kinds_are_recognised(app: Celery) -> None:
    assert [d.kind.value for d in kinds(app)] == [
        "task",
        "task",
        "signature",
        "canvas",
        "canvas",
        "canvas",
        "task",
    ]
    assert kinds(app)[-1].by_name


def test_a_callable_is_not_data() -> None:
    dispatch = build_callable("delay", lambda: None, 1.0)
    assert dispatch.kind is DispatchKind.CALLABLE
    assert not dispatch.is_data
    with pytest.raises(NotData, match="cannot be stored"):
        dispatch.to_dict()
    with pytest.raises(NotData):
        dispatch.dumps()


def test_unencodable_arguments_say_so_when_stored(app: Celery) -> None:
    dispatch = built(app, app.tasks["record.add"], object(), 2)
    with pytest.raises(EncodeError):
        dispatch.dumps("json")


def test_an_unknown_stored_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dispatch format"):
        Dispatch.from_dict({"v": 99, "kind": "task"})
    with pytest.raises(ValueError, match="no stored form"):
        Dispatch.from_dict({"v": 1, "kind": "callable", "task_name": "x", "timeout": 1})


def test_a_loaded_dispatch_publishes_the_same_task(app: Celery) -> None:
    # What an outbox relay will do: load, then publish with no live objects.
    queue_name = f"record-{id(app)}"
    app.conf.task_default_queue = queue_name
    add = app.tasks["record.add"]
    originals = [
        built(app, add, 1, 2, countdown=5),
        built(app, add.s(1), 2),
        build_send_task(app, "send_task", "elsewhere.job", ("x",), None, {}, 1.0)[0],
    ]
    for original in originals:
        loaded = Dispatch.from_dict(original.to_dict())
        attempt = Attempt(loaded, deadline=0.0, queued_at=0.0, task_id=loaded.task_id)
        assert send_with_celery(app, attempt, None).id == original.task_id
    received = []
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(queue_name)
        try:
            for _ in originals:
                message = queue.get(timeout=1)
                received.append((message.headers["task"], message.headers["id"]))
                message.ack()
        finally:
            queue.close()
    assert received == [(d.task_name, d.task_id) for d in originals]
