"""One Redis pub/sub connection per (loop, backend) carrying every wait on that loop.

Celery's Redis result backend ``PUBLISH``\\ es each state it stores on a channel
named like the key (``SET key meta`` then ``PUBLISH key meta``, one pipeline).
:class:`Subscriber` subscribes one ``redis.asyncio`` pub/sub connection to the
channels of every task awaited on its loop and hands each message to the waits
listening on that channel: a thousand waits are a thousand channels on one
connection, read by one task, and no thread.

The waits themselves (subscribe, then read the stored meta to close the race
with a task that finished before the subscription) are in
:mod:`aceleryctl.awaiting.ready`.

Subscribing and unsubscribing are batched: the requests made during one loop
turn go out as one ``SUBSCRIBE`` and one ``UNSUBSCRIBE``. A channel is
unsubscribed when its last listener leaves. Every ``subscribe`` confirmation
after the first on a channel (redis-py resubscribing after a reconnect, or a
channel re-subscribed quickly) tells its listeners to read the stored meta
again, since messages may have been missed in between. When the connection is
lost for good, every listener is told (:class:`SubscriberLost`), the
subscriber closes, and the endpoint makes a new one for the next wait.

Everything here runs on the loop's thread; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

import redis.asyncio

__all__ = ["READ_INTERVAL", "Listener", "Subscriber", "SubscriberLost"]

logger = logging.getLogger(__name__)

#: How long one read of the pub/sub connection waits for a message, in seconds
#: (then it reads again: this bounds nothing a caller sees).
READ_INTERVAL = 5.0


class SubscriberLost(ConnectionError):
    """The subscriber's connection failed or it was closed; ``__cause__`` says why.

    A wait that gets it may subscribe again through a new subscriber.
    """


class Listener(Protocol):
    """What a wait gives :meth:`Subscriber.listen`; called on the loop's thread."""

    def on_message(self, payload: bytes) -> None:
        """A message published on the channel (a stored meta, encoded)."""

    def on_resync(self) -> None:
        """Messages may have been missed: read the stored meta again."""

    def on_lost(self, error: SubscriberLost) -> None:
        """The subscription is gone for good."""


class Subscriber:
    """A pub/sub connection on one loop, multiplexing the listeners of many channels."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._pubsub = client.pubsub()
        self._listeners: dict[bytes, set[Listener]] = {}
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.closed = False

    @property
    def channels(self) -> frozenset[bytes]:
        """The channels with at least one listener (an UNSUBSCRIBE may be on its way)."""
        return frozenset(self._listeners)

    async def listen(self, channel: bytes, listener: Listener) -> None:
        """Add ``listener`` to ``channel``; return once Redis confirmed the subscription.

        From then on every message published on ``channel`` reaches the
        listener, until :meth:`unlisten`. Call :meth:`unlisten` in a ``finally``
        even when this raises or is cancelled. Raises :class:`SubscriberLost`
        when the connection fails (the SUBSCRIBE could not be sent, or the
        connection dropped for good before the confirmation).
        """
        if self.closed:
            raise SubscriberLost("the subscriber is closed")
        listeners = self._listeners.get(channel)
        if listeners is None:
            listeners = self._listeners[channel] = set()
            self._subscribed[channel] = asyncio.get_running_loop().create_future()
            self._to_subscribe.add(channel)
            self._schedule_flush()
        listeners.add(listener)
        # Shielded: one listener cancelled must not cancel the others' confirmation.
        await asyncio.shield(self._subscribed[channel])

    def unlisten(self, channel: bytes, listener: Listener) -> None:
        """Remove ``listener``; the last one out unsubscribes the channel. Never raises."""
        listeners = self._listeners.get(channel)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        if listeners:
            return
        del self._listeners[channel]
        confirmation = self._subscribed.pop(channel)
        if not confirmation.done():
            confirmation.cancel()
        if not self.closed:
            self._to_unsubscribe.add(channel)
            self._schedule_flush()

    async def aclose(self) -> None:
        """Close the connection; listeners still waiting get :class:`SubscriberLost`."""
        if not self.closed:
            self._fail(SubscriberLost("the subscriber was closed"))
        tasks = [t for t in (self._reader, self._flusher, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pubsub.aclose()

    # -- on the loop: commands and messages ------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send the subscriptions asked for since the last flush, batched per loop turn."""
        await asyncio.sleep(0)  # let this loop turn's other waits ask too
        while not self.closed and (self._to_subscribe or self._to_unsubscribe):
            subscribe = [c for c in self._to_subscribe if c in self._listeners]
            unsubscribe = [c for c in self._to_unsubscribe if c not in self._listeners]
            self._to_subscribe.clear()
            self._to_unsubscribe.clear()
            try:
                if subscribe:
                    await self._pubsub.subscribe(*subscribe)
                    self._start_reader()
                if unsubscribe:
                    await self._pubsub.unsubscribe(*unsubscribe)
            except Exception as exc:
                lost = SubscriberLost(f"could not subscribe on the result backend: {exc!r}")
                lost.__cause__ = exc
                self._fail(lost)
                return

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        """Read the connection until it fails or the subscriber closes."""
        try:
            while not self.closed:
                message = await self._pubsub.get_message(timeout=READ_INTERVAL)
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost = SubscriberLost(f"lost the result backend's pub/sub connection: {exc!r}")
            lost.__cause__ = exc
            self._fail(lost)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        if kind == "message":
            for listener in tuple(self._listeners.get(channel, ())):
                self._call(listener.on_message, message["data"])
        elif kind == "subscribe":
            confirmation = self._subscribed.get(channel)
            if confirmation is None:
                return
            if not confirmation.done():
                confirmation.set_result(None)
            else:  # a resubscription: what was published meanwhile is lost
                for listener in tuple(self._listeners.get(channel, ())):
                    self._call(listener.on_resync)

    def _fail(self, error: SubscriberLost) -> None:
        """Close for good: every listener and pending confirmation learns ``error``."""
        if self.closed:
            return
        self.closed = True
        for confirmation in self._subscribed.values():
            if not confirmation.done():
                confirmation.set_exception(error)
                confirmation.exception()  # retrieved: nobody may be awaiting it
        listeners = [(c, ls) for c, ls in self._listeners.items()]
        self._listeners.clear()
        self._subscribed.clear()
        for _channel, channel_listeners in listeners:
            for listener in channel_listeners:
                self._call(listener.on_lost, error)
        if error.__cause__ is not None:
            logger.warning("aceleryctl: awaiting results: %s", error)
            self._spawn(self._pubsub.aclose())

    def _call(self, callback: Any, *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # a listener's bug must not stop the reader
            logger.exception("aceleryctl: a result listener failed")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
