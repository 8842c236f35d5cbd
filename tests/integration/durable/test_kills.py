"""Processes SIGKILLed at the worst moment lose no committed dispatch.

* A web process killed between the commit and the publish: its rows stay, and the
  relay publishes them once the hand-off grace has passed.
* A relay killed in the middle of a round, its transaction open: the rows it had
  claimed come back, and the next relay publishes them. If the dead relay had
  published them already, they reach the broker twice: the run-once guard runs
  each once, and skips the other copy.

Each kill is made certain, and checked, before it is sent: the broker is paused
(SIGSTOP: connections are accepted, nothing is answered) so a publish cannot end,
or the relay's ``DELETE`` waits on a table lock the test holds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery import Celery

from tests._support import pg_alias
from tests._support._process import LoggedProcess
from tests._support.waiting import wait_until
from tests._support.worker import CeleryWorker
from tests.integration._helpers import Records, new_marker
from tests.integration.faults.conftest import FaultBroker

from .conftest import (
    BOTH,
    POSTGRES,
    Children,
    Database,
    Request,
    drained,
    fire,
    never_ran,
    plan,
    ran_once,
    skipped,
)

#: The children's ``HANDOFF_GRACE``, seconds: how long the relay leaves a fresh
#: on-commit row to the web process that wrote it.
GRACE = 3.0
#: The web processes' publish deadline, seconds: far longer than the requests take,
#: so that the kill comes while every after-commit publish still waits.
WEB_DEADLINE = 10.0
#: Seconds within which every committed dispatch runs once the broker is back and
#: the hand-off grace has passed.
DELIVERY_BOUND = 30.0


def kill_group(child: LoggedProcess) -> None:
    """SIGKILL ``child``'s process group (it leads one) and reap it."""
    os.killpg(child.process.pid, signal.SIGKILL)
    child.process.wait(10)


def settle(database: Database, broker: FaultBroker, records: Records, markers: list[str]) -> None:
    """Wait until every marker's task ran, the outbox is empty and the broker has no
    message left (a second copy would still be queued or unacknowledged)."""
    wait_until(
        lambda: all(records.count(m) for m in markers),
        timeout=DELIVERY_BOUND,
        message=lambda: f"{sum(not records.count(m) for m in markers)} dispatches to run",
    )
    wait_until(
        lambda: not database.outbox() and drained(broker),
        timeout=15.0,
        message=lambda: f"the outbox and the queue to empty: {database.outbox()}",
    )


@pytest.mark.parametrize("db_kind", BOTH)
def test_a_web_process_killed_between_commit_and_publish_loses_nothing(
    database: Database,
    durable: FaultBroker,
    children: Children,
    records: Records,
    durable_worker: CeleryWorker,
) -> None:
    children.relay(children.env(database, grace=GRACE))
    web = children.web(children.env(database, grace=GRACE, deadline=WEB_DEADLINE))
    # One publish each first, as in a process that has served before: each server
    # then holds a broker connection it will publish on at once.
    warm = fire(web, [Request(server, "commit", new_marker("w")) for server in ("asgi", "wsgi")])
    for request in warm:
        records.wait_for(request.marker)
    wait_until(lambda: not database.outbox(), timeout=15.0, message="the warm-up rows to go")

    durable.server.pause()
    answered = fire(web, plan(20, rollback_every=5))
    committed = [r for r in answered if r.outcome == "commit"]
    rolled_back = [r for r in answered if r.outcome == "rollback"]
    assert [r.status for r in committed] == [200] * 16
    # Every request was answered after its commit: the rows are in the database.
    assert {r.task_id for r in database.outbox()} == {r.task_id for r in committed}
    web.kill()
    killed_at = time.time()
    rows = database.outbox()
    # No after-commit publish had ended (it would have deleted its row or recorded
    # a failed attempt): the processes died between the commit and the publish.
    assert {r.task_id for r in rows} == {r.task_id for r in committed}
    assert [r.attempts for r in rows] == [0] * len(rows)
    durable.server.resume()

    markers = [r.marker for r in committed]
    settle(database, durable, records, markers)
    ran_once(records, markers)
    never_ran(records, [r.marker for r in rolled_back])
    assert set(markers) <= database.usernames()
    # The relay published every row. A dead process's publish that had been written
    # to the paused broker's socket reached it too, when it resumed: the guard
    # skipped those second copies.
    assert sum(database.relay_totals().values()) == len(committed)
    copies = skipped(durable_worker, [r.task_id for r in committed])
    assert set(copies.values()) <= {1}, copies
    created = min(r.created_at for r in rows).timestamp()
    print(
        f"{database.kind}: killed {killed_at - created:.2f} s after the first commit; "
        f"the guard skipped a second copy of {len(copies)} of {len(markers)}"
    )


