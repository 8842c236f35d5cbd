"""The outbox against a real Redis broker, real prefork workers and a real SQLite
database: on-commit dispatch through the outbox, ``durable=True``, and the relay.

A closed port stands in for a broker that is down; :class:`Tarpit` for a silent
one. Rows are read back after the process's row writer has finished.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from celery import Celery
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from aceleryctl import AsyncCeleryController
from aceleryctl.dispatch.record import NotData
from aceleryctl.exceptions import BrokerError, DispatchTimeout, TaskSerializationError
from aceleryctl.outbox.config import OutboxSettings
from aceleryctl.outbox.durable import DeferredResult
from aceleryctl.outbox.models import OutboxMessage
from tests._support.tarpit import Tarpit
from tests._support.transactions import async_atomic
from tests.integration._helpers import Records, isolated_app, new_marker
from tests.integration.celery_app import record

from .conftest import arows, relay_round, rows

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("close_thread_sensitive_connections"),
]


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


# -- on-commit dispatch through the outbox ---------------------------------------------


async def test_the_row_is_written_in_the_transaction_and_gone_once_published(
    outbox_on: OutboxSettings, controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()
    async with async_atomic():
        await User.objects.acreate(username=marker[:150])
        result = await controller.delay_on_commit(record, marker)
        [row] = await arows()  # inside the caller's transaction
        assert (row.task_id, row.task_name, row.reason) == (
            result.id,
            "aceleryctl_tests.record",
            "on_commit",
        )
    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id
    assert await arows() == []


async def test_a_rollback_leaves_neither_row_nor_task(
    outbox_on: OutboxSettings, controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()
    with pytest.raises(Rollback):
        async with async_atomic():
            await controller.delay_on_commit(record, marker)
            raise Rollback
    assert await arows() == []
    sentinel = new_marker("sentinel")
    async with async_atomic():
        await controller.delay_on_commit(record, sentinel)
    await records.wait_for_async(sentinel)
    assert records.get(marker) == []


def test_a_failed_after_commit_publish_leaves_the_row_and_the_relay_delivers_it(
    outbox_on: OutboxSettings,
    dead_controller: AsyncCeleryController,
    sync_controller: object,
    records: Records,
) -> None:
    marker = new_marker()
    dead = dead_controller.sync
    with transaction.atomic():
        result = dead.delay_on_commit(dead_controller.app.tasks["aceleryctl_tests.record"], marker)
    [row] = _wait_for_rows(lambda found: len(found) == 1 and found[0].attempts == 1)
    assert row.task_id == result.id
    assert row.state == "pending"
    assert "nothing was sent" in row.last_error or "Connection" in row.last_error

    done = relay_round(sync_controller.async_controller)  # type: ignore[attr-defined]
    assert (done.claimed, done.published) == (1, 1)
    [entry] = records.wait_for(marker)
    assert entry["task_id"] == result.id
    assert rows() == []


def test_an_open_breaker_refuses_on_commit_publishes_at_once_and_keeps_every_row(
    outbox_on: OutboxSettings, dead_controller: AsyncCeleryController
) -> None:
    dead_controller.breaker.force_open()
    sync = dead_controller.sync
    task = dead_controller.app.tasks["aceleryctl_tests.add"]
    with transaction.atomic():
        ids = [sync.delay_on_commit(task, i, i).id for i in range(20)]
    found = _wait_for_rows(lambda found: all(r.attempts == 1 for r in found) and len(found) == 20)
    assert [r.task_id for r in found] == ids
    assert all("CircuitOpenError" in r.last_error for r in found)
    stats = dead_controller.statistics()
    assert stats.rejected_open == 20
    assert stats.pool.completed == 0  # no publishing thread was used


# -- durable=True ----------------------------------------------------------------------


async def test_durable_against_a_closed_port_returns_a_stored_result_that_runs_later(
    outbox_on: OutboxSettings,
    dead_controller: AsyncCeleryController,
    controller: AsyncCeleryController,
    records: Records,
) -> None:
    marker = new_marker()
    task = dead_controller.app.tasks["aceleryctl_tests.record"]
    result = await dead_controller.apply_async(task, (marker,), durable=True)
    assert isinstance(result, DeferredResult)
    assert result.deferred is True
    assert "BrokerError" in result.reason or "DispatchRejected" in result.reason
    [row] = await arows()
    assert (row.task_id, row.reason, row.attempts) == (result.id, "durable", 1)

    done = await sync_to_async(relay_round, thread_sensitive=True)(controller)
    assert done.published == 1
    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id


async def test_durable_with_the_breaker_open_is_stored_without_touching_the_broker(
    outbox_on: OutboxSettings, dead_controller: AsyncCeleryController
) -> None:
    dead_controller.breaker.force_open()
    result = await dead_controller.send_task("aceleryctl_tests.add", (1, 2), durable=True)
    assert isinstance(result, DeferredResult)
    assert result.reason.startswith("CircuitOpenError")
    [row] = await arows()
    assert row.task_id == result.id
    assert dead_controller.statistics().pool.completed == 0


def test_durable_against_a_silent_broker_stores_the_unknown_outcome(
    outbox_on: OutboxSettings, redis_server: object
) -> None:
    with Tarpit() as tarpit:
        app = isolated_app("outbox-silent", tarpit.url, "cache+memory://")
        ctl = AsyncCeleryController(app=app, dispatch_timeout=0.5)
        try:
            result = ctl.sync.apply_async(app.tasks["aceleryctl_tests.add"], (1, 2), durable=True)
        finally:
            ctl.sync.close(0)
    assert isinstance(result, DeferredResult)
    # The deadline passed mid-publish, or (a loaded machine) the socket timed out
    # first: either way the message may exist, and the dispatch is stored.
    assert result.reason.split(":")[0] in {DispatchTimeout.__name__, BrokerError.__name__}
    [row] = rows()
    assert row.task_id == result.id


async def test_durable_refuses_what_cannot_be_stored(
    outbox_on: OutboxSettings, controller: AsyncCeleryController
) -> None:
    with pytest.raises(NotData, match="cannot be durable"):
        await controller.apply_async(lambda: None, durable=True)
    with pytest.raises(TaskSerializationError):
        await controller.apply_async(record, (object(),), durable=True)
    with pytest.raises(TypeError, match="durable must be True or False"):
        await controller.apply_async(record, ("x",), durable="yes")
    assert await arows() == []


async def test_durable_without_the_outbox_says_what_to_set(
    controller: AsyncCeleryController,
) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"ACELERYCTL\['OUTBOX'\]"):
        await controller.apply_async(record, ("x",), durable=True)


# -- the relay -------------------------------------------------------------------------


def _store(app: Celery, *names: str) -> list[OutboxMessage]:
    """Store one durable row per task name via a controller whose breaker is open."""
    ctl = AsyncCeleryController(app=app)
    ctl.breaker.force_open()
    try:
        for name in names:
            ctl.sync.send_task(name, ("x",), durable=True)
    finally:
        ctl.sync.close(0)
    return rows()


def test_the_relay_dead_letters_bad_rows_and_publishes_the_rest(
    outbox_on: OutboxSettings, sync_controller: object, dead_app: Celery, records: Records
) -> None:
    marker = new_marker()
    corrupt, unknown, good = _store(dead_app, "aceleryctl_tests.add", "x", "y")
    corrupt.payload = b"{not json"
    corrupt.save()
    OutboxMessage.objects.filter(pk=unknown.pk).update(
        payload=bytes(unknown.payload).replace(b'"by_name": true', b'"by_name": false')
    )
    data = json.loads(bytes(good.payload))
    data["task_name"], data["args"] = "aceleryctl_tests.record", [marker]
    OutboxMessage.objects.filter(pk=good.pk).update(payload=json.dumps(data).encode())

    done = relay_round(sync_controller.async_controller)  # type: ignore[attr-defined]
    assert (done.claimed, done.published, done.dead_lettered) == (3, 1, 2)
    records.wait_for(marker)
    dead = {r.pk: r for r in rows()}
    assert set(dead) == {corrupt.pk, unknown.pk}
    assert "does not decode" in dead[corrupt.pk].last_error
    assert "'x', which is not registered" in dead[unknown.pk].last_error
    assert all(r.state == "dead" for r in dead.values())


def test_the_relay_retries_with_backoff_then_dead_letters(
    outbox_on: OutboxSettings,
    dead_controller: AsyncCeleryController,
    dead_app: Celery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [row] = _store(dead_app, "aceleryctl_tests.add")
    ctl = dead_controller
    caplog.clear()
    first = relay_round(ctl)
    [failure] = [r for r in caplog.records if r.getMessage().startswith("Task dispatch failed")]
    assert failure.levelname == "WARNING"  # the row keeps it: nothing is lost
    assert (first.claimed, first.retried) == (1, 1)
    [row] = rows()
    assert (row.attempts, row.state) == (2, "pending")
    assert row.available_at > row.last_attempt_at
    last = relay_round(ctl)
    assert last.dead_lettered == 1
    [row] = rows()
    assert (row.attempts, row.state) == (3, "dead")


def test_the_relay_leaves_rows_alone_while_its_breaker_is_open(
    outbox_on: OutboxSettings, dead_controller: AsyncCeleryController, dead_app: Celery
) -> None:
    stored = _store(dead_app, "aceleryctl_tests.add", "aceleryctl_tests.add")
    dead_controller.breaker.force_open()
    done = relay_round(dead_controller)
    assert (done.claimed, done.refused, done.published, done.retried) == (2, 2, 0, 0)
    assert done.retry_after > 0
    assert [(r.pk, r.attempts) for r in rows()] == [(r.pk, r.attempts) for r in stored]


def test_the_relay_command_publishes_what_is_due_and_exits(
    outbox_on: OutboxSettings, sync_controller: object, dead_app: Celery, records: Records
) -> None:
    marker = new_marker()
    [row] = _store(dead_app, "aceleryctl_tests.add")
    data = json.loads(bytes(row.payload))
    data["task_name"], data["args"] = "aceleryctl_tests.record", [marker]
    OutboxMessage.objects.filter(pk=row.pk).update(
        payload=json.dumps(data).encode(), available_at=row.created_at
    )
    from django.conf import settings

    from tests.integration.outbox.conftest import OUTBOX

    conf = {
        **settings.ACELERYCTL,
        "CELERY_APP": "tests.integration.celery_app:app",
        "OUTBOX": OUTBOX,
    }
    with override_settings(ACELERYCTL=conf):
        call_command("aceleryctl_relay", "--once", stdout=__import__("io").StringIO())
    records.wait_for(marker)
    assert rows() == []


def _wait_for_rows(done: object) -> list[OutboxMessage]:
    from tests._support.waiting import wait_until

    return wait_until(
        lambda: (found := rows()) and done(found) and found,  # type: ignore[operator]
        timeout=15.0,
        message="the outbox rows to reach the expected state",
    )


class Heard:
    """A dispatch listener recording (outcome, task id, relayed) of every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, bool]] = []

    def dispatch_settled(self, event: Any) -> None:
        self.events.append((event.outcome.value, event.task_id, event.relayed))

    def pool_changed(self, change: Any) -> None:
        """Not recorded."""

    def breaker_changed(self, change: Any) -> None:
        """Not recorded."""


