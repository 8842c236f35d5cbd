"""With every publishing thread hung on a silent broker, new calls still fail in time.

The broker is a tarpit on 127.0.0.1: it accepts connections and never answers, so
a publish blocks in the middle. The controller's threads are daemon threads; this
test never waits for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import DispatchOverloaded, DispatchTimeout
from tests._support.redis_server import RedisServer
from tests._support.tarpit import Tarpit
from tests._support.waiting import wait_until_async

from ._helpers import isolated_app

MAX_WORKERS = 2
DEADLINE = 0.5  # seconds: each call's own deadline
# The controller's default deadline (which may also bound its socket reads) is much
# longer than each call's deadline, so a publishing thread stays hung long after
# its caller has given up: the pool really is full of hung publishes.
CONTROLLER_DEADLINE = 10.0  # seconds
SLACK = 1.0  # seconds: every call must have failed by DEADLINE + SLACK
CALLS = 10


@pytest.fixture
def tarpit() -> Iterator[Tarpit]:
    with Tarpit() as server:
        yield server


@pytest.fixture
def tarpit_app(tarpit: Tarpit, redis_server: RedisServer) -> Celery:
    """An app of its own whose broker is the tarpit (results: the real Redis)."""
    return isolated_app("tarpit", tarpit.url, redis_server.url(1))


@pytest.fixture
async def tarpit_controller(tarpit_app: Celery) -> AsyncIterator[AsyncCeleryController]:
    ctl = AsyncCeleryController(
        app=tarpit_app,
        dispatch_timeout=CONTROLLER_DEADLINE,
        max_workers=MAX_WORKERS,
        max_pending=100,
    )
    try:
        yield ctl
    finally:
        # Hung publishes cannot drain: closing must still return, bounded.
        await asyncio.wait_for(ctl.aclose(timeout=0.5), timeout=5.0)


async def _timed_call(
    ctl: AsyncCeleryController, app: Celery, i: int
) -> tuple[float, BaseException]:
    started = time.monotonic()
    try:
        await ctl.apply_async(
            app.tasks["aceleryctl_tests.add"], args=(i, i), dispatch_timeout=DEADLINE
        )
    except Exception as exc:
        return time.monotonic() - started, exc
    raise AssertionError(f"call {i} returned a result from a broker that never answers")


async def test_a_pool_full_of_hung_publishes_fails_new_calls_within_their_deadline(
    tarpit_controller: AsyncCeleryController, tarpit_app: Celery, tarpit: Tarpit
) -> None:
    outcomes = await asyncio.gather(
        *(_timed_call(tarpit_controller, tarpit_app, i) for i in range(CALLS))
    )

    report = [(f"{elapsed:.3f}s", type(exc).__name__) for elapsed, exc in outcomes]
    for elapsed, exc in outcomes:
        assert isinstance(exc, DispatchTimeout | DispatchOverloaded), report
        assert elapsed <= DEADLINE + SLACK, report
    timed_out = [exc for _, exc in outcomes if isinstance(exc, DispatchTimeout)]
    overloaded = [exc for _, exc in outcomes if isinstance(exc, DispatchOverloaded)]
    # Only calls that got one of the threads can have started a publish.
    assert len(timed_out) <= MAX_WORKERS, report
    assert len(overloaded) >= CALLS - MAX_WORKERS, report
    for exc in timed_out:
        assert exc.timeout == DEADLINE
        assert exc.task_id is not None
    # Calls refused for want of a thread never touched the broker: at most one
    # connection per publishing thread reached the tarpit.
    assert tarpit.accepted <= MAX_WORKERS, f"{tarpit.accepted} connections to the tarpit"

    # The threads are still hung: a second wave finds no free thread at all, and
    # every call is refused (nothing sent) within its deadline.
    second = await asyncio.gather(
        *(_timed_call(tarpit_controller, tarpit_app, i) for i in range(CALLS))
    )
    report = [(f"{elapsed:.3f}s", type(exc).__name__) for elapsed, exc in second]
    for elapsed, exc in second:
        assert isinstance(exc, DispatchOverloaded), report
        assert elapsed <= DEADLINE + SLACK, report


async def test_the_event_loop_is_not_blocked_by_hung_publishes(
    tarpit_controller: AsyncCeleryController, tarpit_app: Celery, tarpit: Tarpit
) -> None:
    calls = [asyncio.ensure_future(_timed_call(tarpit_controller, tarpit_app, i)) for i in range(3)]
    # While the calls are pending (their threads hung on the tarpit), the loop runs.
    await wait_until_async(lambda: tarpit.accepted >= 1, timeout=DEADLINE + SLACK)
    ticks = 0
    while not all(call.done() for call in calls):
        await asyncio.sleep(0.01)
        ticks += 1
    outcomes = [call.result() for call in calls]
    assert ticks > 0
    for elapsed, exc in outcomes:
        assert isinstance(exc, DispatchTimeout | DispatchOverloaded), outcomes
        assert elapsed <= DEADLINE + SLACK, outcomes
