"""The PostgreSQL test infrastructure itself: the ``pg`` alias through Django's ORM,
row locks and notifications on the real server, a child process on the same test
database, and :class:`PostgresServer` on its own.

The session's server is started by ``tests/conftest.py`` because these tests name
the ``pg`` alias; each test is bounded (seconds) and leaves no server running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import connections, transaction

from tests._support import pg_alias
from tests._support._process import accepts
from tests._support.postgres_server import (
    BINDIR_ENV,
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    find_binaries,
)
from tests._support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

pg_db = pytest.mark.django_db(databases=["default", pg_alias.ALIAS], transaction=True)


def _username() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


@pg_db
def test_the_pg_alias_is_the_sessions_postgres_test_database(
    postgres_server: PostgresServer,
) -> None:
    connection = connections[pg_alias.ALIAS]
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["HOST"] == "127.0.0.1"
    assert connection.settings_dict["PORT"] == str(postgres_server.port)
    assert connection.settings_dict["NAME"] == "test_aceleryctl"
    assert connection.features.has_select_for_update_skip_locked
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), inet_server_port()")
        assert cursor.fetchone() == ("test_aceleryctl", postgres_server.port)
    assert connections["default"].vendor == "sqlite"


@pg_db
def test_orm_rows_go_to_postgres_only() -> None:
    name = _username()
    created = User.objects.using(pg_alias.ALIAS).create(username=name)
    assert User.objects.using(pg_alias.ALIAS).get(username=name).pk == created.pk
    assert not User.objects.using("default").filter(username=name).exists()


@pg_db
def test_select_for_update_skip_locked_skips_a_row_locked_elsewhere(
    postgres_server: PostgresServer,
) -> None:
    locked, free = _username(), _username()
    User.objects.using(pg_alias.ALIAS).bulk_create([User(username=locked), User(username=free)])
    database = connections[pg_alias.ALIAS].settings_dict["NAME"]
    with postgres_server.connect(database) as other:
        other.execute("SELECT 1 FROM auth_user WHERE username = %s FOR UPDATE", [locked])
        with transaction.atomic(using=pg_alias.ALIAS):
            seen = list(
                User.objects.using(pg_alias.ALIAS)
                .select_for_update(skip_locked=True)
                .filter(username__in=[locked, free])
                .values_list("username", flat=True)
            )
        other.rollback()
    assert seen == [free]


@pg_db
def test_notify_from_the_orm_reaches_a_listener(postgres_server: PostgresServer) -> None:
    database = connections[pg_alias.ALIAS].settings_dict["NAME"]
    received: list[str] = []
    with postgres_server.connect(database, autocommit=True) as listener:
        listener.add_notify_handler(lambda notify: received.append(notify.payload))
        listener.execute("LISTEN aceleryctl_test")
        with connections[pg_alias.ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_notify('aceleryctl_test', 'hello')")
        # Notifications are read while the listener talks to the server: poll it.
        wait_until(
            lambda: listener.execute("SELECT 1") and received,
            timeout=10.0,
            message="no notification",
        )
    assert received == ["hello"]


_CHILD = """
import json, os, sys
import django
import psycopg

django.setup()
from django.contrib.auth.models import User
from django.db import connections

from tests._support import pg_alias

seen = User.objects.using("pg").get(username=sys.argv[1]).pk
User.objects.using("pg").create(username=sys.argv[2])
with psycopg.connect(os.environ[pg_alias.DSN_ENV], connect_timeout=5) as conn:
    (database,) = conn.execute("SELECT current_database()").fetchone()
print(json.dumps({"seen": seen, "vendor": connections["pg"].vendor, "raw": database}))
"""


@pg_db
def test_a_child_process_reaches_the_same_test_database() -> None:
    parent, child = _username(), _username()
    created = User.objects.using(pg_alias.ALIAS).create(username=parent)
    env = {
        **pg_alias.child_env(),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, parent, child],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60.0,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "seen": created.pk,
        "vendor": "postgresql",
        "raw": "test_aceleryctl",
    }
    assert User.objects.using(pg_alias.ALIAS).filter(username=child).exists()


def test_a_server_of_its_own_starts_and_stops_clean(postgres_binaries: PostgresBinaries) -> None:
    server = PostgresServer.start(binaries=postgres_binaries, timeout=30.0)
    try:
        assert server.host == "127.0.0.1"
        assert server.url("db") == f"postgresql://postgres@127.0.0.1:{server.port}/db"
        dsn = server.create_database("scratch")
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT current_database(), current_setting('fsync'),"
                " current_setting('listen_addresses')"
            ).fetchone()
        assert row == ("scratch", "off", "127.0.0.1")
        assert "ready to accept connections" in server.log()
    finally:
        server.stop()
    assert server.process.returncode == 0  # a clean fast shutdown, not a kill
    assert not server.workdir.exists()
    assert not accepts(server.port)
    server.stop()  # twice is fine


def test_a_bindir_without_the_binaries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(PostgresServerError, match=BINDIR_ENV):
        find_binaries()