def test_listeners_hear_stored_relayed_and_dead_lettered(
    outbox_on: OutboxSettings, dead_controller: AsyncCeleryController, sync_controller: Any
) -> None:
    heard = Heard()
    dead_controller.add_listener(heard)
    dead_controller.breaker.force_open()
    task = dead_controller.app.tasks["aceleryctl_tests.add"]
    stored = dead_controller.sync.apply_async(task, (1, 2), durable=True)
    doomed = dead_controller.sync.apply_async(task, (3, 4), durable=True)
    assert heard.events == [
        ("not_sent", stored.id, False),
        ("stored", stored.id, False),
        ("not_sent", doomed.id, False),
        ("stored", doomed.id, False),
    ]
    OutboxMessage.objects.filter(task_id=doomed.id).update(payload=b"garbage")
    relayer = sync_controller.async_controller
    relayed = Heard()
    relayer.add_listener(relayed)
    relay_round(relayer)
    assert sorted(relayed.events) == [
        ("dead_lettered", doomed.id, True),
        ("sent", stored.id, True),
    ]


def test_a_stored_countdown_and_expiry_count_from_the_call_not_the_relay(
    outbox_on: OutboxSettings, dead_controller: AsyncCeleryController
) -> None:
    from aceleryctl.outbox.store import decode

    dead_controller.breaker.force_open()
    task = dead_controller.app.tasks["aceleryctl_tests.add"]
    dead_controller.sync.apply_async(task, (1, 2), countdown=3600, expires=7200, durable=True)
    [row] = rows()
    stored = decode(row, dead_controller.app).options
    assert "countdown" not in stored
    assert abs((stored["eta"] - row.created_at).total_seconds() - 3600) < 1
    assert abs((stored["expires"] - row.created_at).total_seconds() - 7200) < 1
