"""Closing a controller: in-flight publishes drain, later calls are refused, and the
connections its publishing threads opened are closed."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import ControllerClosed
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until_async

from ._helpers import Broker
from .celery_app import PARKED_QUEUE, parked


@pytest.fixture
def parked_queue(broker: Broker) -> Iterator[str]:
    broker.purge(PARKED_QUEUE)
    yield PARKED_QUEUE
    broker.purge(PARKED_QUEUE)


def _redis_clients(server: RedisServer) -> list[tuple[str, str]]:
    """(db, last command) of every client connected to ``server`` but this one."""
    client = server.client()
    try:
        return sorted(
            (str(info["db"]), str(info["cmd"]))
            for info in client.client_list()
            if info["cmd"] != "client|list"
        )
    finally:
        client.close()


@pytest.fixture
def no_gc() -> Iterator[None]:
    """No cyclic garbage collection during the test: closing must not depend on it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _open_sockets() -> int:
    """How many sockets this process holds open (Linux: /proc/self/fd)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


async def test_calls_after_close_are_refused_and_nothing_is_sent(
    celery_app: Celery, broker: Broker, parked_queue: str
) -> None:
    ctl = AsyncCeleryController(app=celery_app, dispatch_timeout=5.0)
    await ctl.delay(parked, 0)
    assert await ctl.aclose() is True

    with pytest.raises(ControllerClosed):
        await ctl.delay(parked, 1)
    with pytest.raises(ControllerClosed):
        await asyncio.to_thread(ctl.sync.delay, parked, 2)
    assert len(broker.task_ids(parked_queue)) == 1


async def test_close_drains_in_flight_publishes_and_loses_none(
    celery_app: Celery, broker: Broker, parked_queue: str
) -> None:
    ctl = AsyncCeleryController(app=celery_app, dispatch_timeout=30.0, max_workers=2)
    calls = [asyncio.ensure_future(ctl.delay(parked, i)) for i in range(200)]
    # Let the first publishes start, then close with the rest still queued or running.
    await wait_until_async(lambda: ctl.statistics().pool.completed >= 1, timeout=10)

    await asyncio.wait_for(ctl.aclose(timeout=10.0), timeout=15.0)

    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    sent = [outcome.id for outcome in outcomes if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert all(isinstance(exc, ControllerClosed) for exc in refused), refused[:3]
    assert sorted(broker.task_ids(parked_queue)) == sorted(sent)
    assert sent, "no publish completed before the close"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts sockets in /proc")
async def test_close_closes_the_connections_its_threads_opened(
    celery_app: Celery, parked_queue: str, no_gc: None, redis_server: RedisServer
) -> None:
    before = _open_sockets()
    ctl = AsyncCeleryController(app=celery_app, dispatch_timeout=5.0, max_workers=2)
    await asyncio.gather(*(ctl.delay(parked, i) for i in range(50)))
    during = _open_sockets()

    assert await ctl.aclose() is True

    # Without a garbage collection: what the publishing threads opened (broker
    # connections, Celery's per-thread result backend) is closed by the close
    # itself, not left to finalizers (which warn about unclosed sockets).
    await wait_until_async(
        lambda: _open_sockets() <= before,
        timeout=2,
        message=lambda: (
            f"sockets: {before} before the controller, {during} while dispatching, "
            f"{_open_sockets()} after aclose(); Redis clients (db, last command): "
            f"{_redis_clients(redis_server)}"
        ),
    )
