"""The Django database alias ``pg``: a real PostgreSQL test database beside SQLite.

Who uses what:

* ``tests/settings.py`` declares ``DATABASES["pg"] = database_settings()``. In the
  test session's own process the environment names no server, so the entry points
  at port 1 of 127.0.0.1 (nothing listens there: a connection is refused at once,
  never made to some other PostgreSQL) until :func:`point_at` fills in the port.
* ``tests/conftest.py`` starts a :class:`~tests._support.postgres_server.PostgresServer`
  when a collected test needs the alias, and calls :func:`point_at` before
  pytest-django creates the test databases (``test_aceleryctl`` on that server).
* A child process (an ASGI server, a Celery worker) reaches the same test database
  with the environment :func:`child_env` returns, called by the test while its
  database is set up; the child's settings module reads it with
  :func:`database_settings` (``tests/settings.py`` already does, under ``pg``).

This module imports neither Django nor psycopg at import time, so a settings module
can import it. Nothing here starts a thread; the functions raise only what their
docstrings say.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ALIAS",
    "DSN_ENV",
    "NAME_ENV",
    "PORT_ENV",
    "child_env",
    "database_settings",
    "is_pointed",
    "point_at",
]

#: The alias a test names: ``@pytest.mark.django_db(databases=["default", "pg"])``.
ALIAS = "pg"
HOST = "127.0.0.1"
USER = "postgres"
#: The database's NAME; the test database is Django's ``test_`` + this.
NAME = "aceleryctl"
#: Nothing listens on port 1: a connection made before the server started is refused.
UNSET_PORT = "1"

#: What a child process reads: the server's port, the (test) database's name, and a
#: libpq connection string for code that talks to PostgreSQL without Django.
PORT_ENV = "ACELERYCTL_PG_PORT"
NAME_ENV = "ACELERYCTL_PG_NAME"
DSN_ENV = "ACELERYCTL_PG_DSN"


def database_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ``DATABASES`` entry for the PostgreSQL database named by ``environ``
    (default: ``os.environ``; see :func:`child_env`); without those variables, the
    placeholder that :func:`point_at` completes in the test session's process."""
    env = os.environ if environ is None else environ
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": HOST,
        "PORT": env.get(PORT_ENV, UNSET_PORT),
        "NAME": env.get(NAME_ENV, NAME),
        "USER": USER,
        "PASSWORD": "",
        # Seconds; libpq's minimum is 2.
        "OPTIONS": {"connect_timeout": 5},
    }


def _entries() -> list[dict[str, Any]]:
    """Every dict that holds the alias's settings: ``settings.DATABASES``' entry and
    the connection handler's (the same object unless a test swapped DATABASES)."""
    from django.conf import settings
    from django.db import connections

    entries: list[dict[str, Any]] = [settings.DATABASES[ALIAS]]
    handled = connections.settings[ALIAS]
    if handled is not entries[0]:
        entries.append(handled)
    return entries


def point_at(port: int) -> None:
    """Point the ``pg`` alias at the PostgreSQL server listening on 127.0.0.1:``port``.

    Call it before the test databases are created (pytest-django's
    ``django_db_modify_db_settings``). Changes the settings dicts in place, so a
    ``connections["pg"]`` made earlier follows too. Runs on the calling thread.
    """
    for entry in _entries():
        entry["HOST"] = HOST
        entry["PORT"] = str(port)


def is_pointed() -> bool:
    """Whether :func:`point_at` ran in this process (or the environment named a port)."""
    return all(entry["PORT"] != UNSET_PORT for entry in _entries())


def child_env() -> dict[str, str]:
    """The environment a child process needs to reach this session's ``pg`` test
    database: :data:`PORT_ENV`, :data:`NAME_ENV` (the test database's name) and
    :data:`DSN_ENV`.

    Call it from a test that uses the alias (its test database exists, and the
    alias's NAME is then the test database's). Pass the result to the child
    (``spawn(..., env=...)``); its settings module reads it with
    :func:`database_settings`.

    Raises:
        RuntimeError: the alias points at no server (no collected test requested
            the ``pg`` database, so none was started).
    """
    from django.db import connections

    entry = connections[ALIAS].settings_dict
    if not is_pointed():
        raise RuntimeError(
            f"the {ALIAS!r} database alias points at no server: call child_env() from a "
            f"test marked django_db(databases=[..., {ALIAS!r}])"
        )
    port, name = str(entry["PORT"]), str(entry["NAME"])
    return {
        PORT_ENV: port,
        NAME_ENV: name,
        DSN_ENV: f"host={entry['HOST']} port={port} user={entry['USER']} dbname={name}",
    }
