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

A subscriber that joins between that check and the moment a ``group_send``
would have reached it misses ``task.sent`` exactly as it would have missed the
``group_send`` itself; its snapshot, read after joining, shows what the result
backend knows.

Where the entries come from: the web process's dispatch listener
(:class:`LiveEventsListener`, attached to the default controller when events are
on), and ``after_task_publish`` (:func:`on_published`) in a worker, for tasks
dispatched from inside tasks with Celery's own ``delay``, and in a web process
whose controller does not call listeners yet.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from celery import signals as celery_signals

from aceleryctl._once import guard, internal
from aceleryctl.breaker import StateChange
from aceleryctl.correlation import correlation_id, correlation_id_from
from aceleryctl.dispatch.listener import DispatchEvent, DispatchOutcome, PoolChange
from aceleryctl.events import MAX_NAME_LENGTH, TaskEvent, clip_text, group_name, order_key

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
BATCH_SIZE: Final = 500
#: Seconds a flush waits, once woken, for more entries to join its batch: one
#: lookup then serves every dispatch of that window (about 40 of a bare ``delay()``
#: loop, hundreds under a controller storm) instead of one each.
BATCH_WINDOW: Final = 0.02
#: Entries waiting for the emitter thread, at most; beyond that new ones are dropped.
MAX_BUFFERED: Final = 20_000

# Counts live members of each group (channels_redis keeps a group as a sorted set
# of channel names scored by the time they joined; members older than
# group_expiry no longer receive group_send). KEYS: group keys; ARGV[1]: the
# exclusive lower score bound.
_COUNT_MEMBERS: Final = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, ARGV[1], '+inf')
end
return counts
"""


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
        self._buffer: deque[tuple[str, str | None, str | None, float]] = deque()
        self._max = max_buffered
        self._batch = batch_size
        self._window = window
        self._armed: Any = None  # the emitter a flush is pending on
        self._pid = os.getpid()
        self._counts = dict.fromkeys(
            ("noted", "sent", "unwatched", "dropped_full", "dropped_off", "failed"), 0
        )

    def add(self, task_id: str, task_name: object, correlation: str | None) -> None:
        """Note that ``task_id``'s first message reached the broker. Never blocks
        on the network, never raises; about a microsecond unless it must wake the
        emitter (once per idle period)."""
        counts = self._counts
        counts["noted"] += 1  # racy under threads: a statistic, not an invariant
        buffer = self._buffer
        if len(buffer) >= self._max:
            counts["dropped_full"] += 1
            return
        name = task_name if isinstance(task_name, str) else None
        buffer.append((task_id, name, correlation, time.time()))
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

    async def _send_batch(
        self, layer: GroupSender, batch: list[tuple[str, str | None, str | None, float]]
    ) -> None:
        timeout = _send_timeout()
        groups: dict[str, tuple[str, str | None, str | None, float]] = {}
        for entry in batch:
            try:
                groups[group_name(entry[0])] = entry
            except ValueError:
                self._counts["unwatched"] += 1  # no browser can subscribe to it
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
        self._counts["unwatched"] += len(groups) - len(watched)
        for group in watched:
            task_id, name, correlation, at = groups[group]
            try:
                event = TaskEvent(
                    type="task.sent",
                    task_id=task_id,
                    task_name=None if name is None else clip_text(name, MAX_NAME_LENGTH),
                    state="PENDING",
                    timestamp=at,
                    order=order_key(0, 0),
                    correlation_id=correlation,
                )
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
    delivers to). It uses ``_group_key``, a private method of channels_redis
    (checked by the tests against the installed version). Any other layer: every
    group, as nobody can tell.

    Raises:
        Exception: what the layer's Redis client raises.
    """
    key_of = getattr(layer, "_group_key", None)
    shard_of = getattr(layer, "consistent_hash", None)
    client_of = getattr(layer, "connection", None)
    expiry = getattr(layer, "group_expiry", None)
    if key_of is None or shard_of is None or client_of is None or not isinstance(expiry, int):
        return list(groups)
    by_shard: defaultdict[int, list[str]] = defaultdict(list)
    for group in groups:
        by_shard[shard_of(group)].append(group)
    since = f"({int(time.time()) - expiry}"
    watched: list[str] = []
    for index, members in by_shard.items():
        counts = await client_of(index).eval(
            _COUNT_MEMBERS, len(members), *[key_of(group) for group in members], since
        )
        watched.extend(group for group, count in zip(members, counts, strict=True) if count)
    return watched


_sent = SentEvents()


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
    noting every dispatch whose message reached the broker, for ``task.sent``.

    Runs on the thread that settles the dispatch (the event loop's, for ``await
    controller.delay``); costs about a microsecond and never blocks or raises. It
    notes nothing while :func:`on_published` is connected in this process (a
    worker), which notes the same publishes.
    """

    __slots__ = ("_events",)

    def __init__(self, events: SentEvents | None = None) -> None:
        self._events = _sent if events is None else events

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Note a sent dispatch (see the class docstring)."""
        if event.outcome is DispatchOutcome.SENT and event.task_id is not None and not _signal_path:
            self._events.add(event.task_id, event.task_name, event.correlation_id)

    def pool_changed(self, change: PoolChange) -> None:
        """Nothing to do."""

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


_signal_path = False
_signal_lock = threading.Lock()


@guard("after_task_publish")
def on_published(
    sender: object = None, body: object = None, headers: object = None, **_: Any
) -> None:
    """``after_task_publish``: note a task's first message (a retry's message is
    announced by ``task.retried`` instead). Runs on the publishing thread; about
    a microsecond."""
    found: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
    if "id" not in found and isinstance(body, Mapping):  # task protocol 1
        found = body
    task_id = found.get("id")
    retries = found.get("retries")
    if not task_id or (isinstance(retries, int) and retries > 0):
        return
    _sent.add(
        str(task_id),
        found.get("task") or sender,
        correlation_id_from(found) or correlation_id.get(),
    )


def use_publish_signal(on: bool) -> None:
    """Connect (or disconnect) :func:`on_published` to ``after_task_publish``.
    Idempotent, thread-safe. While it is connected the listener notes nothing."""
    global _signal_path
    with _signal_lock:
        uid = "aceleryctl.live.sent.on_published"
        if on:
            celery_signals.after_task_publish.connect(on_published, weak=False, dispatch_uid=uid)
        else:
            celery_signals.after_task_publish.disconnect(on_published, dispatch_uid=uid)
        _signal_path = on


def install_web() -> None:
    """The web process's ``task.sent`` source, chosen at Django's ``ready()``:
    nothing to connect when the controller class takes dispatch listeners (the
    settings module attaches :class:`LiveEventsListener` to the default
    controller), else ``after_task_publish``. Imports no worker module."""
    import aceleryctl

    if not hasattr(aceleryctl.AsyncCeleryController, "add_listener"):
        use_publish_signal(True)
