"""Dispatch listeners: a frozen event for every dispatch outcome and pool change.

The engine hands each listener a :class:`DispatchEvent` once a dispatch's
outcome is known, and a :class:`PoolChange` when the publish pool starts or
stops a thread or refuses work; breaker transitions reach listeners as the
breaker's own :class:`~aceleryctl.breaker.StateChange`. Statistics snapshots,
live ``task.sent`` events, metrics and traces are all built from these events.

A listener must be quick and must not block: it runs on the thread that settles
the dispatch (the caller's event-loop thread for ``await controller.delay``, the
calling thread for the sync facade, a publishing thread for an on-commit
dispatch). A listener never slows or breaks a dispatch: an exception it raises
is logged once per listener and kind of exception, and the dispatch goes on.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from aceleryctl._clock import Clock
from aceleryctl.breaker import StateChange
from aceleryctl.dispatch.record import Attempt

__all__ = [
    "DispatchEvent",
    "DispatchListener",
    "Listeners",
    "DispatchOutcome",
    "PoolChange",
    "event_of",
    "is_loop_safe",
    "mark_loop_safe",
    "publishing_noted",
]

logger = logging.getLogger("aceleryctl.listeners")

#: ``on`` is true on a thread while it publishes for a controller that has a
#: listener noting every dispatch itself (``notes_dispatches = True``, as the live
#: events' listener has): a publish-signal receiver that notes publishes (live
#: ``task.sent``) skips those, so that none is noted twice. Publishing threads of
#: such controllers keep it on; the loop path sets it around its receivers' call.
publishing_noted = threading.local()

_loop_safe: set[Any] = set()


def mark_loop_safe(receiver: Callable[..., Any]) -> Callable[..., Any]:
    """Declare a ``before_task_publish`` / ``after_task_publish`` receiver safe to run
    on the event loop's thread (it never blocks, never touches the ORM), so that its
    presence does not keep coroutine dispatches off the loop path (``LOOP_PUBLISH``).
    Returns ``receiver``; usable as a decorator. Thread-safe enough for import time."""
    _loop_safe.add(receiver)
    return receiver


def is_loop_safe(receiver: Any) -> bool:
    """Whether :func:`mark_loop_safe` marked ``receiver``."""
    try:
        return receiver in _loop_safe
    except TypeError:  # unhashable: never marked
        return False


class DispatchOutcome(enum.Enum):
    """What is known about a dispatch's message once the call is settled."""

    #: The broker holds the message (Redis replied to the write).
    SENT = "sent"
    #: Nothing reached the broker; the dispatch may be retried as it is.
    NOT_SENT = "not_sent"
    #: The message may or may not be in the broker (deadline passed mid-publish,
    #: a connection broke after the write, a dispatcher callable raised).
    UNKNOWN = "unknown"
    #: A durable dispatch the broker did not take was stored in the outbox: the
    #: relay will publish it (a second event, after a failed attempt's own).
    STORED = "stored"
    #: The relay gave up on a stored dispatch (undecodable, unknown task, or out
    #: of attempts); the row stays in the outbox, dead-lettered.
    DEAD_LETTERED = "dead_lettered"


class DispatchEvent(NamedTuple):
    """One settled dispatch, as listeners see it (immutable: a named tuple, which
    costs a quarter of a frozen dataclass to build, on the settling thread).

    Times are readings of the engine's monotonic clock, in seconds; only their
    differences mean anything. The dispatches a publishing thread published
    together, in one wire operation (one pipelined batch, one confirm round), carry
    the same ``started_at`` and ``finished_at`` readings: listeners that measure
    operations rather than dispatches tell them apart by these two values.

    Attributes:
        task_name: the task's registered name (or a description of a canvas or callable).
        task_id: the id the message was (or would have been) sent under; ``None``
            for a zero-argument callable, whose id is not known.
        method: the controller method that made it (``"delay"``, ``"send_task"``...).
        kind: ``"task"``, ``"signature"``, ``"canvas"`` or ``"callable"``.
        queue: the queue the message was routed to when the wire knows it, else
            the ``queue`` option as given, else ``None``.
        path: the wire that handled it (``"redis"``, ``"stock"``...), ``None`` when
            it was refused before reaching one.
        outcome: see :class:`DispatchOutcome`.
        error_type: the class name of the exception the caller received, ``None``
            on success.
        correlation_id: the correlation id the message carries, if any.
        queued_at: when the engine accepted the dispatch.
        started_at: when a publishing thread started on it, ``None`` if none did.
        finished_at: when the outcome became known to the engine.
        on_commit: ``True`` for a dispatch published after a transaction commit.
        late: the publish ended after its caller was told
            :class:`~aceleryctl.exceptions.DispatchTimeout`; ``outcome`` is how it
            ended (this dispatch's second event).
        relayed: the outbox's relay published (or gave up on) a stored dispatch.
    """

    task_name: str
    task_id: str | None
    method: str
    kind: str
    queue: str | None
    path: str | None
    outcome: DispatchOutcome
    error_type: str | None
    correlation_id: str | None
    queued_at: float
    started_at: float | None
    finished_at: float
    on_commit: bool = False
    late: bool = False
    relayed: bool = False

    @property
    def duration(self) -> float | None:
        """Seconds the publish itself took, ``None`` when it never started."""
        if self.started_at is None:
            return None
        return max(self.finished_at - self.started_at, 0.0)


