"""Live ``task.sent``: noted in microseconds when a dispatch reaches the broker,
sent in batches, and only to tasks someone is watching.

Why not one ``group_send`` per dispatch: a ``task.sent`` is worth sending only to
a browser already subscribed to that task, and almost none is (a browser learns a
task's id, and gets its subscription token, from the response of the request that
dispatched it). A ``group_send`` to an empty group still costs two Redis round
trips and about as much CPU as the dispatch itself, and under a burst of
dispatches the emitter's queue overflowed. So:

* on the dispatching thread, :meth:`SentEvents.add` appends ``(task id, task name,
  correlation id, time)`` to a bounded buffer, about a microsecond, and wakes the
  process's emitter when the buffer was idle;
* on the emitter's thread, :meth:`SentEvents._flush` waits :data:`BATCH_WINDOW`
  seconds for more, then takes up to
  :data:`BATCH_SIZE` entries at a time, asks the channel layer in one call per
  Redis shard which of their groups have a member (channels_redis: one Lua script
  counting live members, see :func:`watched_groups`), and builds and sends a
  :class:`~aceleryctl.events.TaskEvent` only for those.

Every entry of a batch is kept for late subscribers (:mod:`aceleryctl.live.recent`)
*before* that check. A subscriber joins its group first and reads the kept entries
second, so one that joined after the check still finds its ``task.sent`` (or
``task.deferred``); one that joined before gets the ``group_send``, and if it also
reads the entry, the subscription sends that order once.

Where the entries come from: a controller's dispatch listener
(:class:`LiveEventsListener`, attached to the default controller when events are
on), and ``after_task_publish`` (:func:`on_published`) for every other publish of
the process: Celery's own ``delay`` in a view or inside a task, or a controller
built without the listener. A publishing thread of a controller that has the
listener is marked when it starts, and the signal receiver skips its publishes,
so no dispatch is noted twice.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from celery import signals as celery_signals

from aceleryctl._once import guard, internal
from aceleryctl.breaker import StateChange
from aceleryctl.compat.channels import redis_groups_with_members
from aceleryctl.correlation import correlation_id, correlation_id_from
from aceleryctl.dispatch.listener import (
    DispatchEvent,
    DispatchOutcome,
    PoolChange,
    mark_loop_safe,
    publishing_noted,
)
from aceleryctl.events import group_name
from aceleryctl.live.recent import (
    DEFERRED,
    RELAYED,
    SENT,
    Entry,
    event_from_entry,
    recent_dispatches,
)

if TYPE_CHECKING:
    from aceleryctl.worker.emitter import GroupSender

__all__ = [
    "BATCH_SIZE",
    "LiveEventsListener",
    "SentEvents",
    "SentStatistics",
    "attach_live_events",
    "on_published",
    "install_web",
    "sent_events",
    "use_publish_signal",
    "watched_groups",
]

#: Entries looked up and sent per round on the emitter thread.
BATCH_SIZE: Final = 1_000
#: Seconds a flush waits, once woken, for more entries to join its batch: one
#: lookup then serves every dispatch of that window (about 100 of a bare
#: ``delay()`` loop, hundreds under a controller storm) instead of one each. Fewer,
#: larger lookups also wake the emitter thread less often, and every wake-up is a
#: GIL hand-off the event loop and the publishing thread feel (measured: 20 ms
#: windows of 500 cost 1.20x the CPU of events off per controller dispatch, 50 ms
#: windows of 1,000 with the one-argument lookup 1.09x).
BATCH_WINDOW: Final = 0.05
#: Entries waiting for the emitter thread, at most; beyond that new ones are dropped.
MAX_BUFFERED: Final = 20_000


@dataclass(frozen=True, slots=True)
class SentStatistics:
    """Counts of one process's live ``task.sent`` since it started.

    Attributes:
        buffered: entries waiting for the emitter thread now.
        noted: dispatches noted (listener or signal).
        sent: ``task.sent`` events handed to the layer (their group had a member).
        unwatched: entries skipped because nobody watched their task.
        dropped_full: entries dropped because the buffer held :data:`MAX_BUFFERED`.
        dropped_off: entries dropped because events are off or no layer exists.
        failed: entries lost to a failing or slow layer (logged once per kind).
    """

    buffered: int
    noted: int
    sent: int
    unwatched: int
    dropped_full: int
    dropped_off: int
    failed: int


class SentEvents:
    """The process's buffer of sent tasks and its batched sender.

    Thread-safety: :meth:`add` may be called from any thread at once (it relies on
    ``deque.append`` being atomic and takes no lock); the flush runs on the
    emitter's thread only.

    Args:
        max_buffered: entries that may wait; beyond that :meth:`add` drops.
        batch_size: entries looked up per round trip.
        window: seconds a woken flush waits for more entries (:data:`BATCH_WINDOW`);
            the emitter's other events wait behind it, so a ``task.sent`` and what
            a worker emits after it are at most this much later.
    """

    def __init__(
        self,
        *,
        max_buffered: int = MAX_BUFFERED,
        batch_size: int = BATCH_SIZE,
        window: float = BATCH_WINDOW,
    ) -> None:
        self._buffer: deque[Entry] = deque()
        self._max = max_buffered
        self._batch = batch_size
        self._window = window
        self._armed: Any = None  # the emitter a flush is pending on
        self._pid = os.getpid()
        self._counts = dict.fromkeys(
            ("noted", "sent", "unwatched", "dropped_full", "dropped_off", "failed"), 0
        )

    def add(
        self,
        task_id: str,
        task_name: object,
        correlation: str | None,
        kind: int = SENT,
        error_type: str | None = None,
        eta: object = None,
    ) -> None:
        """Note that ``task_id``'s first message reached the broker (``kind``
        :data:`SENT`, or :data:`RELAYED` when the outbox's relay published it), or
        that the dispatch was stored in the outbox instead (:data:`DEFERRED`, with
        the ``error_type`` that made it so); ``eta`` is the message's ``eta``
        header, if any (ISO 8601 text or a datetime). Never blocks on the network, never
        raises; about a microsecond unless it must wake the emitter (once per idle
        period)."""
        counts = self._counts
        counts["noted"] += 1  # racy under threads: a statistic, not an invariant
        buffer = self._buffer
        if len(buffer) >= self._max:
            counts["dropped_full"] += 1
            return
        name = task_name if isinstance(task_name, str) else None
        buffer.append((task_id, name, correlation, time.time(), kind, error_type, eta))
        armed = self._armed
        # Re-arm when no flush is pending, or when the one pending can no longer
        # run: its emitter was closed (a settings change), or this is a forked
        # child of the process that armed it.
        if armed is None or armed.closed or self._pid != os.getpid():
            self._arm()

    def _arm(self) -> None:
        emitter = _process_emitter()
        self._armed, self._pid = emitter, os.getpid()
        if emitter is None or not emitter.run_soon(self._flush):
            self._armed = None
            dropped = len(self._buffer)
            self._buffer.clear()
            self._counts["dropped_off"] += dropped

    def statistics(self) -> SentStatistics:
        """A snapshot of the counts (see :class:`SentStatistics`)."""
        return SentStatistics(buffered=len(self._buffer), **self._counts)

    async def _flush(self, layer: GroupSender | None) -> None:
        """Send what is buffered (emitter thread). Later :meth:`add` calls arm a
        new flush; this one drains at least what was there when its window ended."""
        if self._window > 0:
            await asyncio.sleep(self._window)
        self._armed = None
        buffer = self._buffer
        while buffer:
            batch = []
            for _ in range(min(len(buffer), self._batch)):
                batch.append(buffer.popleft())
            if layer is None:
                self._counts["dropped_off"] += len(batch)
                continue
            await self._send_batch(layer, batch)

    async def _send_batch(self, layer: GroupSender, batch: list[Entry]) -> None:
        timeout = _send_timeout()
        groups: dict[str, list[Entry]] = {}
        for entry in batch:
            try:
                groups.setdefault(group_name(entry[0]), []).append(entry)
            except ValueError:
                self._counts["unwatched"] += 1  # no browser can subscribe to it
        # Keep every entry for a late subscriber before asking who watches: a
        # subscriber joins its group first and reads what is kept second, so it
        # either joined before the look-up (and gets the event sent below) or reads
        # the entry kept here. Kept after the look-up, a subscriber joining during
        # it read nothing and got nothing. One that gets both sees one event: the
        # subscription drops an order it has already sent.
        _recent.keep(*(entry for entries in groups.values() for entry in entries))
        try:
            watched = await asyncio.wait_for(watched_groups(layer, list(groups)), timeout)
        except Exception as exc:
            self._counts["failed"] += len(groups)
            internal.warning(
                f"sent-lookup:{type(exc).__name__}",
                "aceleryctl could not look up who watches new tasks (%s): task.sent dropped",
                type(exc).__name__,
            )
            return
        self._counts["unwatched"] += sum(len(groups[g]) for g in groups) - sum(
            len(groups[g]) for g in watched
        )
        for group in watched:
            for entry in groups[group]:
                await self._send_one(layer, group, entry, timeout)

    async def _send_one(self, layer: GroupSender, group: str, entry: Entry, timeout: float) -> None:
        try:
            event = event_from_entry(entry)
            await asyncio.wait_for(layer.group_send(group, event.to_layer_message()), timeout)
        except Exception as exc:
            self._counts["failed"] += 1
            internal.warning(
                f"sent-send:{type(exc).__name__}",
                "aceleryctl could not send a task.sent event (%s)",
                type(exc).__name__,
            )
        else:
            self._counts["sent"] += 1


async def watched_groups(layer: Any, groups: Sequence[str]) -> list[str]:
    """The groups among ``groups`` that have a member now (emitter thread).

    For channels_redis' ``RedisChannelLayer``: one ``EVAL`` per shard counting each
    group's members that joined within ``group_expiry`` (what its ``group_send``
    delivers to), through
    :func:`aceleryctl.compat.channels.redis_groups_with_members` (it relies on
    channels_redis internals). Any other layer: every group, as nobody can tell.

    Raises:
        Exception: what the layer's Redis client raises.
    """
    watched = await redis_groups_with_members(layer, groups)
    return list(groups) if watched is None else watched


_sent = SentEvents()
_recent = recent_dispatches()


def sent_events() -> SentEvents:
    """The process's :class:`SentEvents`."""
    return _sent


