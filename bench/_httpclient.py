"""A small HTTP/1.1 keep-alive load client on asyncio streams, for ``bench.http``.

It is the fallback when ``wrk`` is not installed, and it drives the Redis-pause
scenario (where each request's start, end and status are wanted). Each of
``connections`` coroutines holds one connection and sends ``GET path`` requests
back to back until ``duration`` seconds have passed; a request still in flight
then is waited for, up to ``request_timeout``. Bounded in time throughout.

Handles ``Content-Length`` and chunked bodies and ``Connection: close``; nothing
else (no pipelining, no redirects, no TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

__all__ = ["Record", "Result", "get_once", "run_load"]


@dataclass(frozen=True, slots=True)
class Record:
    start: float  # time.perf_counter() when the request was written
    end: float
    status: int  # 0: the connection failed or the request timed out
    detail: str = ""  # the start of the body of a response other than 2xx

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Result:
    duration: float = 0.0  # seconds from the first request to the last response
    records: list[Record] = field(default_factory=list)
    errors: int = 0  # connection errors and timeouts

    @property
    def rate(self) -> float:
        return len(self.records) / self.duration if self.duration else 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Read one response; return (status, whether the server will close, body)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection" and value == b"close":
            close = True
    body = b""
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]  # the chunk and its CRLF
            if size == 0:
                break
    elif length:
        body = await reader.readexactly(length)
    return status, close, body


def _request(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()


async def get_once(host: str, port: int, path: str, timeout: float = 10.0) -> int:
    """One request on a fresh connection; its status (0 on error or timeout)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_request(host, port, path))
                status, _, _ = await _read_response(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        return 0
    return status


async def run_load(
    host: str,
    port: int,
    path: str,
    *,
    connections: int,
    duration: float,
    request_timeout: float = 60.0,
) -> Result:
    """``connections`` keep-alive connections sending requests for ``duration`` seconds."""
    request = _request(host, port, path)
    result = Result()
    started = time.perf_counter()
    stop_at = started + duration

    async def one_connection() -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(request_timeout):
                        if writer is None:
                            reader, writer = await asyncio.open_connection(host, port)
                        assert reader is not None
                        writer.write(request)
                        status, close, body = await _read_response(reader)
                except (OSError, TimeoutError, ValueError, IndexError,
                        asyncio.IncompleteReadError):  # fmt: skip
                    result.errors += 1
                    result.records.append(Record(t0, time.perf_counter(), 0))
                    if writer is not None:
                        writer.close()
                    writer = reader = None
                    await asyncio.sleep(0.01)  # do not spin on a refusing server
                    continue
                detail = "" if 200 <= status < 300 else body[:64].decode(errors="replace")
                result.records.append(Record(t0, time.perf_counter(), status, detail))
                if close:
                    writer.close()
                    writer = reader = None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    result.duration = max((r.end for r in result.records), default=started) - started
    return result
