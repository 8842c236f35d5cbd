"""The websocket consumer that streams task events to browsers.

Route it with :data:`aceleryctl.routing.websocket_urlpatterns` (``ws/aceleryctl/tasks/``).
One connection may follow many tasks. The protocol (JSON text frames)::

    client → {"type": "subscribe", "task_id": "<id>", "token": "<token>", "after": <order>|null}
    client → {"type": "unsubscribe", "task_id": "<id>"}
    server → {"type": "snapshot", "task_id": "<id>", "event": {...}|null}
    server → {"type": "event", "event": {...}}
    server → {"type": "error", "code": <int>, "message": "...", "task_id": "<id>"|null}

After a ``subscribe`` the server sends exactly one ``snapshot`` for that task: the
newest state it knows (from the result backend and the live events that arrived
while it read it), or ``null`` when it knows nothing newer than ``after``. Then
``event`` frames follow, each with an ``order`` above every order sent before for
that task: duplicates and stale events are dropped, and nothing follows a
terminal event. The server never closes a connection because its tasks finished;
the client decides (the JavaScript client closes once every task it follows is
terminal).

Close codes (the same number is the ``code`` of the error frame sent just before, if
any: a foreign ``Origin`` and a missing channel layer get no frame):

====  ==============================================================================
4400  too many malformed frames (each one below the limit gets an error frame only)
4401  a subscribe frame without a token
4403  a tampered token, or one issued for another task or another user/session; or
      a foreign ``Origin``: the handshake is accepted and the connection closed at
      once with 4403 and no frame, before anything is read (a refused handshake
      would reach a browser as a bare 1006, which clients retry)
4413  a frame larger than ``ACELERYCTL['WEBSOCKET_MAX_FRAME_BYTES']`` (4 KB)
4419  an expired token: fetch a new one and reconnect
1013  the server cannot keep up (this client fell behind, or the channel layer
      failed): reconnect after a backoff and resume with ``after``
1011  no channel layer is configured: the handshake is refused (HTTP 403 from the
      server)
====  ==============================================================================

Error frames that leave the connection open: 4400 malformed frame, 4409 already
subscribed to that task, 4429 too many subscriptions (``WEBSOCKET_MAX_SUBSCRIPTIONS``),
4503 result backend unavailable (live events still flow).

This module handles the connection: the handshake and its ``Origin`` check, the
client's frames (size, parsing, malformed-frame budget) and the ordered outbox
its one writer task drains. What the connection follows (tokens, hub
memberships, snapshots and the per-task order) is kept by
:class:`~aceleryctl.live.subscriptions.Subscriptions`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from channels import DEFAULT_CHANNEL_LAYER
from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.http.request import split_domain_port, validate_host

from aceleryctl import conf
from aceleryctl.live.hub import hub_for
from aceleryctl.live.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_MALFORMED,
    CLOSE_TOO_LARGE,
    CLOSE_TRY_AGAIN,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    error_frame,
    parse_client_frame,
)
from aceleryctl.live.snapshots import SnapshotSource
from aceleryctl.live.subscriptions import Subscriptions
from aceleryctl.metrics.live import live_counters

__all__ = ["TaskEventsConsumer"]

logger = logging.getLogger("aceleryctl.consumers")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

#: Close code for a handshake refused because the server is misconfigured.
_CLOSE_INTERNAL_ERROR: Final = 1011


@dataclass(frozen=True, slots=True)
class _Close:
    code: int


def _origin_allowed(origin: str | None, settings: conf.WebsocketSettings) -> bool:
    allowed = settings.allowed_origins
    if allowed is not None and "*" in allowed:
        return True
    if not origin or origin == "null":
        return False
    origin = origin.lower()
    if allowed is not None:
        return origin in allowed
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
        return False
    domain, _port = split_domain_port(parts.netloc)
    return bool(domain) and validate_host(domain, list(settings.allowed_hosts))


class TaskEventsConsumer(AsyncConsumer):  # type: ignore[misc]  # channels is untyped
    """Streams the events of the tasks a browser subscribes to (module docstring).

    Route with ``TaskEventsConsumer.as_asgi()``; keyword arguments:

    * ``snapshot_source``: reads a task's current state on a snapshot thread
      (default: the result backend of ``ACELERYCTL['CELERY_APP']``).
    * ``channel_layer_alias``: the Channels layer workers publish to.

    Unlike Channels' consumers this one has no channel of its own: the process's
    :class:`~aceleryctl.live.hub.TaskHub` holds ONE channel-layer membership per task
    and hands every event to each local connection in memory, so a connection
    costs no ``group_add`` and no Redis round trip to open or close.

    Threads: everything runs on the event loop's thread. The only blocking work,
    reading the result backend, runs on aceleryctl's snapshot threads. No handler
    touches the database, so Channels' per-message ``close_old_connections`` hop
    (``AsyncConsumer.dispatch`` awaits it through asgiref's single thread-sensitive
    thread before every handler: with 1,000 clients, one event means 1,000 queued
    hops on that one thread) is left out: see :meth:`dispatch`.

    Class attributes tune the limits: ``max_pending_frames`` frames may wait for a
    slow client before it is closed with 1013; ``max_buffered_events`` events per
    task are kept while its snapshot is read; ``max_protocol_errors`` malformed
    frames are answered before the connection is closed with 4400.
    """

    max_pending_frames: int = 512
    max_buffered_events: int = 256
    max_protocol_errors: int = 8

    def __init__(
        self,
        *,
        snapshot_source: SnapshotSource | None = None,
        channel_layer_alias: str = DEFAULT_CHANNEL_LAYER,
    ) -> None:
        self.snapshot_source = snapshot_source
        self.channel_layer_alias = channel_layer_alias
        self.settings = conf.WebsocketSettings()
        self._outbox: collections.deque[str | _Close] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._subscriptions: Subscriptions | None = None
        self._accepted = False
        self._closing = False
        self._protocol_errors = 0

    # -- ASGI ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one websocket connection until the client disconnects.

        Reads the client's messages one at a time; a subscribe is handled to the
        end (hub joined, snapshot sent) before the next message is read. On exit,
        including cancellation, every subscription is dropped and the writer stops.
        """
        self.scope = scope
        self.base_send = send
        try:
            while True:  # one connection; ends with websocket.disconnect
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            await self._teardown()

    async def dispatch(self, message: Message) -> None:
        """Route one ASGI message to its handler, without Channels' DB hop.

        ``AsyncConsumer.dispatch`` awaits ``aclose_old_connections()`` before every
        handler: a ``sync_to_async`` call that waits its turn on asgiref's one
        thread-sensitive thread, shared by every sync view and every consumer of
        the process. This consumer never uses the database, so it skips that hop;
        subclasses whose handlers do use the ORM must call
        :func:`channels.db.aclose_old_connections` themselves.

        Raises:
            StopConsumer: the client disconnected.
        """
        kind = message.get("type")
        if kind == "websocket.receive":
            await self.websocket_receive(message)
        elif kind == "websocket.connect":
            await self.websocket_connect(message)
        elif kind == "websocket.disconnect":
            raise StopConsumer()

    async def websocket_connect(self, message: Message) -> None:
        """Check the Origin, then accept; or close at once (4403), or refuse the
        handshake (1011).

        A foreign ``Origin`` is accepted and closed with 4403 in the same step, with
        no frame: nothing is read for it (no channel layer, no hub, no snapshot, no
        writer) and every frame it sends is ignored. Accepting first is what lets a
        browser see 4403, a final refusal, instead of the 1006 of a refused
        handshake, which its client cannot tell from a network failure
        (docs/security.md, "Origin validation").
        """
        self.settings = conf.load_websocket_settings()
        origin = None
        for name, value in self.scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        if not _origin_allowed(origin, self.settings):
            logger.info("refused a websocket from origin %r", origin)
            live_counters.closed(CLOSE_FORBIDDEN)
            self._closing = True  # from here on, websocket_receive ignores everything
            await self.base_send({"type": "websocket.accept"})
            await self.base_send(
                {"type": "websocket.close", "code": CLOSE_FORBIDDEN, "reason": "origin not allowed"}
            )
            return
        layer = get_channel_layer(self.channel_layer_alias)
        if layer is None:
            logger.error(
                "no channel layer %r: set CHANNEL_LAYERS (see check aceleryctl.W003)",
                self.channel_layer_alias,
            )
            await self.base_send({"type": "websocket.close", "code": _CLOSE_INTERNAL_ERROR})
            live_counters.closed(_CLOSE_INTERNAL_ERROR)
            self._closing = True
            return
        self._subscriptions = Subscriptions(
            hub_for(layer),
            self.scope,
            settings=self.settings,
            snapshot_source=self.snapshot_source,
            max_buffered_events=self.max_buffered_events,
            send=self._send,
            close=self._close,
            closing=lambda: self._closing,
        )
        await self.base_send({"type": "websocket.accept"})
        self._accepted = True
        live_counters.accepted(self._subscriptions)
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name="aceleryctl-ws-writer"
        )

    async def websocket_receive(self, message: Message) -> None:
        """Handle one client frame; never raises for anything the client sent."""
        if self._closing or not self._accepted:
            return
        text = message.get("text")
        data = message.get("bytes")
        limit = self.settings.max_frame_bytes
        size = len(text) if isinstance(text, str) else len(data or b"")
        if size > limit or (isinstance(text, str) and len(text.encode("utf-8", "replace")) > limit):
            self._close(CLOSE_TOO_LARGE, f"frames are limited to {limit} bytes")
            return
        if not isinstance(text, str):
            self._protocol_error(ProtocolError("frames must be JSON text, not binary"))
            return
        try:
            command = parse_client_frame(text)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        assert self._subscriptions is not None  # made before the handshake was accepted
        if isinstance(command, Subscribe):
            await self._subscriptions.subscribe(command)
        elif isinstance(command, Unsubscribe):
            await self._subscriptions.unsubscribe(command.task_id)

    # -- output --------------------------------------------------------------------

    def _send(self, frame: str) -> None:
        if self._closing:
            return
        if len(self._outbox) >= self.max_pending_frames:
            logger.info("closing a websocket that fell %d frames behind", len(self._outbox))
            self._outbox.clear()
            self._close(CLOSE_TRY_AGAIN)
            return
        self._outbox.append(frame)
        self._wake.set()

    def _close(self, code: int, message: str | None = None, task_id: str | None = None) -> None:
        if self._closing:
            return
        live_counters.closed(code)
        if message is not None:  # may exceed max_pending_frames by one: it is the last
            self._outbox.append(error_frame(code, message, task_id))
        self._closing = True
        self._outbox.append(_Close(code))
        self._wake.set()

    def _protocol_error(self, exc: ProtocolError) -> None:
        self._protocol_errors += 1
        if self._protocol_errors >= self.max_protocol_errors:
            self._close(CLOSE_MALFORMED, f"too many malformed frames: {exc}")
        else:
            self._send(error_frame(exc.code, str(exc)))

    async def _write(self) -> None:
        # The only coroutine that sends after the handshake, so frames keep their order.
        try:
            while True:  # until a close is sent, the client is gone, or teardown
                while not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                item = self._outbox.popleft()
                if isinstance(item, _Close):
                    await self.base_send({"type": "websocket.close", "code": item.code})
                    return
                await self.base_send({"type": "websocket.send", "text": item})
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away mid-send (server-specific errors)
            logger.debug("websocket send failed; the client is gone", exc_info=True)
            self._closing = True
            self._outbox.clear()

    async def _teardown(self) -> None:
        if self._accepted:
            self._accepted = False
            live_counters.gone()
        self._closing = True
        subscriptions, self._subscriptions = self._subscriptions, None
        if subscriptions is not None:
            await subscriptions.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
