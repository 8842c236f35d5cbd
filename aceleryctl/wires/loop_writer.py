"""Writing direct-path messages to Redis from the event loop's own thread.

A :class:`LoopWriter` serves one event loop for one controller (``LOOP_PUBLISH``).
Callers hand it an encoded message and its list key; everything handed over
during one loop turn goes out in one write as one ``LPUSH`` per key. The
connection is made by ``redis.asyncio`` like the publishing threads' own (same
host, database, credentials, TLS and socket bounds; its handshake included);
then the writer takes its transport over with a protocol of its own
(:class:`_Replies`), which parses the integer replies as they arrive and settles
the messages each ``LPUSH`` carried, with no task and no stream reader per reply.

What an outcome proves, per message (see :class:`Item`):

* settled with no error: Redis replied to the ``LPUSH`` that carried it;
* settled with an error before it was written (``written`` false): no byte of
  it left the process (a refused or timed-out connect, a closed writer);
* settled with an error after it was written: it may or may not be in Redis.

Nothing is ever written twice. Loop thread only, except :meth:`LoopWriter.close_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import ResponseError

from aceleryctl.compat.redis_async import close_now, stream_writer
from aceleryctl.wires.connections import ConnectFailed

__all__ = ["QUEUED", "SETTLED", "WRITTEN", "Item", "LoopWriter", "WriterClosed"]

#: :attr:`Item.state` values.
QUEUED: Final = 0
WRITTEN: Final = 1
SETTLED: Final = 2

Settle = Callable[["Item", "BaseException | None"], None]


class WriterClosed(ConnectionError):
    """The controller closed its loop writer before this message was written."""


class Item:
    """One message handed to a :class:`LoopWriter`.

    Attributes:
        key: the Redis list key.
        payload: the encoded envelope.
        state: :data:`QUEUED`, :data:`WRITTEN` or :data:`SETTLED`.
        written: whether any of it may have reached Redis (true from the moment
            its write was handed to the transport).
    """

    __slots__ = ("key", "on_settled", "payload", "state", "written")

    def __init__(self, key: str, payload: str, on_settled: Settle) -> None:
        self.key = key
        self.payload = payload
        self.on_settled = on_settled
        self.state = QUEUED
        self.written = False

    def settle(self, error: BaseException | None) -> None:
        """Settle once; later calls do nothing. Loop thread."""
        if self.state == SETTLED:
            return
        self.state = SETTLED
        on_settled, self.on_settled = self.on_settled, _settled_already
        on_settled(self, error)  # dropped first: the caller's job refers to this item


def _settled_already(item: Item, error: BaseException | None) -> None:
    """What a settled item's callback becomes (no reference cycle kept alive)."""


def pack_lpush(key: bytes, values: list[bytes]) -> bytes:
    """``LPUSH key v1 .. vN`` in RESP. Pure."""
    parts = [b"*%d\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n" % (len(values) + 2, len(key), key)]
    for value in values:
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


