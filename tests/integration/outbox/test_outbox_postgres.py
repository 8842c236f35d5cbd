"""The outbox on PostgreSQL (the session's own server, the ``pg`` alias): on-commit
dispatch in a PostgreSQL transaction, relays sharing rows with ``SKIP LOCKED``,
and a relay woken by ``NOTIFY`` long before its poll interval."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.db import connections, transaction
from django.test import override_settings
from django.utils import timezone

from aceleryctl import AsyncCeleryController
from aceleryctl.outbox import store
from aceleryctl.outbox.config import OutboxSettings, outbox_settings
from aceleryctl.outbox.models import OutboxMessage
from aceleryctl.outbox.relay import Relay
from aceleryctl.outbox.rows import row_writer
from aceleryctl.sync import SyncCeleryController
from tests._support import pg_alias
from tests._support.waiting import wait_until
from tests.integration._helpers import Records, new_marker
from tests.integration.outbox.conftest import OUTBOX

pytestmark = pytest.mark.django_db(databases=["default", pg_alias.ALIAS], transaction=True)

PG = pg_alias.ALIAS


@pytest.fixture
def outbox_on_pg() -> Iterator[OutboxSettings]:
    """The outbox on, in the ``pg`` database."""
    conf = {**settings.ACELERYCTL, "OUTBOX": {**OUTBOX, "DATABASE": PG}}
    with override_settings(ACELERYCTL=conf):
        yield outbox_settings()


def pg_rows() -> list[OutboxMessage]:
    assert row_writer().flush(10.0)
    return list(OutboxMessage.objects.using(PG).order_by("pk"))


def test_on_commit_in_a_postgres_transaction(
    outbox_on_pg: OutboxSettings, sync_controller: SyncCeleryController, records: Records
) -> None:
    from tests.integration.celery_app import record

    marker = new_marker()
    with transaction.atomic(using=PG):
        result = sync_controller.apply_async_on_commit(record, (marker,), using=PG)
        assert [r.task_id for r in pg_rows()] == [result.id]
    [entry] = records.wait_for(marker)
    assert entry["task_id"] == result.id
    wait_until(lambda: pg_rows() == [], timeout=15.0, message="the row to be deleted")


def _stored_rows(app: Celery, markers: list[str], conf: OutboxSettings) -> None:
    """Rows of ``record(marker)`` dispatches, due now, written straight to ``pg``."""
    from aceleryctl.dispatch.build import build_apply_async

    now = timezone.now()
    task = app.tasks["aceleryctl_tests.record"]
    rows = [
        store.encode(
            build_apply_async(app, "delay", task, (m,), {}, {}, 5.0)[0],
            app,
            reason="durable",
            now=now,
            available_at=now,
        )
        for m in markers
    ]
    store.insert(rows, PG)


def test_two_relays_never_publish_the_same_row(
    outbox_on_pg: OutboxSettings, controller: AsyncCeleryController, records: Records
) -> None:
    markers = [new_marker(f"r{i}") for i in range(200)]
    _stored_rows(controller.app, markers, outbox_on_pg)
    conf = OutboxSettings(**{**_fields(outbox_on_pg), "batch_size": 10, "database": PG})
    totals: list[dict[str, int]] = []
    start = threading.Barrier(2)

    def relay(name: str) -> None:
        try:
            start.wait(10.0)
            totals.append(
                Relay(controller, settings=conf, name=name).run(threading.Event(), until_idle=True)
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay, args=(f"relay-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert sum(t["published"] for t in totals) == 200
    for marker in markers:
        records.wait_for(marker)
    assert all(records.count(m) == 1 for m in markers), "a row was published twice"
    assert pg_rows() == []


def test_a_notify_wakes_the_relay_long_before_its_poll_interval(
    outbox_on_pg: OutboxSettings,
    controller: AsyncCeleryController,
    dead_app: Celery,
    records: Records,
) -> None:
    conf = OutboxSettings(**{**_fields(outbox_on_pg), "poll_interval": 120.0})
    stop = threading.Event()
    relay = Relay(controller, settings=conf)

    def run() -> None:
        try:
            relay.run(stop)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(  # the relay's first round ran, and it now waits up to 120 s
            lambda: _heartbeats() > 0, timeout=15.0, message="the relay's first round"
        )
        marker = new_marker()
        dead = AsyncCeleryController(app=dead_app)
        dead.breaker.force_open()
        try:
            dead.sync.apply_async(
                dead_app.tasks["aceleryctl_tests.record"], (marker,), durable=True
            )
        finally:
            dead.sync.close(0)
        records.wait_for(marker, timeout=15.0)
    finally:
        stop.set()
        thread.join(10.0)
    assert not thread.is_alive(), "the relay did not see its stop while listening"


def _heartbeats() -> int:
    from aceleryctl.outbox.models import RelayHeartbeat

    return RelayHeartbeat.objects.using(PG).count()


def _fields(conf: OutboxSettings) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(conf, f.name) for f in dataclasses.fields(conf)}
