"""The tasks one websocket connection follows: each one's snapshot, then its ordered events.

:class:`Subscriptions` is the bookkeeping half of
:class:`~aceleryctl.live.consumer.TaskEventsConsumer` (the protocol is described
there). A ``subscribe`` checks the token against the connection's user or session,
joins the task through the process's :class:`~aceleryctl.live.hub.TaskHub` first
and reads the snapshot second (whatever the read misses is already on its way),
buffers the events that arrive meanwhile, and settles both into one ``snapshot``
frame. From then on each event goes out once, in order: an event whose ``order``
is not above everything sent for that task is dropped, and nothing follows a
terminal event. A subscriber that asked for ``late`` events gets every event once
instead: after the snapshot frame, the other facts the merge knew (oldest first),
then each live event whose order it has not been sent, newer or not, even after a
terminal event.

The snapshot also merges what this process remembers of the task's own dispatch
(:mod:`aceleryctl.live.recent`): a ``task.sent`` or ``task.deferred`` that went
by before anyone subscribed.

It never touches the socket: frames and closes go through the connection's
``send`` and ``close`` callables. Everything runs on the event loop's thread; the
snapshot is read on aceleryctl's snapshot threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from aceleryctl import conf
from aceleryctl.events import Phase, TaskEvent, split_order
from aceleryctl.live.hub import TaskHub
from aceleryctl.live.protocol import (
    CLOSE_TRY_AGAIN,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_SNAPSHOT_UNAVAILABLE,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
    Subscribe,
    error_frame,
    event_frame,
    snapshot_frame,
)
from aceleryctl.live.recent import recent_dispatches
from aceleryctl.live.snapshots import SnapshotSource, celery_snapshot_source, reader_for_loop
from aceleryctl.tokens import SubscriptionRefused, check_subscription_token

__all__ = ["Subscriptions"]

logger = logging.getLogger("aceleryctl.consumers")

#: Queues one text frame for the client (never blocks, never raises).
SendFrame = Callable[[str], None]
#: Closes the connection with ``code``, after an error frame when a message is given:
#: ``close(code, message, task_id)``.
CloseConnection = Callable[[int, str | None, str | None], None]


#: Order keys remembered per ``late`` subscription to send each event once.
MAX_LATE_ORDERS = 4_096


@dataclass(slots=True, eq=False)
class _Follow:
    """One task this connection follows."""

    task_id: str
    last: int = -1  # highest order sent (or the client's ``after``)
    terminal: bool = False  # a terminal event was sent (or the client had one)
    ready: bool = False  # the snapshot was sent; until then events are buffered
    buffer: list[TaskEvent] = field(default_factory=list)
    late: bool = False  # every event once, newer or not (the subscriber asked)
    sent: set[int] = field(default_factory=set)  # orders sent, with ``late``

    def first_time(self, order: int) -> bool:
        """With ``late``: whether ``order`` was never sent (and note it sent now).
        Past :data:`MAX_LATE_ORDERS` orders, only newer events count as new."""
        if order in self.sent:
            return False
        if len(self.sent) >= MAX_LATE_ORDERS:
            return order > self.last
        self.sent.add(order)
        return True


def _newest(snapshot: TaskEvent | None, live: list[TaskEvent]) -> TaskEvent | None:
    terminal = [e for e in live if e.is_terminal]
    if terminal:  # a live terminal event is real and final: it beats everything
        return max(terminal, key=lambda e: e.order)
    if snapshot is not None and snapshot.is_terminal:
        return snapshot
    newest = max(live, key=lambda e: e.order, default=None)
    if snapshot is None:
        return newest
    if newest is None or snapshot.order > newest.order:
        return snapshot
    return newest  # on a tie the live event wins: it carries the worker's own data


_default_sources: dict[tuple[int, tuple[str, ...]], tuple[Any, SnapshotSource]] = {}


def _default_source() -> SnapshotSource:
    from aceleryctl._logging import Redactor

    settings = conf.load_settings()
    app = conf.resolve_celery_app(settings)
    key = (id(app), settings.redact_keys)
    cached = _default_sources.get(key)
    if cached is None or cached[0] is not app:
        source = celery_snapshot_source(app, redactor=Redactor.from_keys(settings.redact_keys))
        cached = _default_sources[key] = (app, source)
    return cached[1]


class Subscriptions:
    """The tasks one connection follows (see the module docstring).

    Args:
        hub: the process's hub for the connection's channel layer.
        scope: the connection's ASGI scope (its ``user`` and ``session`` are
            what tokens are checked against).
        settings: the websocket settings read when the connection opened.
        snapshot_source: reads a task's current state; ``None`` for the result
            backend of ``ACELERYCTL['CELERY_APP']``.
        max_buffered_events: events per task kept while its snapshot is read.
        send: queues a frame for the client.
        close: closes the connection (see :data:`CloseConnection`).
        closing: whether the connection is closing (nothing is sent then).
    """

    def __init__(
        self,
        hub: TaskHub,
        scope: MutableMapping[str, Any],
        *,
        settings: conf.WebsocketSettings,
        snapshot_source: SnapshotSource | None,
        max_buffered_events: int,
        send: SendFrame,
        close: CloseConnection,
        closing: Callable[[], bool],
    ) -> None:
        self._hub = hub
        self._scope = scope
        self._settings = settings
        self._snapshot_source = snapshot_source
        self._max_buffered_events = max_buffered_events
        self._send = send
        self._close = close
        self._closing = closing
        self._follows: dict[str, _Follow] = {}

    def _identity(self) -> tuple[Any, str | None]:
        # Channels' middleware puts lazy objects in the scope; one that was never
        # resolved raises on first touch. Either counts as "nobody".
        try:
            user = self._scope.get("user")
            if user is not None and not isinstance(user.is_authenticated, bool):
                user = None
        except Exception:
            user = None
        try:
            session = self._scope.get("session")
            key = getattr(session, "session_key", None) if session is not None else None
        except Exception:
            key = None
        return user, key if isinstance(key, str) else None

    async def subscribe(self, command: Subscribe) -> None:
        """Follow ``command.task_id``: check, join, read and send its snapshot.

        Refusals are error frames (already subscribed, too many subscriptions) or a
        close (a refused token; the hub could not join: 1013). Returns once the
        snapshot frame is queued.
        """
        task_id = command.task_id
        if task_id in self._follows:
            self._send(error_frame(ERROR_ALREADY_SUBSCRIBED, "already subscribed", task_id))
            return
        if len(self._follows) >= self._settings.max_subscriptions:
            self._send(error_frame(ERROR_TOO_MANY_SUBSCRIPTIONS, "too many subscriptions", task_id))
            return
        user, session_key = self._identity()
        try:
            check_subscription_token(command.token, task_id, user=user, session_key=session_key)
        except SubscriptionRefused as exc:
            self._close(exc.close_code, str(exc), task_id)
            return
        follow = _Follow(task_id, late=command.late)
        if command.after is not None:
            follow.last = command.after
            follow.terminal = split_order(command.after)[1] == Phase.TERMINAL
        self._follows[task_id] = follow
        try:
            # Join first, read second: whatever the read misses is already on its way.
            await self._hub.subscribe(task_id, self._on_event)
        except Exception:
            logger.warning("could not join the channel-layer group of %s", task_id, exc_info=True)
            self._follows.pop(task_id, None)
            await self._hub.unsubscribe(task_id, self._on_event)
            self._close(CLOSE_TRY_AGAIN, "live events are unavailable; try again later", task_id)
            return
        snapshot: TaskEvent | None = None
        failed = False
        try:
            source = self._snapshot_source or _default_source()
            snapshot = await reader_for_loop().read(
                source, task_id, timeout=self._settings.snapshot_timeout
            )
        except Exception:
            logger.warning("could not read the snapshot of task %s", task_id, exc_info=True)
            failed = True
        if self._follows.get(task_id) is not follow or self._closing():
            return
        self._settle(follow, snapshot)
        if failed:
            message = "the task's state could not be read"
            self._send(error_frame(ERROR_SNAPSHOT_UNAVAILABLE, message, task_id))

    def _settle(self, follow: _Follow, snapshot: TaskEvent | None) -> None:
        # Runs without an await: no event can slip in between the merge and ready.
        live, follow.buffer = follow.buffer, []
        follow.ready = True
        live = recent_dispatches().events(follow.task_id) + live
        newest = _newest(snapshot, live)
        shown: TaskEvent | None = None
        if (
            newest is not None
            and not follow.terminal
            and (newest.order > follow.last or newest.is_terminal)
        ):
            shown = newest
            follow.last = max(follow.last, newest.order)
            follow.terminal = newest.is_terminal
        self._send(snapshot_frame(follow.task_id, shown))
        if follow.late:
            if shown is not None:
                follow.first_time(shown.order)
            known = sorted(
                [*live, *([] if snapshot is None else [snapshot])], key=lambda e: e.order
            )
            for event in known:
                if follow.first_time(event.order):
                    follow.last = max(follow.last, event.order)
                    self._send(event_frame(event))

    async def unsubscribe(self, task_id: str) -> None:
        """Stop following ``task_id``; nothing if it was not followed."""
        if self._follows.pop(task_id, None) is not None:
            await self._hub.unsubscribe(task_id, self._on_event)

    def __len__(self) -> int:
        """Tasks followed now (metrics read it)."""
        return len(self._follows)

    async def clear(self) -> None:
        """Stop following every task (the connection is going away)."""
        follows, self._follows = self._follows, {}
        for task_id in follows:
            await self._hub.unsubscribe(task_id, self._on_event)

    def _on_event(self, event: TaskEvent, frame: str) -> None:
        """The hub's listener: on the loop's thread, once per event of a followed task."""
        follow = self._follows.get(event.task_id)
        if follow is None:
            return
        if not follow.ready:
            follow.buffer.append(event)
            if len(follow.buffer) > self._max_buffered_events:
                # Keep the newest; a terminal event is kept whatever its position.
                follow.buffer.sort(key=lambda e: (e.is_terminal, e.order))
                del follow.buffer[0]
            return
        if follow.late:
            if not follow.first_time(event.order):
                return
            follow.last = max(follow.last, event.order)
            follow.terminal = follow.terminal or event.is_terminal
        elif follow.terminal or event.order <= follow.last:
            return
        else:
            follow.last = event.order
            follow.terminal = event.is_terminal
        self._send(frame)
