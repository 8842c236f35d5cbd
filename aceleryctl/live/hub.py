"""One channel-layer membership per task per process, fanned out in memory.

Channels' usual pattern gives every websocket connection its own channel and adds
it to the group: 1,000 browsers following one task cost 1,000 ``group_add`` calls
when they connect (on channels_redis, 1,000 Redis round trips competing for a
connection pool that raises when exhausted), 1,000 copies of every event written
to Redis and read back, and 1,000 ``group_discard`` calls when they leave, any of
which may fail and leave a member behind for ``group_expiry`` seconds.

A :class:`TaskHub` instead owns ONE channel for its process (per event loop and
channel layer). The first local listener of a task adds that channel to the
task's group ``aceleryctl.task.<task_id>``; the last one to leave discards it.
Every listener in between is a plain in-memory callback. One background task per
hub reads the channel and calls the listeners of the event's task; a second one
re-adds current memberships every half ``group_expiry``, so that a membership
lives as long as its listeners and a membership left behind by a crashed process
still expires (the layer's own safety net).

Threads: everything here runs on the event loop's thread; listeners are called
on it and must not block (the consumer's listener only enqueues a frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import redis.exceptions

from aceleryctl.events import TaskEvent, group_name
from aceleryctl.live.protocol import event_frame

__all__ = ["ChannelLayer", "HubStatistics", "Listener", "TaskHub", "hub_for"]

logger = logging.getLogger("aceleryctl.hub")

#: A listener gets the event and its server→client frame, JSON-encoded once for all.
Listener = Callable[[TaskEvent, str], None]

#: Most join/leave rounds one reconcile pass makes before handing over to the next
#: caller; each round follows a change made by a subscriber, so the bound is never
#: reached in practice.
_MAX_ROUNDS: Final = 64
#: Seconds between retries after the layer's ``receive`` failed (doubles, capped).
_RECEIVE_BACKOFF: Final = (0.05, 5.0)


_COUNTERS: Final = (
    "group_adds",
    "group_discards",
    "group_refreshes",
    "messages",
    "dropped",
    "deliveries",
)


class ChannelLayer(Protocol):
    """The part of a Channels layer the hub uses (``groups`` extension included)."""

    async def new_channel(self) -> str: ...

    async def receive(self, channel: str) -> dict[str, Any]: ...

    async def group_add(self, group: str, channel: str) -> None: ...

    async def group_discard(self, group: str, channel: str) -> None: ...


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of a hub's counters (cumulative since the hub was built).

    Attributes:
        tasks: tasks with at least one local listener now.
        listeners: local listeners now, over all tasks.
        group_adds, group_discards, group_refreshes: layer calls made.
        messages: layer messages read; ``dropped`` of them were not valid events.
        deliveries: listener calls made.
    """

    tasks: int
    listeners: int
    group_adds: int
    group_discards: int
    group_refreshes: int
    messages: int
    dropped: int
    deliveries: int


@dataclass(slots=True, eq=False)
class _Membership:
    task_id: str
    #: An insertion-ordered set. Bound methods compare equal when they bind the same
    #: object to the same function, so ``consumer.method`` finds itself again.
    listeners: dict[Listener, None] = field(default_factory=dict)
    #: "in": the group holds our channel; "out": it does not; "unknown": a join
    #: failed half-way, so the next change must go to the layer either way.
    state: Literal["in", "out", "unknown"] = "out"
    worker: asyncio.Task[None] | None = None


