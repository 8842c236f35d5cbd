"""What a web process remembers of the tasks it just dispatched, for late subscribers.

A page learns a task's id, and its subscription token, from the response of the
request that dispatched it, so it subscribes after the dispatch: its ``task.sent``
(or ``task.deferred``) has usually gone by, unwatched and never sent
(:mod:`aceleryctl.live.sent`). The result backend knows nothing of a task no
worker has started, so the snapshot was empty and the page could not tell a task
due in an hour (a ``countdown``) from one no worker has taken.

:class:`RecentDispatches` keeps the last :data:`MAX_RECENT` such entries for
:data:`RECENT_SECONDS` seconds; the websocket consumer merges them into a new
subscriber's snapshot. They are the raw buffered entries (a tuple each), turned
into events only when someone subscribes, so keeping one costs a dict insert on
the emitter thread. Only a subscriber served by the process that dispatched the
task sees them: with several web processes, the others know nothing of it.

It also carries each dispatch's ``eta`` from Celery's ``after_task_publish``
(which sees the message's headers) to the controller's dispatch listener (which
does not): :meth:`RecentDispatches.note_eta` and :meth:`RecentDispatches.pop_eta`.

Thread-safety: every method may be called from any thread (one lock, held for a
dict operation or two).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from aceleryctl.events import MAX_NAME_LENGTH, TaskEvent, clip_text, order_key

__all__ = [
    "DEFERRED",
    "DEFERRED_MESSAGE",
    "MAX_RECENT",
    "RECENT_SECONDS",
    "RELAYED",
    "SENT",
    "Entry",
    "RecentDispatches",
    "event_from_entry",
    "normalize_eta",
    "recent_dispatches",
]

#: Entries (and eta notes) kept, at most; the oldest go first.
MAX_RECENT: Final = 4_096
#: Seconds an entry is kept for a late subscriber.
RECENT_SECONDS: Final = 120.0

#: What an entry announces: the first message reached the broker (``task.sent``),
#: the outbox's relay published it (``task.sent`` with seq 1, after a
#: ``task.deferred``), or it was stored in the outbox (``task.deferred``).
SENT, RELAYED, DEFERRED = 0, 1, 2
#: The ``error_message`` of every ``task.deferred``.
DEFERRED_MESSAGE: Final = "stored in the outbox, waiting for the broker"

#: One buffered entry: task id, name, correlation id, ``time.time()``, kind
#: (:data:`SENT`, :data:`RELAYED` or :data:`DEFERRED`), when deferred the type of
#: the error that made it so, and the message's ``eta`` header as published.
Entry = tuple[str, str | None, str | None, float, int, str | None, object]


def normalize_eta(value: object) -> str | None:
    """An ``eta`` header (ISO 8601 text, or a datetime) as ISO 8601 in UTC, or
    ``None`` when absent or unreadable (a naive time is taken as UTC). Pure."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def event_from_entry(entry: Entry) -> TaskEvent:
    """The ``task.sent`` or ``task.deferred`` an entry announces.

    Raises:
        ValueError: the entry cannot make a valid event (a task id too long).
    """
    task_id, name, correlation, at, kind, error_type, eta = entry
    deferred = kind == DEFERRED
    return TaskEvent(
        type="task.deferred" if deferred else "task.sent",
        task_id=task_id,
        task_name=None if name is None else clip_text(name, MAX_NAME_LENGTH),
        state="PENDING",
        timestamp=at,
        order=order_key(0, 0, 1 if kind == RELAYED else 0),
        correlation_id=correlation,
        error_type=error_type if deferred else None,
        error_message=DEFERRED_MESSAGE if deferred else None,
        eta=normalize_eta(eta),
    )


class RecentDispatches:
    """The process's recent dispatches and eta notes (module docstring).

    Args:
        size: entries, and separately eta notes, kept at most.
        ttl: seconds an entry is kept.
        clock: ``time.monotonic`` by default (seconds).
    """

    def __init__(
        self,
        *,
        size: int = MAX_RECENT,
        ttl: float = RECENT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        # Ordered by insertion: the oldest is evicted in O(1) (a plain dict's first
        # key, after many deletions at its front, is found by a scan).
        self._entries: OrderedDict[str, tuple[tuple[float, Entry], ...]] = OrderedDict()
        self._etas: OrderedDict[str, object] = OrderedDict()
        self._size = size
        self._ttl = ttl
        self._clock = clock

    @property
    def has_etas(self) -> bool:
        """Whether any eta note waits (read without the lock: a hint for a fast path)."""
        return bool(self._etas)

    def note_eta(self, task_id: str, eta: object) -> None:
        """Remember the ``eta`` header of ``task_id``'s message (publishing thread)."""
        with self._lock:
            self._etas[task_id] = eta
            if len(self._etas) > self._size:
                self._etas.popitem(last=False)

    def pop_eta(self, task_id: str) -> object:
        """The eta noted for ``task_id`` (forgotten now), or ``None``."""
        with self._lock:
            return self._etas.pop(task_id, None)

    def keep(self, *entries: Entry) -> None:
        """Keep ``entries`` for a late subscriber (emitter thread): one lock and one
        clock reading for a whole batch; an entry is a tuple in a tuple (a second
        entry of the same task, stored then relayed, is rare)."""
        now = self._clock()
        stored = self._entries
        size = self._size
        with self._lock:
            for entry in entries:
                task_id = entry[0]
                kept = stored.get(task_id)
                if kept is None:
                    stored[task_id] = ((now, entry),)
                    if len(stored) > size:
                        stored.popitem(last=False)
                else:
                    stored[task_id] = (*kept, (now, entry))

    def events(self, task_id: str) -> list[TaskEvent]:
        """The events of ``task_id``'s entries kept no longer than the ttl ago, oldest
        first (an entry that cannot make an event is left out)."""
        with self._lock:
            kept = self._entries.get(task_id, ())
        horizon = self._clock() - self._ttl
        found = []
        for at, entry in kept:
            if at >= horizon:
                with contextlib.suppress(ValueError):
                    found.append(event_from_entry(entry))
        return found


_recent = RecentDispatches()


def recent_dispatches() -> RecentDispatches:
    """The process's :class:`RecentDispatches`."""
    return _recent