class LoopWriter:
    """Batches ``LPUSH`` per loop turn over one connection.

    A connection that fails or is aborted is dropped; the next message queued
    connects again. While connected, one idle task watches for the loop's
    shutdown (``asyncio.run`` cancels it), so that a loop that ends closes its
    connection instead of leaving it to the garbage collector.

    Args:
        loop: the event loop this writer serves.
        new_connection: makes an unconnected ``redis.asyncio`` connection.
        connect_timeout: seconds a connect (and its handshake) may take.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        new_connection: Callable[[], Any],
        *,
        connect_timeout: float,
    ) -> None:
        self._loop = loop
        self._new_connection = new_connection
        self._connect_timeout = connect_timeout
        self._queued: list[Item] = []
        self._flush_scheduled = False
        self._inflight: collections.deque[list[Item]] = collections.deque()
        self._connection: Any = None
        self._transport: asyncio.WriteTransport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False
        self._closing: asyncio.TimerHandle | None = None
        self.connects = 0  #: connections made (a reconnect counts)

    @property
    def connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._transport is not None

    def queue(self, key: str, payload: str, on_settled: Settle) -> Item:
        """Queue a message for the next write; ``on_settled(item, error)`` runs on
        the loop thread once its outcome is known. Never raises; a closed writer
        settles it at once with :class:`WriterClosed`."""
        item = Item(key, payload, on_settled)
        if self._closed or self._closing is not None:
            item.settle(WriterClosed("the controller is closed"))
            return item
        self._queued.append(item)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return item

    def abandon(self, item: Item) -> bool:
        """The caller stops waiting for ``item``. Returns ``True`` if it was never
        written (it never will be, and is settled by nobody); ``False`` if it may
        be in Redis: then the connection is overdue and is dropped, which settles
        every message on it as unknown."""
        if item.state == QUEUED:
            item.state = SETTLED
            item.on_settled = _settled_already
            with contextlib.suppress(ValueError):
                self._queued.remove(item)
            return True
        if item.state == WRITTEN:
            self.abort(TimeoutError("no reply from Redis within the dispatch deadline"))
        return False

    def abort(self, error: BaseException) -> None:
        """Drop the connection: messages written on it settle with ``error``
        (unknown), queued ones wait for the next connection."""
        connection, self._connection = self._connection, None
        transport, self._transport = self._transport, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        self._fail_inflight(error)
        if transport is not None:
            # abort, not close: no flush and no TLS close_notify exchange, which needs
            # loop turns a loop that is about to end would never run (its socket was
            # then left to the garbage collector). Every message on it is settled above.
            transport.abort()
        if connection is not None:
            close_now(connection)

    def close(self) -> None:
        """Stop: queued messages settle with :class:`WriterClosed` (nothing sent),
        written ones as unknown; the connection is closed. Loop thread."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.cancel()
        closed = WriterClosed("the controller is closed")
        queued, self._queued = self._queued, []
        for item in queued:
            item.settle(closed)
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        self.abort(ConnectionError("the controller closed its connection"))

    def close_when_idle(self, timeout: float) -> None:
        """Refuse new messages, let those queued and written settle for at most
        ``timeout`` seconds, then :meth:`close`. Loop thread."""
        if self._closed or self._closing is not None:
            return
        self._closing = self._loop.call_later(timeout, self.close)
        self._close_if_idle()

    def close_threadsafe(self, timeout: float = 0.0) -> None:
        """:meth:`close_when_idle`, from any thread; a closed loop has nothing left
        to close."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.close_when_idle, timeout)

    def _close_if_idle(self) -> None:
        if self._closing is not None and not self._queued and not self._inflight:
            self.close()

    # -- writing ------------------------------------------------------------------

    def _flush(self) -> None:
        # The end of the loop turn the first message was queued in.
        self._flush_scheduled = False
        if not self._queued or self._closed:
            return
        if self._transport is not None:
            self._write()
        elif self._connecting is None:
            self._connecting = self._loop.create_task(self._connect_and_write())

    async def _connect_and_write(self) -> None:
        try:
            connected = await self._connect()
        finally:
            self._connecting = None
        if connected:
            self._write()  # everything queued while connecting, too
        else:
            self._close_if_idle()

    async def _connect(self) -> bool:
        connection = self._new_connection()
        try:
            await asyncio.wait_for(connection.connect(), self._connect_timeout)
            transport = stream_writer(connection).transport
        except asyncio.CancelledError:
            await _disconnect(connection)
            raise
        except Exception as exc:
            await _disconnect(connection)
            failed = ConnectFailed(f"could not connect to Redis: {type(exc).__name__}: {exc}")
            failed.__cause__ = exc
            queued, self._queued = self._queued, []
            for item in queued:  # nothing of theirs left the process
                item.settle(failed)
            return False
        self.connects += 1
        transport.set_protocol(_Replies(self, transport))
        self._connection, self._transport = connection, transport
        self._watch = self._loop.create_task(self._watch_the_loop())
        return True

    def _write(self) -> None:
        queued, self._queued = self._queued, []
        by_key: dict[str, list[Item]] = {}
        for item in queued:
            if item.state == QUEUED:
                by_key.setdefault(item.key, []).append(item)
        if not by_key:
            return
        chunks = []
        for key, items in by_key.items():
            for item in items:
                item.state = WRITTEN
                item.written = True
            chunks.append(pack_lpush(key.encode(), [i.payload.encode() for i in items]))
            self._inflight.append(items)
        transport = self._transport
        assert transport is not None  # _write runs only while connected
        try:  # the bytes are the transport's from here on
            transport.write(b"".join(chunks))
        except Exception as exc:  # the transport is closing
            self.abort(exc)

    # -- replies (called by _Replies, on the loop thread) -------------------------

    def replied(self, error: BaseException | None) -> None:
        """One ``LPUSH`` reply: settle the oldest unanswered write's messages."""
        if not self._inflight:
            self.abort(ConnectionError("Redis sent a reply nobody asked for"))
            return
        for item in self._inflight.popleft():
            item.settle(error)
        if self._closing is not None:
            self._close_if_idle()

    def lost(self, transport: asyncio.BaseTransport, error: BaseException) -> None:
        """The connection behind ``transport`` broke (or sent what is not a reply)."""
        if transport is self._transport:
            self.abort(error)

    async def _watch_the_loop(self) -> None:
        try:
            await self._loop.create_future()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            if self._watch is asyncio.current_task() and not self._closed:
                self._watch = None
                self.close()  # the loop is shutting down: close, synchronously (no task)
            raise

    def _fail_inflight(self, error: BaseException) -> None:
        inflight, self._inflight = self._inflight, collections.deque()
        for items in inflight:
            for item in items:
                item.settle(error)


class _Replies(asyncio.Protocol):
    """Parses the replies to ``LPUSH`` (RESP integers, or errors) as they arrive."""

    def __init__(self, writer: LoopWriter, transport: asyncio.BaseTransport) -> None:
        self._writer = writer
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        writer = self._writer
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            kind = buffer[start : start + 1]
            if kind == b":":
                writer.replied(None)
            elif kind == b"-":
                text = buffer[start + 1 : end].decode(errors="replace")
                writer.replied(ResponseError(text))  # Redis refused it: nothing stored
            else:
                self._buffer = b""
                writer.lost(self._transport, ConnectionError(f"unexpected reply {kind!r}"))
                return
            start = end + 2
        self._buffer = buffer[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionError("Redis closed the connection")
        self._writer.lost(self._transport, error)


async def _disconnect(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect()
