"""Waking relays on PostgreSQL with ``LISTEN``/``NOTIFY``; polling elsewhere.

A row that falls due soon (a durable dispatch stored after a refused publish, an
after-commit publish that failed) sends ``NOTIFY aceleryctl_outbox`` with the
write, delivered when its transaction commits. A relay between rounds waits on a
``LISTEN`` connection of its own instead of sleeping, so it takes the row as soon
as it is due, however long ``POLL_INTERVAL`` is. The poll stays as the bound of
every wait: a row written by a process that died before its after-commit publish
sends nothing, and a connection pooler in transaction mode (PgBouncer) does not
deliver notifications at all (the relay then simply polls).

Needs psycopg 3.2 or later (``Connection.notifies(timeout=...)``) or psycopg2;
with anything else, or on another database, :func:`open_listener` returns
``None`` and the relay polls.
"""

from __future__ import annotations

import contextlib
import logging
import select
from typing import Any, Final

__all__ = ["CHANNEL", "Listener", "notify", "open_listener"]

#: The notification channel.
CHANNEL: Final = "aceleryctl_outbox"

logger: Final = logging.getLogger("aceleryctl.relay")


def notify(alias: str) -> None:
    """Tell listening relays that a row of database ``alias`` falls due soon, on the
    calling thread's connection (delivered at commit). A no-op except on
    PostgreSQL.

    Raises:
        django.db.Error: what the database raises.
    """
    from django.db import connections

    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])


class Listener:
    """A ``LISTEN`` connection of one relay (its thread only). Close it when done."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._psycopg3 = hasattr(raw, "notifies") and callable(raw.notifies)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification; ``True`` if one came.

        Raises:
            Exception: what the driver raises when the connection broke (the relay
                then closes this listener and polls).
        """
        if self._psycopg3:
            return any(True for _ in self._raw.notifies(timeout=timeout, stop_after=1))
        ready, _, _ = select.select([self._raw], [], [], max(timeout, 0.0))
        if ready:
            self._raw.poll()
        found = bool(self._raw.notifies)
        self._raw.notifies.clear()
        return found

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):  # already broken
            self._raw.close()


def open_listener(alias: str) -> Listener | None:
    """A :class:`Listener` on database ``alias``, or ``None`` when that is not
    PostgreSQL, the driver cannot wait with a timeout, or ``LISTEN`` fails (all
    logged once at INFO by the caller's relay through this module's logger)."""
    from django.db import connections

    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        return None
    try:
        raw = wrapper.get_new_connection(wrapper.get_connection_params())
        raw.autocommit = True
        notifies = getattr(raw, "notifies", None)
        if callable(notifies) and not _takes_timeout(notifies):
            raw.close()
            logger.info("psycopg older than 3.2 cannot wait for NOTIFY: the relay polls")
            return None
        cursor = raw.cursor()
        cursor.execute(f"LISTEN {CHANNEL}")
        cursor.close()
    except Exception as exc:
        logger.info("the relay cannot LISTEN (%s): it polls", type(exc).__name__)
        return None
    return Listener(raw)


def _takes_timeout(notifies: Any) -> bool:
    import inspect

    try:
        return "timeout" in inspect.signature(notifies).parameters
    except (TypeError, ValueError):
        return False
