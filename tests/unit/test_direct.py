"""Unit tests of the direct path's pure parts: argument reprs, acceptance rules, task ids.

The messages themselves are compared with Celery's stock ones against a real Redis
in tests/integration/test_direct_path.py.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import pytest
from celery import Celery, Task
from celery.utils.saferepr import saferepr
from hypothesis import given
from hypothesis import strategies as st

from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.wires.fast_repr import fast_repr
from aceleryctl.wires.redis_message import DirectPath

scalars = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=80),
    st.text(alphabet="ab'\"\\ \t\x00é", max_size=12),
    st.binary(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@given(st.lists(values, max_size=6).map(tuple))
def test_fast_repr_of_args_is_saferepr_or_declines(args: tuple[Any, ...]) -> None:
    text = fast_repr(args, 1024)
    assert text is None or text == saferepr(args, 1024, maxlevels=3)


@given(st.dictionaries(st.text(alphabet="ab'\"\\ é", max_size=70), values, max_size=6))
def test_fast_repr_of_kwargs_is_saferepr_or_declines(kwargs: dict[str, Any]) -> None:
    text = fast_repr(kwargs, 1024)
    assert text is None or text == saferepr(kwargs, 1024, maxlevels=3)


def test_fast_repr_takes_the_common_shapes() -> None:
    assert fast_repr((1, 2), 1024) == "(1, 2)"
    assert fast_repr((), 1024) == "()"
    assert fast_repr({"user_id": 5, "note": "hi"}, 1024) == "{'user_id': 5, 'note': 'hi'}"
    assert fast_repr(("x" * 100,), 1024) is None  # saferepr may shorten long strings
    assert fast_repr((True,), 1024) is None  # only exact ints, floats, None and str


@pytest.fixture
def app() -> Celery:
    app = Celery("direct-unit", set_as_current=False, broker="redis://127.0.0.1:1/0")

    @app.task(shared=False, name="u.add")
    def add(x: int, y: int) -> int:
        return x + y

    class OwnApply(Task):  # type: ignore[type-arg]
        def apply_async(self, *args: Any, **kwargs: Any) -> Any:
            return super().apply_async(*args, **kwargs)

    @app.task(shared=False, name="u.custom", base=OwnApply)
    def custom() -> None:
        return None

    app.finalize()
    return app


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        ({}, True),
        ({"task_id": "a", "countdown": 1, "eta": None, "expires": 5}, True),
        ({"headers": {"a": 1}, "priority": 3, "queue": "q", "serializer": "msgpack"}, True),
        ({"retry": False, "retry_policy": {}, "ignore_result": True}, True),
        ({"time_limit": 3, "soft_time_limit": 2, "parent_id": "p", "root_id": "r"}, True),
        ({"exchange": None, "routing_key": None, "compression": None}, True),
        ({"retry": True}, False),
        ({"compression": "zlib"}, False),
        ({"exchange": "x"}, False),
        ({"routing_key": "rk"}, False),
        ({"link": object()}, False),
        ({"queue": object()}, False),
        ({"content_language": "en"}, False),
    ],
)
def test_accepts_only_what_it_reproduces(
    app: Celery, options: dict[str, Any], accepted: bool
) -> None:
    assert DirectPath(app).accepts(app.tasks["u.add"], options) is accepted


def test_a_task_class_with_its_own_apply_async_is_declined(app: Celery) -> None:
    assert DirectPath(app).accepts(app.tasks["u.custom"], {}) is False


def test_configuration_that_rules_the_direct_path_out(app: Celery) -> None:
    direct = DirectPath(app)
    assert direct.configured() is not None
    for key, value in (
        ("task_always_eager", True),
        ("task_send_sent_event", True),
        ("task_compression", "zlib"),
        ("task_protocol", 1),
    ):
        app.conf[key] = value
        assert direct.configured() is None, key
        app.conf[key] = not value if isinstance(value, bool) else None
        if key == "task_protocol":
            app.conf[key] = 2
    assert direct.configured() is not None


def test_task_ids_are_random_version_4_uuids() -> None:
    ids = [new_task_id() for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:300]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_threads_drawing_at_once_never_share_an_id() -> None:
    found: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [new_task_id() for _ in range(500)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 2_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_task_id()  # the parent's pool now holds ids not handed out
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids, then leave at once
        os.close(read_end)
        os.write(write_end, ",".join(new_task_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_task_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


def test_the_direct_path_is_on_for_redis_only_and_can_be_turned_off(app: Celery) -> None:
    from aceleryctl import AsyncCeleryController

    memory = Celery("direct-memory", set_as_current=False, broker="memory://")
    on = AsyncCeleryController(app)
    off = AsyncCeleryController(app, direct_publish=False)
    elsewhere = AsyncCeleryController(memory)
    try:
        assert on.health()["direct_publish"] is True
        assert off.health()["direct_publish"] is False
        assert elsewhere.health()["direct_publish"] is False
    finally:
        for ctl in (on, off, elsewhere):
            ctl.sync.close()
