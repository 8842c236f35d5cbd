"""Two relay processes on one PostgreSQL outbox, and a task id published twice.

* No row is published by both relays: their messages go to a queue no worker
  consumes, and the broker holds each row's task id exactly once.
* A task published twice (the relays' publish, and a second ``apply_async`` with
  the same task id, as a republish after an unknown outcome would be) runs once:
  the worker's run-once guard skips the other copy.
"""

from __future__ import annotations

from collections import Counter

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from tests._support.broker_messages import read_queue
from tests._support.waiting import wait_until
from tests._support.worker import CeleryWorker
from tests.integration._helpers import Records, new_marker
from tests.integration.faults.conftest import FaultBroker

from .conftest import (
    POSTGRES,
    RECORD_TASK,
    Children,
    Database,
    broker_client,
    drained,
    ran_once,
    skipped,
)

#: Rows, and rows per round: many small rounds, so that the relays overlap.
ROWS = 600
BATCH = 5


def two_relays(children: Children, database: Database) -> None:
    """Start two relays and wait until each has finished a round (its heartbeat)."""
    env = children.env(database, batch=BATCH)
    children.relay(env)
    children.relay(env)
    wait_until(
        lambda: len(database.relay_totals()) == 2, timeout=20.0, message="both relays' heartbeats"
    )


@pytest.mark.parametrize("db_kind", [POSTGRES])
def test_two_relay_processes_never_publish_the_same_row(
    database: Database, durable: FaultBroker, children: Children, durable_app: Celery
) -> None:
    two_relays(children, database)
    queue = new_marker("parked")  # no worker consumes it: the messages stay to be read
    ids = database.store(durable_app, [new_marker("p") for _ in range(ROWS)], queue=queue)
    wait_until(
        lambda: not database.outbox(), timeout=60.0, message="the relays to empty the outbox"
    )

    client = broker_client(durable)
    try:
        published = Counter(message.task_id for message in read_queue(client, queue))
    finally:
        client.delete(queue)
        client.close()
    twice = {task_id: n for task_id, n in published.items() if n > 1}
    assert not twice, f"rows published by both relays: {twice}"
    assert set(published) == set(ids)
    totals = database.relay_totals()
    assert sum(totals.values()) == ROWS
    assert all(totals.values()), f"one relay published nothing: {totals}"
    print(f"published per relay: {sorted(totals.values())}")


@pytest.mark.parametrize("db_kind", [POSTGRES])
def test_a_task_published_twice_runs_once(
    database: Database,
    durable: FaultBroker,
    children: Children,
    durable_app: Celery,
    durable_controller: AsyncCeleryController,
    durable_worker: CeleryWorker,
    records: Records,
) -> None:
    two_relays(children, database)
    markers = [new_marker("d") for _ in range(50)]
    ids = database.store(durable_app, markers)
    task = durable_app.tasks[RECORD_TASK]
    for marker, task_id in zip(markers, ids, strict=True):
        durable_controller.sync.apply_async(task, (marker,), task_id=task_id)
    wait_until(
        lambda: all(records.count(m) for m in markers),
        timeout=30.0,
        message=lambda: f"{sum(not records.count(m) for m in markers)} dispatches to run",
    )
    wait_until(
        lambda: not database.outbox() and drained(durable),
        timeout=15.0,
        message="the outbox and the queue to empty",
    )
    ran_once(records, markers)
    assert skipped(durable_worker, ids) == dict.fromkeys(ids, 1)
