"""``countdown``, ``eta`` and ``expires`` are honoured by a real worker.

Times are compared on one machine's wall clock (``time.time()`` here and in the
worker). The lower bounds are behaviour, not speed: a task must not start before
its countdown or eta, whatever the machine's load.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from aceleryctl import AsyncCeleryController

from ._helpers import Broker, Records, new_marker
from .celery_app import record

DELAY = 1.5  # seconds
# The worker's timer may fire a few milliseconds early.
TOLERANCE = 0.05  # seconds


async def test_countdown_delays_the_start(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()
    before = time.time()

    result = await controller.apply_async(record, args=(marker,), countdown=DELAY)

    [entry] = await records.wait_for_async(marker, timeout=DELAY + 20)
    assert entry["task_id"] == result.id
    waited = entry["start"] - before
    assert waited >= DELAY - TOLERANCE, f"started {waited:.3f} s after dispatch"
    assert entry["eta"] is not None


async def test_eta_delays_the_start(controller: AsyncCeleryController, records: Records) -> None:
    marker = new_marker()
    eta = datetime.now(UTC) + timedelta(seconds=DELAY)

    result = await controller.apply_async(record, args=(marker,), eta=eta)

    [entry] = await records.wait_for_async(marker, timeout=DELAY + 20)
    assert entry["task_id"] == result.id
    early_by = eta.timestamp() - entry["start"]
    assert early_by <= TOLERANCE, f"started {early_by:.3f} s before its eta"
    assert datetime.fromisoformat(entry["eta"]) == eta


async def test_expires_in_the_past_makes_the_worker_revoke_it(
    controller: AsyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker()
    expired = datetime.now(UTC) - timedelta(seconds=30)

    result = await controller.apply_async(record, args=(marker,), expires=expired)

    # The worker receives it, sees it expired and stores REVOKED instead of running it.
    await broker.wait_for_state_async(result.id, "REVOKED")
    assert records.get(marker) == []


async def test_short_expires_before_the_countdown_revokes_it(
    controller: AsyncCeleryController, records: Records, broker: Broker
) -> None:
    marker = new_marker()

    result = await controller.apply_async(record, args=(marker,), countdown=1.0, expires=0.3)

    await broker.wait_for_state_async(result.id, "REVOKED")
    assert records.get(marker) == []


async def test_expires_in_the_future_lets_it_run(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()

    result = await controller.apply_async(record, args=(marker,), expires=300)

    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id
    assert entry["expires"] is not None
