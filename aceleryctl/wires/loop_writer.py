"""Writing direct-path messages to Redis from the event loop's own thread.

A :class:`LoopWriter` serves one event loop for one controller (``LOOP_PUBLISH``).
Callers hand it an encoded message and its list key; everything handed over
during one loop turn goes out in one write as one ``LPUSH`` per key, on one
``redis.asyncio`` connection made like the publishing threads' own (same host,
database, credentials, TLS and socket bounds). Each ``LPUSH`` reply settles the
messages it carried.

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

from aceleryctl.compat.redis_async import stream_writer
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
        self.on_settled(self, error)


def pack_lpush(key: bytes, values: list[bytes]) -> bytes:
    """``LPUSH key v1 .. vN`` in RESP. Pure."""
    parts = [b"*%d\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n" % (len(values) + 2, len(key), key)]
    for value in values:
        parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(parts)


class LoopWriter:
    """Batches ``LPUSH`` per loop turn over one ``redis.asyncio`` connection.

    Two tasks run while the writer is in use: the pump (connects when needed and
    writes what was queued) and the reader (reads one reply per ``LPUSH``, in
    order). A connection that fails or is aborted is dropped; the next message
    queued connects again.

    Args:
        loop: the event loop this writer serves.
        new_connection: makes an unconnected ``redis.asyncio`` connection; its
            socket timeout bounds the wait for a reply once a command was written
            (past it the connection is dropped and its messages are unknown).
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
        self._replies = asyncio.Event()
        self._connection: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._closing: asyncio.TimerHandle | None = None
        self.connects = 0  #: connections made (a reconnect counts)

    @property
    def connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._connection is not None

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
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
        self._fail_inflight(error)
        if connection is not None:
            self._loop.create_task(_disconnect(connection))

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

    # -- the pump -----------------------------------------------------------------

    def _flush(self) -> None:
        # The end of the loop turn the first message was queued in.
        self._flush_scheduled = False
        if not self._queued or self._closed:
            return
        if self._connection is not None:
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

    def _shut_with_the_loop(self) -> None:
        # Close the transport synchronously: no task can run to disconnect any more.
        connection, self._connection = self._connection, None
        self._reader = None
        self.close()  # with no connection left, it starts no task
        if connection is not None:
            with contextlib.suppress(Exception):
                stream_writer(connection).close()

    async def _connect(self) -> bool:
        connection = self._new_connection()
        try:
            await asyncio.wait_for(connection.connect(), self._connect_timeout)
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
        self._connection = connection
        self._reader = self._loop.create_task(self._read(connection))
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
        self._replies.set()
        try:  # the bytes are the transport's from here on
            stream_writer(self._connection).writelines(chunks)
        except Exception as exc:  # the transport is closing
            self.abort(exc)

    # -- the reader ---------------------------------------------------------------

    async def _read(self, connection: Any) -> None:
        try:
            await self._read_replies(connection)
        except asyncio.CancelledError:
            if self._reader is asyncio.current_task() and not self._closed:
                self._shut_with_the_loop()  # not aborted: the loop itself is shutting down
            raise

    async def _read_replies(self, connection: Any) -> None:
        while True:
            if not self._inflight:
                self._replies.clear()
                await self._replies.wait()
                continue
            try:  # bounded by the connection's socket timeout
                await connection.read_response()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:  # Redis refused this LPUSH (nothing of it stored)
                for item in self._inflight.popleft():
                    item.settle(exc)
                continue
            except Exception as exc:
                if connection is self._connection:
                    self._reader = None  # this task ends here; do not cancel it
                    self.abort(exc)
                return
            for item in self._inflight.popleft():
                item.settle(None)
            if self._closing is not None:
                self._close_if_idle()

    def _fail_inflight(self, error: BaseException) -> None:
        inflight, self._inflight = self._inflight, collections.deque()
        for items in inflight:
            for item in items:
                item.settle(error)


async def _disconnect(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect()
