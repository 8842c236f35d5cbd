"""The thread that settles outbox rows after their after-commit publish.

A publish that reached the broker deletes its row; one that failed records the
attempt and when the relay may try again. Those writes happen here, on one
daemon thread per process with its own database connections, batched (one
``DELETE ... WHERE id IN (...)`` per alias per round), so that neither the
committing thread nor a publishing thread ever waits on the database. The
connections are closed when the thread has been idle for :data:`IDLE_CLOSE`
seconds.

A write that fails (database down) is logged once per kind and dropped: the row
stays pending, and the relay publishes it again after the hand-off grace (the
run-once guard keeps the task from running twice).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from aceleryctl._once import internal

__all__ = ["RowFailure", "RowWriter", "row_writer"]

#: Seconds without work after which the thread closes its database connections.
IDLE_CLOSE: Final = 2.0
#: Rows deleted per statement, at most.
DELETE_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class RowFailure:
    """A failed after-commit publish of one row: what to record on it.

    Attributes:
        row_id: the row's primary key.
        error: the redacted error text to store.
        retry_in: seconds before the relay may try it.
    """

    row_id: int
    error: str
    retry_in: float


class RowWriter:
    """Deletes and updates outbox rows on its own thread (module docstring).

    Thread-safety: :meth:`sent`, :meth:`failed` and :meth:`flush` may be called
    from any thread; a forked child starts with an empty writer of its own.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._work: deque[tuple[str, int | RowFailure]] = deque()
        self._busy = 0  # items taken off the queue and not yet written
        self._thread: threading.Thread | None = None

    def sent(self, alias: str, row_id: int) -> None:
        """Delete row ``row_id`` of database ``alias`` soon. Never blocks on the database."""
        self._put(alias, row_id)

    def failed(self, alias: str, failure: RowFailure) -> None:
        """Record ``failure`` on its row soon. Never blocks on the database."""
        self._put(alias, failure)

    def _put(self, alias: str, item: int | RowFailure) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            self._work.append((alias, item))
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:  # first use in this process
                    atexit.register(self.flush_at_exit)
                self._thread = threading.Thread(
                    target=self._run, name="aceleryctl-outbox-rows", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until every queued write is done."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._work and not self._busy, timeout)

    def flush_at_exit(self) -> None:
        """At interpreter exit: finish queued writes for up to 2 seconds."""
        if self._pid == os.getpid() and self._thread is not None:
            self.flush(2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._work and not self._cond.wait_for(lambda: bool(self._work), IDLE_CLOSE):
                    _close_connections()
                    self._cond.wait_for(lambda: bool(self._work))
                batch = list(self._work)
                self._work.clear()
                self._busy = len(batch)
            try:
                _write(batch)
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()


def _write(batch: list[tuple[str, int | RowFailure]]) -> None:
    from django.utils import timezone

    from aceleryctl.outbox import store

    deletes: dict[str, list[int]] = {}
    for alias, item in batch:
        if isinstance(item, int):
            deletes.setdefault(alias, []).append(item)
    now = timezone.now()
    for alias, ids in deletes.items():
        for start in range(0, len(ids), DELETE_BATCH):
            _attempt("delete", store.delete, ids[start : start + DELETE_BATCH], alias)
    for alias, item in batch:
        if isinstance(item, RowFailure):
            _attempt(
                "update",
                lambda a=alias, f=item: store.failed(
                    [f.row_id], a, error=f.error, now=now, retry_in=f.retry_in
                ),
            )


def _attempt(kind: str, fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception as exc:
        internal.warning(
            f"outbox-rows:{kind}:{type(exc).__name__}",
            "aceleryctl could not %s an outbox row after its publish (%s); the relay will "
            "publish it again after the hand-off grace",
            kind,
            type(exc).__name__,
        )


def _close_connections() -> None:
    try:
        from django.db import connections

        for connection in connections.all(initialized_only=True):
            connection.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass


_writer = RowWriter()


def row_writer() -> RowWriter:
    """The process's :class:`RowWriter`."""
    return _writer
