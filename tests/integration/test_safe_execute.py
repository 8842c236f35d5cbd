"""``safe_execute``: ``(True, result)`` on success; a broker failure returned or raised."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from celery import Celery
from celery.result import AsyncResult

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import BrokerError, TaskDispatchError
from tests._support._process import free_port
from tests._support.redis_server import RedisServer

from ._helpers import isolated_app
from .celery_app import add

RESULT_TIMEOUT = 20.0
DEADLINE = 2.0  # seconds
SLACK = 1.5  # seconds


@pytest.fixture
def refused_app(redis_server: RedisServer) -> Celery:
    """An app whose broker URL is a closed port on 127.0.0.1 (connections are refused)."""
    return isolated_app("refused", f"redis://127.0.0.1:{free_port()}/0", redis_server.url(1))


@pytest.fixture
async def refused_controller(refused_app: Celery) -> AsyncIterator[AsyncCeleryController]:
    ctl = AsyncCeleryController(app=refused_app, dispatch_timeout=DEADLINE, max_workers=2)
    try:
        yield ctl
    finally:
        await ctl.aclose(timeout=5.0)


async def test_success_returns_true_and_the_result(controller: AsyncCeleryController) -> None:
    ok, result = await controller.safe_execute(add, 1, 2)

    assert ok is True
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=RESULT_TIMEOUT) == 3


async def test_success_with_suppress_exceptions(controller: AsyncCeleryController) -> None:
    ok, result = await controller.safe_execute(add, 2, 2, suppress_exceptions=True)

    assert ok is True
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=RESULT_TIMEOUT) == 4


async def test_refused_broker_is_returned_when_suppressed(
    refused_controller: AsyncCeleryController, refused_app: Celery
) -> None:
    started = time.monotonic()

    ok, error = await refused_controller.safe_execute(
        refused_app.tasks["aceleryctl_tests.add"], 1, 2, suppress_exceptions=True
    )

    elapsed = time.monotonic() - started
    assert ok is False
    assert isinstance(error, BrokerError), repr(error)
    assert error.__cause__ is not None
    assert error.task_name == "aceleryctl_tests.add"
    assert elapsed < DEADLINE + SLACK, f"took {elapsed:.2f} s"


async def test_refused_broker_raises_without_suppress(
    refused_controller: AsyncCeleryController, refused_app: Celery
) -> None:
    started = time.monotonic()

    with pytest.raises(TaskDispatchError) as raised:
        await refused_controller.safe_execute(refused_app.tasks["aceleryctl_tests.add"], 1, 2)

    assert isinstance(raised.value, BrokerError), repr(raised.value)
    assert time.monotonic() - started < DEADLINE + SLACK


def test_refused_broker_from_the_sync_facade(refused_app: Celery) -> None:
    ctl = AsyncCeleryController(app=refused_app, dispatch_timeout=DEADLINE, max_workers=1)
    try:
        ok, error = ctl.sync.safe_execute(
            refused_app.tasks["aceleryctl_tests.add"], 1, 2, suppress_exceptions=True
        )
        assert ok is False
        assert isinstance(error, BrokerError), repr(error)
        with pytest.raises(BrokerError):
            ctl.sync.safe_execute(refused_app.tasks["aceleryctl_tests.add"], 1, 2)
    finally:
        ctl.sync.close(timeout=5.0)