class TaskHub:
    """Fans one channel-layer group membership per task out to local listeners.

    Build one per event loop and layer with :func:`hub_for`. Runs on that loop's
    thread only.

    Args:
        layer: a Channels layer with the ``groups`` extension.
        layer_timeout: seconds allowed for one ``group_add``/``group_discard``.
        refresh_after: seconds between re-adding current memberships; ``None``
            takes half the layer's ``group_expiry`` (when it has one).
    """

    def __init__(
        self,
        layer: ChannelLayer,
        *,
        layer_timeout: float = 5.0,
        refresh_after: float | None = None,
    ) -> None:
        self.layer = layer
        self.layer_timeout = layer_timeout
        if refresh_after is None:
            expiry = getattr(layer, "group_expiry", None)
            if isinstance(expiry, int | float) and expiry > 0:
                refresh_after = max(1.0, expiry / 2)
        self.refresh_after = refresh_after
        self._channel: str | None = None
        self._tasks: dict[str, _Membership] = {}
        self._reader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # -- listeners -------------------------------------------------------------

    async def subscribe(self, task_id: str, listener: Listener) -> None:
        """Call ``listener`` for every event of ``task_id`` from now until unsubscribed.

        Returns once this process's channel is in the task's group, so every event
        published after the return reaches the listener. Concurrent calls for one
        task share one ``group_add``. Cancelling the caller leaves the listener
        registered (call :meth:`unsubscribe`); the join itself is not cancelled.

        Raises:
            TimeoutError: the layer did not answer within ``layer_timeout`` seconds.
            Exception: whatever the layer raised (for example a Redis
                ``ConnectionError``). The listener stays registered either way.
        """
        membership = self._tasks.get(task_id)
        if membership is None:
            membership = self._tasks[task_id] = _Membership(task_id)
        membership.listeners[listener] = None
        if membership.state != "in" or membership.worker is not None:
            await asyncio.shield(self._reconcile(membership))

    async def unsubscribe(self, task_id: str, listener: Listener) -> None:
        """Stop calling ``listener``; the last listener of a task leaves the group.

        The listener gets nothing more from the moment of the call. Never raises:
        a failed ``group_discard`` is logged, and the membership then ends at the
        layer's ``group_expiry``. Safe to call for a listener that is not there.
        """
        membership = self._tasks.get(task_id)
        if membership is None or listener not in membership.listeners:
            return
        del membership.listeners[listener]
        if not membership.listeners:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._reconcile(membership))

    def listening(self, task_id: str) -> int:
        """How many local listeners ``task_id`` has."""
        membership = self._tasks.get(task_id)
        return len(membership.listeners) if membership else 0

    def statistics(self) -> HubStatistics:
        """The hub's counters now (see :class:`HubStatistics`)."""
        return HubStatistics(
            tasks=sum(1 for m in self._tasks.values() if m.listeners),
            listeners=sum(len(m.listeners) for m in self._tasks.values()),
            **self._counts,
        )

    async def aclose(self) -> None:
        """Drop every listener, leave every group, stop the background tasks."""
        for membership in list(self._tasks.values()):
            membership.listeners.clear()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._reconcile(membership))
        await self._stop_background()

    # -- membership ------------------------------------------------------------

    def _reconcile(self, membership: _Membership) -> asyncio.Task[None]:
        worker = membership.worker
        if worker is None or worker.done():
            worker = membership.worker = asyncio.get_running_loop().create_task(
                self._converge(membership), name=f"aceleryctl-hub:{membership.task_id}"
            )
            # Its callers see a failure through their shield(); when they were all
            # cancelled, nobody would, so mark the exception as retrieved here.
            worker.add_done_callback(_retrieve)
        return worker

    async def _converge(self, membership: _Membership) -> None:
        # The only coroutine that changes this task's membership: joins and leaves
        # run one at a time, each after re-reading what the listeners want now.
        try:
            for _ in range(_MAX_ROUNDS):
                wanted = "in" if membership.listeners else "out"
                if wanted == membership.state:
                    break
                if wanted == "in":
                    await self._join(membership)
                else:
                    await self._leave(membership)
        finally:
            membership.worker = None
            if (
                not membership.listeners
                and membership.state == "out"
                and self._tasks.get(membership.task_id) is membership
            ):
                del self._tasks[membership.task_id]
                # The reader keeps running while the hub is open, even with no task
                # followed: channels_redis finishes a cancelled receive only when its
                # blocking pop times out (5 s), and a reader restarted meanwhile on
                # the same channel would wait that long for its lock.

    async def _join(self, membership: _Membership) -> None:
        channel = await self._ensure_channel()
        # Read the channel before the first event can arrive for it.
        self._start_background()
        membership.state = "unknown"
        self._counts["group_adds"] += 1
        await asyncio.wait_for(
            self.layer.group_add(group_name(membership.task_id), channel), self.layer_timeout
        )
        membership.state = "in"

    async def _leave(self, membership: _Membership) -> None:
        assert self._channel is not None
        membership.state = "out"
        self._counts["group_discards"] += 1
        try:
            await asyncio.wait_for(
                self.layer.group_discard(group_name(membership.task_id), self._channel),
                self.layer_timeout,
            )
        except Exception:
            logger.warning(
                "group_discard failed for task %s; the membership expires with the "
                "layer's group_expiry",
                membership.task_id,
                exc_info=True,
            )

    async def _ensure_channel(self) -> str:
        if self._channel is None:
            self._channel = await self.layer.new_channel()
        return self._channel

    # -- background tasks ------------------------------------------------------

    def _start_background(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(), name="aceleryctl-hub-reader")
        if self.refresh_after and (self._refresher is None or self._refresher.done()):
            self._refresher = loop.create_task(self._refresh(), name="aceleryctl-hub-refresh")

    async def _stop_background(self) -> None:
        tasks = [t for t in (self._reader, self._refresher) if t is not None]
        self._reader = self._refresher = None
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _read(self) -> None:
        assert self._channel is not None
        channel = self._channel
        delay = _RECEIVE_BACKOFF[0]
        while True:  # until aclose() cancels it; messages for no listener are dropped
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, redis.exceptions.TimeoutError):
                # An idle receive timed out (channels_redis with a finite socket
                # timeout): nothing is wrong, ask again.
                continue
            except Exception:
                logger.warning("channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECEIVE_BACKOFF[1])
                continue
            delay = _RECEIVE_BACKOFF[0]
            self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        self._counts["messages"] += 1
        try:
            event = TaskEvent.from_dict(message["event"])
        except Exception:
            self._counts["dropped"] += 1
            logger.warning("dropped a channel-layer message that is not a task event")
            return
        membership = self._tasks.get(event.task_id)
        if membership is None or not membership.listeners:
            return
        frame = event_frame(event)
        for listener in tuple(membership.listeners):
            self._counts["deliveries"] += 1
            try:
                listener(event, frame)
            except Exception:
                logger.exception("a task event listener raised")

    async def _refresh(self) -> None:
        assert self.refresh_after is not None
        assert self._channel is not None
        while self._tasks:  # cancelled by the last leave
            await asyncio.sleep(self.refresh_after)
            for membership in list(self._tasks.values()):
                if membership.state != "in" or not membership.listeners:
                    continue
                self._counts["group_refreshes"] += 1
                try:
                    await asyncio.wait_for(
                        self.layer.group_add(group_name(membership.task_id), self._channel),
                        self.layer_timeout,
                    )
                except Exception:
                    logger.warning("refreshing group membership failed", exc_info=True)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, TaskHub]] = (
    weakref.WeakKeyDictionary()
)


def hub_for(layer: ChannelLayer, **options: Any) -> TaskHub:
    """The running loop's hub for ``layer``, built on first use with ``options``.

    Must be called on the event loop's thread (inside a coroutine).
    """
    loop = asyncio.get_running_loop()
    hubs = _hubs.setdefault(loop, {})
    hub = hubs.get(id(layer))
    if hub is None or hub.layer is not layer:
        hub = hubs[id(layer)] = TaskHub(layer, **options)
    return hub
