"""The awaiting side's pieces without a server: backoff, the subscriber, batched reads.

The subscriber and the reads run against recording fakes of ``redis.asyncio``'s
pub/sub and client (what was sent is asserted); the real thing is exercised in
``tests/integration/awaiting``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from celery import Celery

from aceleryctl.awaiting import aget, backoff, clients
from aceleryctl.awaiting.clients import RedisEndpoint
from aceleryctl.awaiting.reads import MAX_KEYS, BatchedReads
from aceleryctl.awaiting.subscriber import Subscriber, SubscriberLost

# -- backoff ------------------------------------------------------------------------


def test_delays_double_from_50_ms_up_to_1_s() -> None:
    pauses = backoff.delays()
    assert [next(pauses) for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first": 0}, "first must be a positive"),
        ({"cap": float("inf")}, "cap must be a positive"),
        ({"first": 2.0, "cap": 1.0}, "must not exceed cap"),
        ({"factor": 0.5}, "factor must be at least 1"),
    ],
)
def test_delays_refuse_bad_bounds(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next(backoff.delays(**kwargs))


# -- the subscriber -----------------------------------------------------------------


class FakePubSub:
    """Records commands; ``get_message`` hands out what the test pushes."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[bytes, ...]]] = []
        self.inbox: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self.fail_subscribe: Exception | None = None
        self.closed = False

    async def subscribe(self, *channels: bytes) -> None:
        if self.fail_subscribe is not None:
            raise self.fail_subscribe
        self.commands.append(("SUBSCRIBE", tuple(sorted(channels))))

    async def unsubscribe(self, *channels: bytes) -> None:
        self.commands.append(("UNSUBSCRIBE", tuple(sorted(channels))))

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            item = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def confirm(self, *channels: bytes) -> None:
        for channel in channels:
            self.inbox.put_nowait({"type": "subscribe", "channel": channel, "data": 1})

    def publish(self, channel: bytes, data: bytes) -> None:
        self.inbox.put_nowait({"type": "message", "channel": channel, "data": data})

    async def aclose(self) -> None:
        self.closed = True


class FakeClient:
    def __init__(self) -> None:
        self.pubsub_made = FakePubSub()

    def pubsub(self) -> FakePubSub:
        return self.pubsub_made


class RecordingListener:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.resyncs = 0
        self.lost: list[SubscriberLost] = []

    def on_message(self, payload: bytes) -> None:
        self.messages.append(payload)

    def on_resync(self) -> None:
        self.resyncs += 1

    def on_lost(self, error: SubscriberLost) -> None:
        self.lost.append(error)


@pytest.fixture
async def fake() -> tuple[Subscriber, FakePubSub]:
    client = FakeClient()
    return Subscriber(client), client.pubsub_made  # type: ignore[arg-type]


async def _settle() -> None:
    """Let the loop run the subscriber's flusher and reader until they are idle."""
    for _ in range(50):
        await asyncio.sleep(0)


async def _subscribed(subscriber: Subscriber, pubsub: FakePubSub, key: bytes) -> RecordingListener:
    """A listener on ``key`` whose subscription the fake has confirmed."""
    listener = RecordingListener()
    listen = asyncio.ensure_future(subscriber.listen(key, listener))
    await _settle()
    pubsub.confirm(key)
    await listen
    return listener


async def test_waits_of_one_turn_share_one_subscribe_and_see_their_messages(
    fake: tuple[Subscriber, FakePubSub],
) -> None:
    subscriber, pubsub = fake
    a, b, c = RecordingListener(), RecordingListener(), RecordingListener()
    listens = [
        asyncio.ensure_future(subscriber.listen(ch, lst))
        for ch, lst in ((b"k1", a), (b"k2", b), (b"k1", c))
    ]
    await _settle()
    assert pubsub.commands == [("SUBSCRIBE", (b"k1", b"k2"))]
    assert not any(listen.done() for listen in listens)

    pubsub.confirm(b"k1", b"k2")
    await asyncio.gather(*listens)
    pubsub.publish(b"k1", b"meta-1")
    pubsub.publish(b"k2", b"meta-2")
    await _settle()

    assert (a.messages, b.messages, c.messages) == ([b"meta-1"], [b"meta-2"], [b"meta-1"])
    assert subscriber.channels == {b"k1", b"k2"}
    await subscriber.aclose()


async def test_the_last_listener_out_unsubscribes(fake: tuple[Subscriber, FakePubSub]) -> None:
    subscriber, pubsub = fake
    a, b = RecordingListener(), RecordingListener()
    listens = [asyncio.ensure_future(subscriber.listen(b"k", lst)) for lst in (a, b)]
    await _settle()
    pubsub.confirm(b"k")
    await asyncio.gather(*listens)

    subscriber.unlisten(b"k", a)
    await _settle()
    assert pubsub.commands == [("SUBSCRIBE", (b"k",))]
    subscriber.unlisten(b"k", b)
    subscriber.unlisten(b"k", b)  # twice: harmless
    await _settle()

    assert pubsub.commands[-1] == ("UNSUBSCRIBE", (b"k",))
    assert subscriber.channels == frozenset()
    await subscriber.aclose()