# -- a relay killed mid-round (PostgreSQL: the database several relays share) -----------------

ROWS = 200
BATCH = 50


@pytest.fixture
def pg_session(database: Database) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own to the PostgreSQL test database, outside Django."""
    with psycopg.connect(database.env[pg_alias.DSN_ENV], connect_timeout=5) as conn:
        yield conn


def locked_rows(database: Database) -> int:
    """How many outbox rows a transaction holds locked (``FOR UPDATE``) right now."""
    with psycopg.connect(database.env[pg_alias.DSN_ENV], connect_timeout=5) as conn:
        total = conn.execute("SELECT count(*) FROM aceleryctl_outbox").fetchone()
        free = conn.execute(
            "SELECT count(*) FROM (SELECT id FROM aceleryctl_outbox FOR UPDATE SKIP LOCKED) f"
        ).fetchone()
        conn.rollback()
    assert total is not None
    assert free is not None
    return int(total[0]) - int(free[0])


def sessions(database: Database) -> list[tuple[str, str, str]]:
    """Every other session of the test database: its state, what it waits on, and
    its (last) statement. Read in a transaction of its own: PostgreSQL keeps one
    snapshot of these statistics per transaction."""
    with psycopg.connect(database.env[pg_alias.DSN_ENV], connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), coalesce(wait_event_type, ''), query"
            " FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(str(state), str(wait), str(query)) for state, wait, query in rows]


def claimed_and_idle(database: Database) -> bool:
    """A session sits in its transaction after a ``FOR UPDATE SKIP LOCKED`` claim
    (the relay, publishing)."""
    return any(
        state == "idle in transaction" and "SKIP LOCKED" in query
        for state, _, query in sessions(database)
    )


def delete_waits_on_a_lock(database: Database) -> bool:
    """A session's ``DELETE`` of outbox rows waits on a lock (the relay, settling)."""
    return any(
        wait == "Lock" and query.lstrip().upper().startswith("DELETE")
        for _, wait, query in sessions(database)
    )


@pytest.mark.parametrize("db_kind", [POSTGRES])
def test_a_relay_killed_while_its_publish_waits_loses_nothing(
    database: Database,
    durable: FaultBroker,
    children: Children,
    records: Records,
    durable_app: Celery,
) -> None:
    markers = [new_marker("k") for _ in range(ROWS)]
    database.store(durable_app, markers)
    durable.server.pause()
    relay = children.relay(children.env(database, batch=BATCH, deadline=30.0))
    # The relay claimed its first batch (the rows are locked) and its publish waits
    # on the paused broker: its round's transaction is open.
    wait_until(
        lambda: claimed_and_idle(database),
        timeout=20.0,
        message=lambda: f"the relay to claim a batch:\n{relay.log_tail()}",
    )
    assert locked_rows(database) == BATCH
    kill_group(relay)
    durable.server.resume()
    wait_until(lambda: locked_rows(database) == 0, timeout=20.0, message="the locks to go")
    assert len(database.outbox()) == ROWS  # its transaction rolled back: nothing deleted

    children.relay(children.env(database, batch=BATCH))
    settle(database, durable, records, markers)
    ran_once(records, markers)


@pytest.mark.parametrize("db_kind", [POSTGRES])
def test_a_relay_killed_after_publishing_before_its_commit_loses_nothing(
    database: Database,
    durable: FaultBroker,
    children: Children,
    records: Records,
    durable_app: Celery,
    durable_worker: CeleryWorker,
    pg_session: psycopg.Connection[Any],
) -> None:
    markers = [new_marker("k") for _ in range(ROWS)]
    ids = database.store(durable_app, markers)
    # SHARE mode lets the relay claim rows (FOR UPDATE) but not delete them.
    pg_session.execute("LOCK TABLE aceleryctl_outbox IN SHARE MODE")
    relay = children.relay(children.env(database, batch=BATCH))
    first = markers[:BATCH]  # the oldest rows: the relay's first batch
    wait_until(
        lambda: all(records.count(m) for m in first) and delete_waits_on_a_lock(database),
        timeout=20.0,
        message=lambda: f"the relay to publish its batch and wait:\n{relay.log_tail()}",
    )
    assert not any(records.count(m) for m in markers[BATCH:])
    kill_group(relay)
    pg_session.rollback()  # the table lock goes; the dead relay's session ends
    wait_until(lambda: locked_rows(database) == 0, timeout=20.0, message="the locks to go")
    assert len(database.outbox()) == ROWS  # published, but never deleted

    children.relay(children.env(database, batch=BATCH))
    settle(database, durable, records, markers)
    # The first batch went to the broker twice, once by each relay: it ran once,
    # and the guard skipped each of its second copies.
    ran_once(records, markers)
    assert skipped(durable_worker, ids) == dict.fromkeys(ids[:BATCH], 1)
