"""The loop writer against a recording stand-in for a ``redis.asyncio`` connection.

The stand-in records every write and every connect, and answers reads from a queue
the test fills; the real Redis runs in ``tests/integration/test_loop_publish.py``
and the fault suite.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from aceleryctl.wires.connections import ConnectFailed, nothing_sent
from aceleryctl.wires.loop_writer import (
    SETTLED,
    WRITTEN,
    Item,
    LoopWriter,
    WriterClosed,
    pack_lpush,
)


class RecordingTransport(asyncio.Transport):
    """What the writer uses of the connection's transport, recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        if self.closed:
            raise ConnectionError("closed")
        self.writes.append(bytes(data))

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def reply(self, data: bytes) -> None:
        """Redis sends ``data``."""
        self.protocol.data_received(data)

    def drop(self, error: Exception) -> None:
        """The connection breaks."""
        self.protocol.connection_lost(error)


class RecordingStreamWriter:
    def __init__(self) -> None:
        self.transport = RecordingTransport()

    def close(self) -> None:
        self.transport.close()


class RecordingConnection:
    """What the loop writer uses of a ``redis.asyncio`` connection, recorded."""

    def __init__(self, refuse: BaseException | None = None) -> None:
        self.refuse = refuse
        self._writer: RecordingStreamWriter | None = None
        self.transport: RecordingTransport | None = None
        self.disconnects = 0

    async def connect(self) -> None:
        if self.refuse is not None:
            raise self.refuse
        self._writer = RecordingStreamWriter()
        self.transport = self._writer.transport

    def _close(self) -> None:
        self.disconnects += 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def disconnect(self) -> None:
        self._close()

    @property
    def writes(self) -> list[bytes]:
        return [] if self.transport is None else self.transport.writes


class Harness:
    def __init__(self, *connections: RecordingConnection) -> None:
        self.connections = list(connections)
        self.made: list[RecordingConnection] = []
        self.settled: list[tuple[str, BaseException | None, bool]] = []
        self.writer = LoopWriter(asyncio.get_running_loop(), self._new, connect_timeout=1.0)

    def _new(self) -> RecordingConnection:
        connection = self.connections.pop(0) if self.connections else RecordingConnection()
        self.made.append(connection)
        return connection

    def queue(self, key: str, payload: str) -> Item:
        return self.writer.queue(key, payload, self._on_settled)

    def _on_settled(self, item: Item, error: BaseException | None) -> None:
        self.settled.append((item.payload, error, item.written))

    async def until(self, predicate: Any) -> None:
        for _ in range(200):  # loop turns, not time
            if predicate():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition not reached within 200 loop turns")


def test_pack_lpush_is_resp() -> None:
    assert pack_lpush(b"q", [b"a", b"bc"]) == (
        b"*4\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$1\r\na\r\n$2\r\nbc\r\n"
    )


async def test_one_turns_messages_go_in_one_write_one_lpush_per_key() -> None:
    h = Harness()
    items = [h.queue("q1", "a"), h.queue("q2", "b"), h.queue("q1", "c")]
    await h.until(lambda: h.made and h.made[0].writes)
    connection = h.made[0]
    assert connection.writes == [pack_lpush(b"q1", [b"a", b"c"]) + pack_lpush(b"q2", [b"b"])]
    assert all(item.state == WRITTEN and item.written for item in items)
    connection.transport.reply(b":2\r\n")
    await h.until(lambda: len(h.settled) == 2)
    assert h.settled == [("a", None, True), ("c", None, True)]
    connection.transport.reply(b":1\r\n")
    await h.until(lambda: len(h.settled) == 3)
    assert h.settled[2] == ("b", None, True)
    assert h.writer.connects == 1


async def test_a_refused_connect_settles_everything_queued_as_never_sent() -> None:
    h = Harness(RecordingConnection(refuse=ConnectionRefusedError(111, "refused")))
    h.queue("q", "a")
    h.queue("q", "b")
    await h.until(lambda: len(h.settled) == 2)
    for _, error, written in h.settled:
        assert isinstance(error, ConnectFailed)
        assert nothing_sent(error)
        assert written is False
    assert not h.writer.connected
    h.queue("q", "c")  # the next message connects again
    await h.until(lambda: len(h.made) == 2 and h.writer.connected)


async def test_a_message_abandoned_before_its_write_is_never_written() -> None:
    h = Harness()
    kept = h.queue("q", "kept")
    dropped = h.queue("q", "dropped")
    assert h.writer.abandon(dropped) is True
    assert dropped.state == SETTLED
    await h.until(lambda: kept.written)
    assert h.made[0].writes == [pack_lpush(b"q", [b"kept"])]
    assert [payload for payload, _, _ in h.settled] == []  # nobody settles an abandoned one


