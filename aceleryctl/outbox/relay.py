"""The relay: publishes the outbox's due rows through a controller, in batches.

One round (:meth:`Relay.run_once`), on the calling thread, in one transaction of
the outbox's database:

1. claim up to ``BATCH_SIZE`` pending rows whose ``available_at`` has come, oldest
   first, with ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it
   (PostgreSQL, MySQL 8, Oracle): rows claimed by another relay are skipped, so
   several relays share the work and no row is published by two of them at once.
   SQLite has no row locks: run one relay there; its round takes SQLite's write
   lock first, so that a concurrent writer cannot make it fail after publishing;
2. decode each row; one that cannot be decoded, or names a task the relay's app
   does not know, is dead-lettered at once with a clear error;
3. publish the rest together through the controller's engine (its deadline,
   batching and breaker; :meth:`~aceleryctl.dispatch.engine.DispatchEngine.run_many_sync`);
4. delete the rows the broker took; give a failed or unknown one another
   attempt after an exponential backoff, or dead-letter it after
   ``MAX_ATTEMPTS``; leave rows the breaker refused untouched (no attempt spent).

:meth:`Relay.run` repeats rounds until stopped: at once while rounds come back
full, after the breaker's ``retry_after`` while it is open, else after
``POLL_INTERVAL`` or when the next row falls due, whichever is sooner; on
PostgreSQL also as soon as a ``NOTIFY`` says a row falls due
(:mod:`aceleryctl.outbox.notify`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from aceleryctl.dispatch.controller import AsyncCeleryController
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.record import Dispatch
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError, TaskSerializationError
from aceleryctl.outbox.config import OutboxSettings, outbox_settings

if TYPE_CHECKING:
    from aceleryctl.outbox.store import ClaimedRow

__all__ = ["Relay", "RelayRound"]

logger: Final = logging.getLogger("aceleryctl.relay")
#: Longest single wait on a LISTEN connection, in seconds (how soon a stop is seen).
LISTEN_SLICE: Final = 0.5
#: Seconds between two heartbeats while rounds come back full (any other round,
#: after which the relay may wait, writes one: its totals are then current).
HEARTBEAT_EVERY: Final = 1.0


@dataclass(frozen=True, slots=True)
class RelayRound:
    """What one round did.

    Attributes:
        claimed: rows taken from the outbox.
        published: rows whose message the broker took (deleted).
        retried: rows that failed or ended unknown and wait for another attempt.
        dead_lettered: rows given up on (undecodable, unknown task, or out of attempts).
        refused: rows left untouched because the breaker was open.
        retry_after: seconds until the breaker lets a call through (0.0 unless refused).
    """

    claimed: int = 0
    published: int = 0
    retried: int = 0
    dead_lettered: int = 0
    refused: int = 0
    retry_after: float = 0.0


class Relay:
    """Publishes outbox rows (module docstring). One relay per thread; any number of
    relays per database on PostgreSQL.

    Args:
        controller: publishes the rows (its app must know the tasks they name), or
            a function returning it, called once per round (the in-process relay
            follows the default controller through settings changes).
        settings: the outbox settings; default ``ACELERYCTL["OUTBOX"]``.
        database: the outbox's database alias; default ``settings.database``.
        name: how the relay is reported in ``health()``; default ``host:pid``.
        now: returns the current aware datetime (``django.utils.timezone.now``).
    """

    def __init__(
        self,
        controller: AsyncCeleryController | Callable[[], AsyncCeleryController],
        *,
        settings: OutboxSettings | None = None,
        database: str | None = None,
        name: str | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        from django.utils import timezone

        self._controller: Callable[[], AsyncCeleryController] = (
            (lambda: controller) if isinstance(controller, AsyncCeleryController) else controller
        )
        self._conf = settings if settings is not None else outbox_settings()
        self._alias = database or self._conf.database
        self._name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._now = now or timezone.now
        self._totals = {"published": 0, "dead_lettered": 0}
        self._last_heartbeat = -HEARTBEAT_EVERY  # time.monotonic() of the last one

    @property
    def database(self) -> str:
        """The database alias the relay reads."""
        return self._alias

    def run_once(self) -> RelayRound:
        """Claim, publish and settle one batch of due rows (module docstring).
        Blocks the calling thread up to about the controller's deadline.

        Raises:
            django.db.Error: the database failed (the round's changes roll back;
                rows stay pending).
        """
        from django.db import transaction

        with transaction.atomic(using=self._alias):
            rows = self._claim()
            result = self._publish(rows) if rows else RelayRound()
        self._totals["published"] += result.published
        self._totals["dead_lettered"] += result.dead_lettered
        beat = time.monotonic()
        busy = result.claimed >= self._conf.batch_size  # another round follows at once
        if not busy or beat - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._last_heartbeat = beat
            self._heartbeat()
        return result

    def run(self, stop: threading.Event, *, until_idle: bool = False) -> dict[str, int]:
        """Run rounds until ``stop`` is set (or, with ``until_idle``, until a round
        finds nothing due). A round that raises is logged and retried after the
        poll interval. Returns the totals published and dead-lettered."""
        from aceleryctl.outbox.notify import open_listener

        listener = open_listener(self._alias)
        try:
            self._loop(stop, until_idle, listener)
        finally:
            if listener is not None:
                listener.close()
        return dict(self._totals)

    def _loop(self, stop: threading.Event, until_idle: bool, listener: Any) -> None:
        while not stop.is_set():
            try:
                result = self.run_once()
            except Exception:
                logger.exception("aceleryctl relay round failed; retrying")
                stop.wait(self._conf.poll_interval)
                continue
            if result.claimed:
                logger.info(
                    "relay %s: %d published, %d to retry, %d dead-lettered, %d refused",
                    self._name,
                    result.published,
                    result.retried,
                    result.dead_lettered,
                    result.refused,
                )
            if result.refused:
                stop.wait(max(result.retry_after, 0.05))
            elif result.claimed >= self._conf.batch_size:
                continue
            elif until_idle and not result.claimed:
                break
            elif listener is None:
                stop.wait(self._idle_wait())
            else:
                try:
                    self._listen(stop, listener, self._idle_wait())
                except Exception as exc:  # the LISTEN connection broke: poll from now on
                    logger.warning("relay %s stops listening (%s); it polls", self._name, exc)
                    listener.close()
                    listener = None

    # -- a round -------------------------------------------------------------------

    def _claim(self) -> list[ClaimedRow]:
        from django.db import connections

        from aceleryctl.outbox.models import OutboxMessage
        from aceleryctl.outbox.store import ClaimedRow

        connection = connections[self._alias]
        features = connection.features
        if connection.vendor == "sqlite":
            _take_sqlite_write_lock(self._alias)
        due = (
            OutboxMessage.objects.using(self._alias)
            .filter(state=OutboxMessage.State.PENDING, available_at__lte=self._now())
            .order_by("available_at", "pk")
            .values_list(*ClaimedRow.COLUMNS)
        )
        if features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        elif features.has_select_for_update:
            due = due.select_for_update()
        return [ClaimedRow(*values) for values in due[: self._conf.batch_size]]

    def _publish(self, rows: list[ClaimedRow]) -> RelayRound:
        from aceleryctl.outbox import store

        controller = self._controller()
        app = controller.app
        now = self._now()
        counts = {"published": 0, "retried": 0, "dead_lettered": 0, "refused": 0}
        retry_after = 0.0
        engine = controller._engine
        loaded: list[tuple[ClaimedRow, Dispatch]] = []
        for row in rows:
            try:
                loaded.append((row, store.decode(row, app)))
            except store.UndecodableRow as exc:
                self._dead(engine, row, None, str(exc), now)
                counts["dead_lettered"] += 1
        outcomes = engine.run_many_sync([d for _, d in loaded], relayed=True)
        sent: list[int] = []
        for (row, dispatch), outcome in zip(loaded, outcomes, strict=True):
            if not isinstance(outcome, TaskDispatchError):
                sent.append(int(row.pk))
            elif isinstance(outcome, CircuitOpenError):
                counts["refused"] += 1
                retry_after = max(retry_after, outcome.retry_after)
            elif isinstance(outcome, TaskSerializationError):
                self._dead(engine, row, dispatch, store.describe_error(outcome), now)
                counts["dead_lettered"] += 1
            elif row.attempts + 1 >= self._conf.max_attempts:
                row.attempts += 1
                self._dead(engine, row, dispatch, store.describe_error(outcome), now)
                counts["dead_lettered"] += 1
            else:
                self._retry(row, store.describe_error(outcome), now)
                counts["retried"] += 1
        if sent:
            store.delete(sent, self._alias)
            counts["published"] = len(sent)
        return RelayRound(claimed=len(rows), retry_after=retry_after, **counts)

    def _dead(
        self,
        engine: DispatchEngine,
        row: ClaimedRow,
        dispatch: Dispatch | None,
        error: str,
        now: datetime,
    ) -> None:
        from aceleryctl.outbox import store
        from aceleryctl.outbox.models import OutboxMessage
        from aceleryctl.outbox.outcomes import tell_dead_lettered

        store.save_attempt(
            row.pk,
            self._alias,
            state=OutboxMessage.State.DEAD,
            last_error=error,
            last_attempt_at=now,
            attempts=row.attempts,
        )
        logger.error(
            "aceleryctl relay dead-lettered outbox row %s (%s[%s]) after %d attempts: %s",
            row.pk,
            row.task_name,
            row.task_id,
            row.attempts,
            error,
        )
        tell_dead_lettered(engine, row.task_name, row.task_id, dispatch)

    def _retry(self, row: ClaimedRow, error: str, now: datetime) -> None:
        from aceleryctl.outbox import store

        row.attempts += 1
        store.save_attempt(
            row.pk,
            self._alias,
            attempts=row.attempts,
            last_error=error,
            last_attempt_at=now,
            available_at=now + timedelta(seconds=self._conf.backoff(row.attempts)),
        )

    # -- between rounds ------------------------------------------------------------

    @staticmethod
    def _listen(stop: threading.Event, listener: Any, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a notification, in slices of at most
        :data:`LISTEN_SLICE` so that ``stop`` is seen promptly."""
        end = time.monotonic() + timeout
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or listener.wait(min(left, LISTEN_SLICE)):
                return

    def _idle_wait(self) -> float:
        """Seconds until the next pending row falls due, at most the poll interval."""
        from django.db.models import Min

        from aceleryctl.outbox.models import OutboxMessage

        poll = self._conf.poll_interval
        try:
            due = (
                OutboxMessage.objects.using(self._alias)
                .filter(state=OutboxMessage.State.PENDING)
                .aggregate(first=Min("available_at"))["first"]
            )
        except Exception:
            return poll
        if due is None:
            return poll
        wait: float = (due - self._now()).total_seconds()
        return min(max(wait, 0.01), poll)

    def _heartbeat(self) -> None:
        from aceleryctl.outbox.models import RelayHeartbeat

        try:
            RelayHeartbeat.objects.using(self._alias).update_or_create(
                name=self._name,
                defaults={
                    "last_round_at": self._now(),
                    "published": self._totals["published"],
                    "dead_lettered": self._totals["dead_lettered"],
                },
            )
        except Exception as exc:  # the heartbeat is advisory
            logger.warning("aceleryctl relay could not record its heartbeat: %s", exc)


def _take_sqlite_write_lock(alias: str) -> None:
    """Make the round's transaction SQLite's writer before it claims anything.

    SQLite has no row locks, and a transaction that has read cannot wait for the
    write lock: when another connection (a web request) is writing, its first
    write fails at once with "database is locked", whatever the busy timeout. A
    round that claimed with a read would publish its batch, fail to delete it, roll
    back, and publish it again next round. A write as the transaction's first
    statement waits for the lock instead (the connection's busy timeout), before
    anything is claimed or published; the round then holds it until it commits.
    An ``UPDATE`` that matches no row and changes nothing takes the lock all the same.
    """
    from django.db.models import F

    from aceleryctl.outbox.models import OutboxMessage

    OutboxMessage.objects.using(alias).filter(pk=0).update(state=F("state"))