def _process_emitter() -> Any:
    """The process's emitter when events are on, else ``None`` (imports the emitter
    on first use: a web process that never dispatches never loads it)."""
    from aceleryctl.worker.layer import default_emitter, ensure_default_factory

    return default_emitter() if ensure_default_factory() else None


def _send_timeout() -> float:
    from aceleryctl.worker.config import worker_config

    return worker_config().send_timeout


# -- where entries come from ---------------------------------------------------------------------


class LiveEventsListener:
    """A dispatch listener (:class:`~aceleryctl.dispatch.listener.DispatchListener`)
    noting every dispatch whose message reached the broker, for ``task.sent``, and
    every durable one stored in the outbox instead, for ``task.deferred``.

    Runs on the thread that settles the dispatch (the event loop's, for ``await
    controller.delay``); costs about a microsecond and never blocks or raises.
    Add it before the controller's first dispatch: it marks each publishing
    thread as it starts, so that :func:`on_published` leaves that thread's
    publishes to it.
    """

    __slots__ = ("_events",)

    #: The loop path's receivers call leaves its dispatches to this listener.
    notes_dispatches = True

    def __init__(self, events: SentEvents | None = None) -> None:
        self._events = _sent if events is None else events

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Note a sent dispatch, or a stored one (see the class docstring)."""
        if event.task_id is None or event.late:
            return
        eta = _recent.pop_eta(event.task_id) if _recent.has_etas else None
        if event.outcome is DispatchOutcome.SENT:
            kind = RELAYED if event.relayed else SENT
            self._events.add(event.task_id, event.task_name, event.correlation_id, kind, eta=eta)
        elif event.outcome is DispatchOutcome.STORED:
            self._events.add(
                event.task_id,
                event.task_name,
                event.correlation_id,
                DEFERRED,
                event.error_type,
                eta,
            )

    def pool_changed(self, change: PoolChange) -> None:
        """On a publishing thread as it starts: mark it as listened to."""
        if change is PoolChange.THREAD_STARTED:
            publishing_noted.on = True

    def breaker_changed(self, change: StateChange) -> None:
        """Nothing to do."""


def attach_live_events(controller: Any) -> LiveEventsListener | None:
    """Add a :class:`LiveEventsListener` to ``controller`` when live events are on
    (``ACELERYCTL["EVENTS_ENABLED"]``, the default); returns it, or ``None`` when
    events are off. Call it once per controller, where the controller is built.

    Raises:
        AttributeError: the controller has no ``add_listener``.
    """
    from aceleryctl.worker.config import worker_config

    if not worker_config().events:
        return None
    listener = LiveEventsListener()
    controller.add_listener(listener)
    return listener


_signal_lock = threading.Lock()


@guard("after_task_publish")
def on_published(
    sender: object = None, body: object = None, headers: object = None, **_: Any
) -> None:
    """``after_task_publish``: note a task's first message (a retry's message is
    announced by ``task.retried`` instead). Runs on the publishing thread; about
    a microsecond. On the publishing threads of controllers whose listener notes
    their dispatches, it only hands the message's ``eta`` (when it has one) to
    that listener."""
    if getattr(publishing_noted, "on", False):
        # Task protocol 2 (what the controller publishes): one look-up when no eta.
        if isinstance(headers, Mapping) and (eta := headers.get("eta")) is not None:
            task_id = headers.get("id")
            if task_id and not headers.get("retries"):
                _recent.note_eta(str(task_id), eta)
        return
    found: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
    if "id" not in found and isinstance(body, Mapping):  # task protocol 1
        found = body
    task_id = found.get("id")
    retries = found.get("retries")
    if not task_id or (isinstance(retries, int) and retries > 0):
        return
    eta = found.get("eta")
    _sent.add(
        str(task_id),
        found.get("task") or sender,
        correlation_id_from(found) or correlation_id.get(),
        eta=eta,
    )


# About a microsecond of bookkeeping, never blocking: fine on the event loop.
mark_loop_safe(on_published)


def use_publish_signal(on: bool) -> None:
    """Connect (or disconnect) :func:`on_published` to ``after_task_publish``.
    Idempotent, thread-safe."""
    with _signal_lock:
        uid = "aceleryctl.live.sent.on_published"
        if on:
            celery_signals.after_task_publish.connect(on_published, weak=False, dispatch_uid=uid)
        else:
            celery_signals.after_task_publish.disconnect(on_published, dispatch_uid=uid)


def install_web() -> None:
    """The web process's ``task.sent`` source for publishes no listening controller
    makes (Celery's own ``delay``, a controller built without the listener), at
    Django's ``ready()`` when events are on. Imports no worker module."""
    use_publish_signal(True)