async def test_an_overdue_reply_drops_the_connection_and_everything_on_it() -> None:
    h = Harness()
    first = h.queue("q", "a")
    await h.until(lambda: first.written)
    second = h.queue("r", "b")
    await h.until(lambda: second.written)
    assert h.writer.abandon(first) is False  # it may be in Redis: unknown
    await h.until(lambda: len(h.settled) == 2 and h.made[0].disconnects == 1)
    assert h.made[0].transport is not None
    assert h.made[0].transport.closed
    assert [(p, w) for p, _, w in h.settled] == [("a", True), ("b", True)]
    assert all(isinstance(e, TimeoutError) for _, e, _ in h.settled)
    assert not h.writer.connected
    third = h.queue("q", "c")  # a fresh connection, never the old one
    await h.until(lambda: third.written)
    assert len(h.made) == 2
    assert h.made[1].writes == [pack_lpush(b"q", [b"c"])]


async def test_an_error_reply_fails_only_its_lpush() -> None:
    h = Harness()
    h.queue("q1", "a")
    h.queue("q2", "b")
    await h.until(lambda: h.made and h.made[0].writes)
    transport = h.made[0].transport
    assert transport is not None
    transport.reply(b"-OOM command not allowed\r\n:1")  # the second reply in two reads
    transport.reply(b"\r\n")
    await h.until(lambda: len(h.settled) == 2)
    assert isinstance(h.settled[0][1], ResponseError)
    assert h.settled[1] == ("b", None, True)
    assert h.writer.connected  # an error reply is not a broken connection


async def test_a_lost_connection_settles_its_writes_and_reconnects_for_the_next() -> None:
    h = Harness()
    h.queue("q", "a")
    await h.until(lambda: h.made and h.made[0].writes)
    transport = h.made[0].transport
    assert transport is not None
    transport.drop(ConnectionResetError("Connection reset by peer"))
    await h.until(lambda: len(h.settled) == 1)
    _, error, written = h.settled[0]
    assert isinstance(error, ConnectionError)
    assert written
    assert not nothing_sent(error)
    h.queue("q", "b")
    await h.until(lambda: len(h.made) == 2 and h.writer.connected)


async def test_close_settles_queued_messages_as_never_sent_and_refuses_new_ones() -> None:
    h = Harness()
    written = h.queue("q", "a")
    await h.until(lambda: written.written)
    queued = h.queue("q", "b")
    h.writer.close()
    assert not queued.written
    await h.until(lambda: len(h.settled) == 2)
    by_payload = {p: (e, w) for p, e, w in h.settled}
    assert isinstance(by_payload["b"][0], WriterClosed)
    assert by_payload["b"][1] is False
    assert by_payload["a"][1] is True  # written: unknown
    late = h.queue("q", "c")
    assert late.state == SETTLED
    assert isinstance(h.settled[-1][1], WriterClosed)
    await h.until(lambda: h.made[0].disconnects == 1)


@pytest.mark.parametrize("refusal", [OSError("no route"), TimeoutError()])
async def test_every_connect_failure_is_a_connect_failed(refusal: BaseException) -> None:
    h = Harness(RecordingConnection(refuse=refusal))
    h.queue("q", "a")
    await h.until(lambda: h.settled)
    assert isinstance(h.settled[0][1], ConnectFailed)
    assert h.settled[0][1].__cause__ is refusal


async def test_closing_when_idle_lets_written_messages_settle_first() -> None:
    h = Harness()
    written = h.queue("q", "a")
    await h.until(lambda: written.written)
    h.writer.close_when_idle(30.0)
    refused = h.queue("q", "b")
    assert refused.state == SETTLED
    assert isinstance(h.settled[-1][1], WriterClosed)
    transport = h.made[0].transport
    assert transport is not None
    transport.reply(b":1\r\n")
    await h.until(lambda: ("a", None, True) in h.settled)
    await h.until(lambda: h.made[0].disconnects == 1)  # closed as soon as it was idle


def test_a_loop_that_ends_closes_its_writers_connection() -> None:
    made: list[RecordingConnection] = []
    settled: list[BaseException | None] = []

    async def scenario() -> None:
        def new() -> RecordingConnection:
            made.append(RecordingConnection())
            return made[-1]

        writer = LoopWriter(asyncio.get_running_loop(), new, connect_timeout=1.0)
        item = writer.queue("q", "a", lambda _item, error: settled.append(error))
        for _ in range(50):
            if item.written:
                break
            await asyncio.sleep(0)
        assert item.written
        # Returning without closing: asyncio.run cancels the writer's tasks.

    asyncio.run(scenario())
    transport = made[0].transport
    assert transport is not None
    assert transport.aborted  # closed at once as the loop ended, not left to the collector
    assert made[0]._writer is None  # the connection forgot it: no unclosed warning
    assert len(settled) == 1
    assert isinstance(settled[0], ConnectionError)  # written, never answered: unknown


async def test_a_reply_that_is_not_an_lpush_reply_drops_the_connection() -> None:
    h = Harness()
    item = h.queue("q", "a")
    await h.until(lambda: item.written)
    transport = h.made[0].transport
    assert transport is not None
    transport.reply(b"+OK\r\n")  # a status reply: this connection is out of step
    await h.until(lambda: h.settled)
    assert isinstance(h.settled[0][1], ConnectionError)
    assert h.settled[0][2] is True  # written: unknown
    assert transport.closed
    assert not h.writer.connected
