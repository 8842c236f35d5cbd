"""Argument handling of the async controller, checked on kombu's in-memory transport.

The memory transport is real kombu and real Celery message building, with no
network, so the tests read back the exact message that was published.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from celery import Celery, shared_task
from celery.result import AsyncResult, EagerResult

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import AsyncContextError, TaskSerializationError


@pytest.fixture
def app() -> Celery:
    app = Celery("calls", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name="calls.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    read_messages(app)  # kombu's memory transport is process-wide: start empty
    return app


@pytest.fixture
async def ctl(app: Celery) -> AsyncIterator[AsyncCeleryController]:
    controller = AsyncCeleryController(app, dispatch_timeout=5.0, max_workers=1)
    yield controller
    await controller.aclose()


def read_messages(app: Celery, queue: str = "celery") -> list[Any]:
    messages = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            messages.append(message)
            message.ack()
        simple.close()
    return messages


async def test_delay_publishes_a_celery_message(app: Celery, ctl: AsyncCeleryController) -> None:
    result = await ctl.delay(app.tasks["calls.add"], 2, y=3)
    assert isinstance(result, AsyncResult)
    [message] = read_messages(app)
    assert message.headers["task"] == "calls.add"
    assert message.headers["id"] == result.id
    args, kwargs, _embed = message.payload
    assert (args, kwargs) == ([2], {"y": 3})


async def test_options_pass_through_and_dispatch_timeout_is_consumed(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    result = await ctl.apply_async(
        app.tasks["calls.add"],
        (1, 2),
        task_id="my-id",
        countdown=30,
        headers={"x-tenant": "t1"},
        priority=3,
        dispatch_timeout=1.5,
    )
    assert result.id == "my-id"
    [message] = read_messages(app)
    assert message.headers["id"] == "my-id"
    assert message.headers["eta"] is not None
    assert message.headers["x-tenant"] == "t1"
    assert message.properties["priority"] == 3
    assert "dispatch_timeout" not in repr(message.headers) + repr(message.properties)


async def test_send_task_by_name_and_signature(app: Celery, ctl: AsyncCeleryController) -> None:
    await ctl.send_task("remote.only", (1,), {"k": "v"})
    await ctl.delay(app.tasks["calls.add"].s(5), 6)
    first, second = read_messages(app)
    assert first.headers["task"] == "remote.only"
    assert second.headers["task"] == "calls.add"
    assert second.payload[0] == [6, 5]


async def test_shared_task_resolves_against_the_controller_app(app: Celery) -> None:
    @shared_task(name="calls.shared_echo")
    def shared_echo(x: int) -> int:
        return x

    app.finalize(auto=True)
    controller = AsyncCeleryController(app, max_workers=1)
    try:
        result = await controller.delay(shared_echo, 1)
        [message] = read_messages(app)
        assert message.headers["id"] == result.id
    finally:
        await controller.aclose()


async def test_zero_argument_callable_is_dispatched_as_is(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    result = await ctl.delay(lambda: app.tasks["calls.add"].delay(1, 1))
    [message] = read_messages(app)
    assert message.headers["id"] == result.id


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [("12", None, "args must be a list or tuple"), ((), [("a", 1)], "kwargs must be a dict")],
)
async def test_bad_argument_shapes_raise_type_error(
    app: Celery, ctl: AsyncCeleryController, args: Any, kwargs: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        await ctl.apply_async(app.tasks["calls.add"], args, kwargs)


async def test_not_dispatchable_and_bad_timeouts(app: Celery, ctl: AsyncCeleryController) -> None:
    with pytest.raises(TypeError, match="task must be a Celery task"):
        await ctl.delay(42)
    with pytest.raises(TypeError, match="zero-argument callable"):
        await ctl.delay(lambda: None, 1)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="dispatch_timeout must be a finite number"):
            await ctl.apply_async(app.tasks["calls.add"], (1, 2), dispatch_timeout=bad)
    with pytest.raises(TypeError, match="number of seconds"):
        await ctl.apply_async(app.tasks["calls.add"], (1, 2), dispatch_timeout="2")
    assert read_messages(app) == []


async def test_unserializable_arguments(app: Celery, ctl: AsyncCeleryController) -> None:
    with pytest.raises(TaskSerializationError, match="JSON-serializable"):
        await ctl.delay(app.tasks["calls.add"], object(), 1)
    assert ctl.breaker.statistics().total_failures == 0
    assert read_messages(app) == []


async def test_apply_runs_eagerly_off_the_loop(app: Celery, ctl: AsyncCeleryController) -> None:
    result = await ctl.apply(app.tasks["calls.add"], (20, 22))
    assert isinstance(result, EagerResult)
    assert result.get() == 42
    assert read_messages(app) == []


async def test_safe_execute_returns_pairs(app: Celery, ctl: AsyncCeleryController) -> None:
    ok, result = await ctl.safe_execute(app.tasks["calls.add"], 1, 2)
    assert ok is True
    assert isinstance(result, AsyncResult)
    ok2, error = await ctl.safe_execute(
        app.tasks["calls.add"], object(), 2, suppress_exceptions=True
    )
    assert ok2 is False
    assert isinstance(error, TaskSerializationError)
    with pytest.raises(TaskSerializationError):
        await ctl.safe_execute(app.tasks["calls.add"], object(), 2)


async def test_sync_facade_refuses_on_an_event_loop_thread(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    for method in ("delay", "safe_execute", "delay_on_commit"):
        with pytest.raises(AsyncContextError, match=rf"await aceleryctl.controller.{method}"):
            getattr(ctl.sync, method)(app.tasks["calls.add"], 1, 2)
    assert read_messages(app) == []


def test_sync_facade_shares_the_engine(app: Celery) -> None:
    controller = AsyncCeleryController(app, max_workers=1)
    result = controller.sync.delay(app.tasks["calls.add"], 1, 2)
    [message] = read_messages(app)
    assert message.headers["id"] == result.id
    assert controller.sync.statistics().dispatched == 1
    assert controller.statistics().dispatched == 1
    assert controller.sync.close() is True
    assert controller.closed


async def test_the_requests_correlation_id_travels_in_the_headers(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    from aceleryctl.correlation import CORRELATION_HEADER, use_correlation_id

    with use_correlation_id("req-7f3a"):
        await ctl.delay(app.tasks["calls.add"], 1, 2)
        await ctl.apply_async(
            app.tasks["calls.add"], (1, 2), headers={CORRELATION_HEADER: "callers-own"}
        )
    await ctl.delay(app.tasks["calls.add"], 3, 4)
    first, second, third = read_messages(app)
    assert first.headers[CORRELATION_HEADER] == "req-7f3a"
    assert second.headers[CORRELATION_HEADER] == "callers-own"
    assert CORRELATION_HEADER not in third.headers
