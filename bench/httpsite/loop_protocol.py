"""A minimal Redis client on the event loop, for one measurement prototype only.

It speaks just enough RESP to send ``SELECT`` once and then ``LPUSH key v1 .. vN``
commands, and read their integer replies. Everything pushed during one loop turn
goes out in one ``transport.write`` as one ``LPUSH`` per key; each command's
reply settles the futures of the values it carried. Loop-thread only; no
timeouts, no reconnects: a benchmark tool, not a client library.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["LpushWriter"]


def _command(*parts: bytes) -> bytes:
    head = b"*%d\r\n" % len(parts)
    return head + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class LpushWriter(asyncio.Protocol):
    """Batches ``LPUSH`` per loop turn over one connection."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[bytes, list[tuple[bytes, asyncio.Future[None]]]] = {}
        self._scheduled = False
        self._waiting: collections.deque[list[asyncio.Future[None]]] = collections.deque()
        self._buffer = b""

    @classmethod
    async def connect(cls, host: str, port: int, db: int) -> LpushWriter:
        """Open the connection and select ``db``.

        Raises:
            OSError: the connection failed.
            RuntimeError: ``SELECT`` was refused.
        """
        loop = asyncio.get_running_loop()
        _, writer = await loop.create_connection(cls, host, port)
        selected: asyncio.Future[None] = loop.create_future()
        writer._waiting.append([selected])
        assert writer._transport is not None
        writer._transport.write(_command(b"SELECT", b"%d" % db))
        await selected
        return writer

    async def push(self, key: str, value: str) -> None:
        """Queue ``value`` for ``key``; return once Redis has answered its ``LPUSH``.

        Raises:
            ConnectionError: the connection was lost first.
            RuntimeError: Redis answered with an error.
        """
        await self.queue(key, value)

    def queue(self, key: str, value: str) -> asyncio.Future[None]:
        """Queue ``value`` for ``key`` without waiting: the future settles as
        :meth:`push` returns or raises."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.setdefault(key.encode(), []).append((value.encode(), future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        if self._transport is None:
            _fail([f for items in pending.values() for _, f in items], "not connected")
            return
        chunks = []
        for key, items in pending.items():
            chunks.append(_command(b"LPUSH", key, *(value for value, _ in items)))
            self._waiting.append([f for _, f in items])
        self._transport.write(b"".join(chunks))

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            futures = self._waiting.popleft()
            if line[:1] == b"-":
                _fail(futures, line[1:].decode(errors="replace"), RuntimeError)
                continue
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        while self._waiting:
            _fail(self._waiting.popleft(), f"connection lost: {exc}")


def _fail(
    futures: list[asyncio.Future[None]], why: str, kind: type[Exception] = ConnectionError
) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(kind(why))
