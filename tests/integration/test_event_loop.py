"""The event loop keeps ticking through 2,000 concurrent dispatches.

A 1 ms ticker runs on the loop and records the longest gap between its ticks
while 2,000 ``await controller.delay(...)`` calls run at once. The bound is
generous on purpose: the claim is that the loop is never blocked for the run,
not a speed claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from tests._support.ticker import Ticker
from tests._support.waiting import wait_until_async

from ._helpers import Broker
from .celery_app import PARKED_QUEUE, parked

CALLS = 2000
# Seconds. The 2,000 calls are started by one gather(): each runs to its first await
# in a single loop turn (measured: ~150 ms here, against ~30 ms for 2,000 empty
# coroutines on 2 busy cores). The bound proves the loop is never held for the
# whole run (which is what a blocking publish would do), not a speed.
MAX_GAP = 0.5


@pytest.fixture
def parked_queue(broker: Broker) -> Iterator[str]:
    broker.purge(PARKED_QUEUE)
    yield PARKED_QUEUE
    broker.purge(PARKED_QUEUE)


@pytest.fixture
async def big_controller(celery_app: Celery) -> AsyncIterator[AsyncCeleryController]:
    # Every call's deadline covers its wait for a thread behind up to 1,999 others.
    ctl = AsyncCeleryController(app=celery_app, dispatch_timeout=60.0, max_workers=2)
    try:
        yield ctl
    finally:
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)


async def test_loop_keeps_ticking_through_2000_concurrent_dispatches(
    big_controller: AsyncCeleryController, broker: Broker, parked_queue: str
) -> None:
    ticker = Ticker()
    ticking = asyncio.ensure_future(ticker.run())
    await wait_until_async(lambda: len(ticker.gaps) >= 5, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()

    results = await asyncio.gather(*(big_controller.delay(parked, i) for i in range(CALLS)))

    elapsed = loop.time() - started
    ticker.stop.set()
    await ticking
    max_gap = max(ticker.gaps)
    ids = [result.id for result in results]
    assert len(set(ids)) == CALLS
    # Every call's message is in the broker (no worker consumes this queue).
    in_broker = broker.task_ids(parked_queue)
    assert sorted(in_broker) == sorted(ids), (
        f"{len(set(ids) - set(in_broker))} returned ids missing from the broker, "
        f"{len(in_broker) - len(set(in_broker))} duplicated"
    )
    assert max_gap < MAX_GAP, (
        f"the event loop stalled for {max_gap * 1000:.0f} ms during {CALLS} dispatches "
        f"({elapsed:.2f} s in all; {len(ticker.gaps)} ticks)"
    )
    print(
        f"\n{CALLS} dispatches in {elapsed:.2f} s; ticker max gap {max_gap * 1000:.1f} ms, "
        f"{len(ticker.gaps)} ticks"
    )