async def test_a_cancelled_listen_does_not_cancel_the_others_confirmation(
    fake: tuple[Subscriber, FakePubSub],
) -> None:
    subscriber, pubsub = fake
    a, b = RecordingListener(), RecordingListener()
    first = asyncio.ensure_future(subscriber.listen(b"k", a))
    second = asyncio.ensure_future(subscriber.listen(b"k", b))
    await _settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    subscriber.unlisten(b"k", a)

    pubsub.confirm(b"k")
    await second
    assert subscriber.channels == {b"k"}
    await subscriber.aclose()


async def test_a_second_confirmation_asks_listeners_to_read_again(
    fake: tuple[Subscriber, FakePubSub],
) -> None:
    subscriber, pubsub = fake
    a = await _subscribed(subscriber, pubsub, b"k")

    pubsub.confirm(b"k")  # redis-py resubscribed after a reconnect
    await _settle()

    assert a.resyncs == 1
    await subscriber.aclose()


async def test_a_lost_connection_tells_every_listener_and_closes(
    fake: tuple[Subscriber, FakePubSub],
) -> None:
    subscriber, pubsub = fake
    a = await _subscribed(subscriber, pubsub, b"k")

    pubsub.inbox.put_nowait(ConnectionError("reset by peer"))
    await _settle()

    assert len(a.lost) == 1
    assert isinstance(a.lost[0].__cause__, ConnectionError)
    assert subscriber.closed
    with pytest.raises(SubscriberLost):
        await subscriber.listen(b"other", RecordingListener())
    await subscriber.aclose()
    assert pubsub.closed


async def test_a_failed_subscribe_fails_the_waiting_listen(
    fake: tuple[Subscriber, FakePubSub],
) -> None:
    subscriber, pubsub = fake
    pubsub.fail_subscribe = ConnectionError("refused")
    a = RecordingListener()

    with pytest.raises(SubscriberLost, match="could not subscribe"):
        await subscriber.listen(b"k", a)
    subscriber.unlisten(b"k", a)
    assert subscriber.closed
    await subscriber.aclose()


# -- the per-loop registry ---------------------------------------------------------


def test_a_closed_loops_endpoints_are_forgotten() -> None:
    app = Celery("registry", set_as_current=False, backend="redis://127.0.0.1:1/0")

    async def endpoint() -> RedisEndpoint | None:
        return clients.endpoint_for(app.backend)  # connects nothing

    first = asyncio.new_event_loop()
    try:
        made = first.run_until_complete(endpoint())
        assert made is not None
        assert first.run_until_complete(endpoint()) is made  # one per (loop, backend)
    finally:
        first.close()
    assert first in clients._endpoints
    second = asyncio.new_event_loop()
    try:
        assert second.run_until_complete(endpoint()) is not made
        assert first not in clients._endpoints
        second.run_until_complete(clients.aclose_endpoints())
    finally:
        second.close()
        app.close()
    other = Celery("other", set_as_current=False, backend="cache+memory://")
    try:
        assert asyncio.run(_endpoint_for(other)) is None  # not Redis: polled
    finally:
        other.close()


async def _endpoint_for(app: Celery) -> RedisEndpoint | None:
    return clients.endpoint_for(app.backend)


# -- batched reads ------------------------------------------------------------------


class FakeRedis:
    def __init__(self, store: dict[bytes, bytes], fail: Exception | None = None) -> None:
        self.store = store
        self.fail = fail
        self.mgets: list[list[bytes]] = []

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.mgets.append(list(keys))
        if self.fail is not None:
            raise self.fail
        return [self.store.get(k) for k in keys]


async def test_reads_of_one_turn_are_one_mget() -> None:
    client = FakeRedis({b"a": b"1", b"b": b"2"})
    reads = BatchedReads(client)  # type: ignore[arg-type]

    values = await asyncio.gather(
        reads.get(b"a"), reads.get(b"b"), reads.get(b"a"), reads.get(b"z")
    )

    assert values == [b"1", b"2", b"1", None]
    assert client.mgets == [[b"a", b"b", b"z"]]
    await reads.aclose()


async def test_many_reads_are_split_into_bounded_mgets() -> None:
    keys = [f"k{i}".encode() for i in range(MAX_KEYS + 10)]
    client = FakeRedis({k: k for k in keys})
    reads = BatchedReads(client)  # type: ignore[arg-type]

    values = await asyncio.gather(*(reads.get(k) for k in keys))

    assert values == keys
    assert [len(m) for m in client.mgets] == [MAX_KEYS, 10]
    await reads.aclose()


async def test_a_failed_mget_fails_its_readers() -> None:
    reads = BatchedReads(FakeRedis({}, fail=ConnectionError("down")))  # type: ignore[arg-type]

    with pytest.raises(ConnectionError, match="down"):
        await reads.get(b"a")
    await reads.aclose()


# -- aget without a backend: eager results, argument checks -------------------------


async def test_an_eager_result_is_returned_at_once() -> None:
    app = Celery("eager", set_as_current=False, broker="memory://", backend="redis://127.0.0.1:1/0")
    app.conf.task_always_eager = True

    @app.task(shared=False, name="eager.div")
    def div(x: int, y: int) -> float:
        return x / y

    try:
        assert await aget(div.delay(6, 3), timeout=0) == 2.0
        failed = div.delay(1, 0)
        with pytest.raises(ZeroDivisionError):
            await aget(failed)
        assert isinstance(await aget(failed, propagate=False), ZeroDivisionError)
        with pytest.raises(TypeError, match="propagate must be True or False"):
            await aget(failed, propagate=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least 0 seconds"):
            await aget(failed, timeout=float("nan"))
    finally:
        app.close()
