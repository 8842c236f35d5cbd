"""Settings and fixtures for the whole suite: Hypothesis's profile, and PostgreSQL.

Hypothesis runs without a per-example deadline and without its "too slow" health
check: both judge wall-clock time, and on a shared 2-core machine one garbage
collection or a neighbour's burst can make a single draw take a second. The suite
asserts behaviour, never speed.

PostgreSQL: a test that names the ``pg`` database alias
(``@pytest.mark.django_db(databases=["default", "pg"], transaction=True)``) gets a
real PostgreSQL test database, ``test_aceleryctl``. When pytest-django first sets
up the test databases, and only if a selected test names that alias, the
session-scoped :func:`postgres_server` fixture starts a throwaway server on a free
port of 127.0.0.1 and the alias is pointed at it (:mod:`tests._support.pg_alias`);
the server is stopped at the end of the session. A session without such a test
never starts PostgreSQL. A test may also ask for ``postgres_server`` itself, to
talk to the server without Django (LISTEN/NOTIFY from psycopg, a database of its
own). A child process reaches the test database with the environment
``pg_alias.child_env()`` returns. Collection marks all these tests ``postgres``
(``-m "not postgres"`` leaves them out).

Without the PostgreSQL server binaries those tests fail, loudly; they are
deselected only when ``ACELERYCTL_ALLOW_SKIP=1`` is set.

RabbitMQ: a test that asks for the session-scoped :func:`rabbitmq_server` fixture
gets a real RabbitMQ node of this session's own (own node name, ports and data
directory: :mod:`tests._support.rabbitmq_server`), started on first request (about
ten seconds) and stopped at the end of the session; a session without such a test
never starts it. Collection marks those tests ``rabbitmq``. Without RabbitMQ
installed they fail, loudly; they are deselected only when
``ACELERYCTL_ALLOW_SKIP=1`` is set.

Fixtures run on pytest's main thread; server start and stop are bounded
(:mod:`tests._support.postgres_server`, :mod:`tests._support.rabbitmq_server`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests._support import pg_alias
from tests._support.postgres_server import (
    PostgresBinaries,
    PostgresServer,
    PostgresServerError,
    find_binaries,
)
from tests._support.rabbitmq_server import RabbitMQServer, RabbitMQServerError, find_bindir

settings.register_profile("aceleryctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("aceleryctl")


def _django_databases(item: pytest.Item) -> set[str]:
    """The database aliases pytest-django sets up for ``item``, by its rules: a
    Django ``TransactionTestCase``'s ``databases``, else the ``django_db`` marker's
    ``databases`` (its third positional argument; None means ``default``), else
    ``default`` for the ``db``-like fixtures, else none."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.test import TransactionTestCase

    cls = getattr(item, "cls", None)
    if cls is not None and issubclass(cls, TransactionTestCase):
        databases = getattr(cls, "databases", None)
    elif (marker := item.get_closest_marker("django_db")) is not None:
        databases = marker.kwargs.get("databases", marker.args[2] if len(marker.args) > 2 else None)
    elif {"db", "transactional_db", "live_server"} & set(getattr(item, "fixturenames", ())):
        databases = None
    else:
        return set()
    if databases is None:
        return {DEFAULT_DB_ALIAS}
    if databases == "__all__":
        return set(connections)
    return set(databases)


def _uses_pg_alias(item: pytest.Item) -> bool:
    return pg_alias.ALIAS in _django_databases(item)


#: Fixtures that need the PostgreSQL server binaries.
_POSTGRES_FIXTURES = {"postgres_binaries", "postgres_server"}