class PoolChange(enum.Enum):
    """A change of the publish pool that listeners are told about."""

    THREAD_STARTED = "thread_started"
    THREAD_STOPPED = "thread_stopped"
    #: A dispatch was refused because the wait queue was full or no thread was
    #: free within its deadline (the caller got ``DispatchOverloaded``).
    SATURATED = "saturated"
    CLOSED = "closed"


def event_of(
    attempt: Attempt,
    outcome: DispatchOutcome,
    error_type: str | None,
    late: bool,
    clock: Clock,
) -> DispatchEvent:
    """The event listeners get for ``attempt`` settled with ``outcome`` (``clock``
    read only when the attempt never finished a publish)."""
    dispatch = attempt.dispatch
    return DispatchEvent(
        dispatch.task_name,
        attempt.task_id,
        dispatch.method,
        dispatch.kind.value,
        attempt.queue or dispatch.queue,
        attempt.path,
        outcome,
        error_type,
        dispatch.correlation_id,
        attempt.queued_at,
        attempt.started_at or None,
        attempt.finished_at or clock(),
        attempt.on_commit,
        late,
        attempt.relayed,
    )


@runtime_checkable
class DispatchListener(Protocol):
    """What the engine calls; implement the three methods (they may do nothing).

    Every method must return quickly, never block and never raise on purpose:
    see the module docstring for the threads they run on.
    """

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """One dispatch's outcome is known."""

    def pool_changed(self, change: PoolChange) -> None:
        """The publish pool changed."""

    def breaker_changed(self, change: StateChange) -> None:
        """The controller's circuit breaker moved to another state."""


class Listeners:
    """An immutable list of listeners, called in order, each failure logged once.

    Thread-safety: calling is safe from any thread; the set of listeners is fixed
    at construction (the engine builds a new one to add or remove listeners).
    """

    __slots__ = ("_items", "_lock", "_reported")

    def __init__(self, items: Iterable[DispatchListener] = ()) -> None:
        self._items: tuple[DispatchListener, ...] = tuple(items)
        for item in self._items:
            if not isinstance(item, DispatchListener):
                raise TypeError(
                    f"a dispatch listener needs dispatch_settled, pool_changed and "
                    f"breaker_changed methods; {type(item).__name__} lacks some"
                )
        self._lock = threading.Lock()
        self._reported: set[tuple[int, type[BaseException]]] = set()

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def added(self, listener: DispatchListener) -> Listeners:
        """A new list with ``listener`` appended."""
        return Listeners((*self._items, listener))

    def removed(self, listener: DispatchListener) -> Listeners:
        """A new list without ``listener`` (compared by identity)."""
        return Listeners(item for item in self._items if item is not listener)

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Tell every listener; a raising listener is logged once and skipped."""
        for item in self._items:
            try:
                item.dispatch_settled(event)
            except Exception as exc:
                self._report(item, exc)

    def pool_changed(self, change: PoolChange) -> None:
        """Tell every listener about a pool change."""
        for item in self._items:
            try:
                item.pool_changed(change)
            except Exception as exc:
                self._report(item, exc)

    def breaker_changed(self, change: StateChange) -> None:
        """Tell every listener about a breaker transition."""
        for item in self._items:
            try:
                item.breaker_changed(change)
            except Exception as exc:
                self._report(item, exc)

    def _report(self, item: DispatchListener, exc: Exception) -> None:
        key = (id(item), type(exc))
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        logger.error(
            "dispatch listener %r raised %s: %s (logged once; the dispatch was not affected)",
            item,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
