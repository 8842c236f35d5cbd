"""The relay on SQLite holds the database's write lock from the start of its round.

SQLite has no row locks, and a transaction that has read cannot wait for the
write lock: when another connection holds it, the write fails at once ("database
is locked"), whatever the busy timeout. A round that claimed its rows with a read
would publish them, then fail to delete them whenever a web request was writing,
and publish them again in the next round. Holding the write lock from the round's
first statement, it waits for the other writer instead, before it claims or
publishes anything.
"""

from __future__ import annotations

import sqlite3

import pytest
from celery import Celery
from django.db import connections

from aceleryctl import AsyncCeleryController
from aceleryctl.breaker import StateChange
from aceleryctl.dispatch.listener import DispatchEvent, PoolChange
from aceleryctl.outbox.config import OutboxSettings
from aceleryctl.sync import SyncCeleryController
from tests.integration._helpers import Records, new_marker

from .conftest import relay_round, rows

pytestmark = pytest.mark.django_db(transaction=True)


def _store(app: Celery, markers: list[str]) -> None:
    """Durable rows of ``record(marker)``, stored behind an open breaker."""
    ctl = AsyncCeleryController(app=app)
    ctl.breaker.force_open()
    try:
        for marker in markers:
            ctl.sync.send_task("aceleryctl_tests.record", (marker,), durable=True)
    finally:
        ctl.sync.close(0)


class Writer:
    """A dispatch listener that, when the relay's publish settles (on the relay's
    thread, inside its round, before the round deletes the rows), has another
    connection start a write transaction, as a web request would, and keeps it
    open: the relay must then be able to finish its round all the same."""

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, timeout=0, isolation_level=None)
        self.seen: list[str] = []

    def dispatch_settled(self, event: DispatchEvent) -> None:
        if not event.relayed or self.connection.in_transaction:
            return
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            self.seen.append("the relay holds the write lock")
            return
        self.seen.append("the write lock was free")
        self.connection.execute(
            "INSERT INTO aceleryctl_relay (name, last_round_at, published, dead_lettered)"
            " VALUES ('a web request', '2026-01-01 00:00:00', 0, 0)"
        )

    def pool_changed(self, change: PoolChange) -> None:
        pass

    def breaker_changed(self, change: StateChange) -> None:
        pass

    def close(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("COMMIT")
        self.connection.close()


def test_a_write_during_the_relays_publish_waits_and_each_row_is_published_once(
    outbox_on: OutboxSettings,
    dead_app: Celery,
    sync_controller: SyncCeleryController,
    records: Records,
) -> None:
    markers = [new_marker(), new_marker()]
    _store(dead_app, markers)
    writer = Writer(str(connections["default"].settings_dict["NAME"]))
    controller = sync_controller.async_controller
    controller.add_listener(writer)
    try:
        done = relay_round(controller)  # without the lock: OperationalError on its DELETE
    finally:
        controller.remove_listener(writer)
        writer.close()
    assert writer.seen == ["the relay holds the write lock"] * 2
    assert (done.claimed, done.published) == (2, 2)
    assert rows() == []
    for marker in markers:
        records.wait_for(marker)
    assert relay_round(controller).claimed == 0
    assert [records.count(m) for m in markers] == [1, 1]