#: Why the ``postgres`` tests were deselected, if they were.
_LEFT_OUT = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``postgres`` every test that uses the ``pg`` alias or the server's
    fixtures; deselect them all when the server binaries are missing and
    ``ACELERYCTL_ALLOW_SKIP=1`` (skipping is not enough: pytest-django would still
    create the test database of a skipped test's aliases)."""
    marked = [
        item
        for item in items
        if _uses_pg_alias(item) or _POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    for item in marked:
        item.add_marker(pytest.mark.postgres)
    _mark_rabbitmq(config, items)
    if not marked or os.environ.get("ACELERYCTL_ALLOW_SKIP") != "1":
        return
    try:
        find_binaries()
    except PostgresServerError as exc:
        config.stash[_LEFT_OUT] = str(exc)
        left_out = set(marked)
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if item not in left_out]


def _mark_rabbitmq(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``rabbitmq`` every test that uses the RabbitMQ node; deselect them when
    RabbitMQ is missing and ``ACELERYCTL_ALLOW_SKIP=1``."""
    marked = [i for i in items if _RABBITMQ_FIXTURES & set(getattr(i, "fixturenames", ()))]
    for item in marked:
        item.add_marker(pytest.mark.rabbitmq)
    if not marked or os.environ.get("ACELERYCTL_ALLOW_SKIP") != "1":
        return
    try:
        find_bindir()
    except RabbitMQServerError as exc:
        config.stash[_LEFT_OUT_RABBITMQ] = str(exc)
        left_out = set(marked)
        config.hook.pytest_deselected(items=marked)
        items[:] = [item for item in items if item not in left_out]


#: Fixtures that start a RabbitMQ node (the fault suite's is a node of its own).
_RABBITMQ_FIXTURES = {"rabbitmq_server", "fault_rabbitmq"}

#: Why the ``rabbitmq`` tests were deselected, if they were.
_LEFT_OUT_RABBITMQ = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say so when the ``postgres`` or ``rabbitmq`` tests were deselected."""
    for name, key in (("postgres", _LEFT_OUT), ("rabbitmq", _LEFT_OUT_RABBITMQ)):
        reason = terminalreporter.config.stash.get(key, None)
        if reason is not None:
            terminalreporter.write_line(
                f"{name} tests deselected (ACELERYCTL_ALLOW_SKIP=1): {reason}", yellow=True
            )


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of this session's own, started on first request and stopped
    at the end of the session (:class:`~tests._support.rabbitmq_server.RabbitMQServer`)."""
    try:
        server = RabbitMQServer.start()
    except RabbitMQServerError as exc:
        pytest.fail(
            f"{exc}. Set ACELERYCTL_ALLOW_SKIP=1 to leave the RabbitMQ tests out instead.",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_binaries() -> PostgresBinaries:
    """The PostgreSQL server binaries (:func:`find_binaries`); without them, the
    test fails (``ACELERYCTL_ALLOW_SKIP=1`` deselects such tests instead)."""
    try:
        return find_binaries()
    except PostgresServerError as exc:
        pytest.fail(
            f"{exc}. Set ACELERYCTL_ALLOW_SKIP=1 to leave the PostgreSQL tests out instead.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_server(postgres_binaries: PostgresBinaries) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the rest of the session, stopped at its end.

    Started on first request: by a test, or by :func:`django_db_modify_db_settings`
    for the ``pg`` alias. ``$ACELERYCTL_PG_BINDIR`` names the binaries' directory if
    they are not found on their own.
    """
    server = PostgresServer.start(binaries=postgres_binaries)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    request: pytest.FixtureRequest,
    django_db_modify_db_settings_parallel_suffix: None,
) -> None:
    """pytest-django's hook, run just before it creates the test databases: when a
    selected test uses the ``pg`` alias, start the server and point ``pg`` at it.

    pytest-django creates the test databases of the aliases the selected tests ask
    for; when no test asks for ``pg``, the alias keeps its refused port and is never
    connected to.
    """
    if any(_uses_pg_alias(item) for item in request.session.items):
        server: PostgresServer = request.getfixturevalue("postgres_server")
        pg_alias.point_at(server.port)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """pytest-django's ``django_db_setup``, plus, at the end of the session and before
    it drops the test databases: end the sessions other threads or processes left
    open on the ``pg`` test database (PostgreSQL refuses to drop a database in use)."""
    if not pg_alias.is_pointed():
        yield
        return
    from django.db import connections

    server: PostgresServer = request.getfixturevalue("postgres_server")
    yield
    name = connections[pg_alias.ALIAS].settings_dict["NAME"]
    connections[pg_alias.ALIAS].close()
    with server.connect(autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
