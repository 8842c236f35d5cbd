"""``aget`` against a real worker: tasks, groups, chords, chains, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import TimeoutError as CeleryTimeoutError

from aceleryctl import AsyncCeleryController, aget
from aceleryctl.awaiting.clients import endpoint_for
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until_async
from tests.integration.awaiting import polled
from tests.integration.celery_app import IntendedFailure, add, fail, parked, sleep_briefly, xsum

RESULT_TIMEOUT = 20.0


def subscribed_channels(app: Celery) -> frozenset[bytes]:
    endpoint = endpoint_for(app.backend)
    assert endpoint is not None
    return endpoint.subscriber.channels


def server_subscribers(redis_server: RedisServer, channel: bytes) -> int:
    client = redis_server.client(1)
    try:
        return int(client.pubsub_numsub(channel)[0][1])
    finally:
        client.close()


async def test_a_task_value_without_a_thread(controller: AsyncCeleryController) -> None:
    result = await controller.delay(add, 2, 3)
    threads = threading.active_count()

    assert await aget(result, timeout=RESULT_TIMEOUT) == 5

    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert result.state == "SUCCESS"  # answered from the cache aget filled


async def test_a_failure_raises_with_propagate_and_is_returned_without(
    controller: AsyncCeleryController,
) -> None:
    result = await controller.delay(fail, "boom")

    with pytest.raises(IntendedFailure, match="boom"):
        await aget(result, timeout=RESULT_TIMEOUT)
    returned = await aget(result, timeout=RESULT_TIMEOUT, propagate=False)
    assert isinstance(returned, IntendedFailure)


async def test_a_result_finished_before_aget_is_read_from_the_store(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(add, 20, 22)
    await asyncio.to_thread(result.get, timeout=RESULT_TIMEOUT)
    fresh = celery_app.AsyncResult(result.id)  # built by hand, nothing cached

    assert await aget(fresh, timeout=RESULT_TIMEOUT) == 42


async def test_timeout_raises_celerys_timeout_error_and_unsubscribes(
    controller: AsyncCeleryController, celery_app: Celery
) -> None:
    result = await controller.delay(sleep_briefly, 3.0)

    with pytest.raises(CeleryTimeoutError):
        await aget(result, timeout=0.2)

    await wait_until_async(
        lambda: not subscribed_channels(celery_app), timeout=5.0, message="still subscribed"
    )
    assert await aget(result, timeout=RESULT_TIMEOUT) == 3.0


async def test_timeout_zero_reads_once(controller: AsyncCeleryController) -> None:
    running = await controller.delay(sleep_briefly, 2.0)
    with pytest.raises(CeleryTimeoutError):
        await aget(running, timeout=0)
    done = await controller.delay(add, 1, 1)
    await aget(done, timeout=RESULT_TIMEOUT)
    assert await aget(done, timeout=0) == 2


async def test_cancelling_the_wait_unsubscribes(
    controller: AsyncCeleryController, celery_app: Celery, redis_server: RedisServer
) -> None:
    result = await controller.delay(parked, 1)  # no worker consumes its queue
    key = celery_app.backend.get_key_for_task(result.id)
    channel = key if isinstance(key, bytes) else key.encode()
    waiting = asyncio.create_task(aget(result))
    await wait_until_async(
        lambda: server_subscribers(redis_server, channel) == 1,
        timeout=5.0,
        message="the wait never subscribed",
    )

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert subscribed_channels(celery_app) == frozenset()
    await wait_until_async(
        lambda: server_subscribers(redis_server, channel) == 0,
        timeout=5.0,
        message="the channel is still subscribed on the server",
    )


def subscriber_address(app: Celery) -> str:
    """``host:port`` of this loop's aget subscriber connection, as the server lists it."""
    endpoint = endpoint_for(app.backend)
    assert endpoint is not None
    connection = endpoint.subscriber._pubsub.connection
    assert connection is not None
    assert connection._writer is not None
    host, port = connection._writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


async def test_a_wait_survives_its_subscriber_connection_being_killed(
    controller: AsyncCeleryController, celery_app: Celery, redis_server: RedisServer
) -> None:
    result = await controller.delay(sleep_briefly, 1.5)
    key = celery_app.backend.get_key_for_task(result.id)
    channel = key if isinstance(key, bytes) else key.encode()
    waiting = asyncio.create_task(aget(result, timeout=RESULT_TIMEOUT))
    await wait_until_async(
        lambda: server_subscribers(redis_server, channel) == 1,
        timeout=5.0,
        message="the wait never subscribed",
    )
    # Only aget's own connection: killing every subscriber of the results database
    # would also cut Celery's per-thread result consumers, whose `.get()` can then
    # miss a result for good (see docs/results.md), in whichever test comes next.
    address = subscriber_address(celery_app)
    admin = redis_server.client(1)
    try:
        assert admin.client_kill_filter(addr=address) == 1
    finally:
        admin.close()

    assert await waiting == 1.5


async def test_a_group_returns_its_values_in_order(controller: AsyncCeleryController) -> None:
    result = await controller.delay(group(add.s(i, i) for i in range(5)))

    assert await aget(result, timeout=RESULT_TIMEOUT) == [0, 2, 4, 6, 8]


async def test_a_group_with_a_failure(controller: AsyncCeleryController) -> None:
    result = await controller.delay(group(add.s(1, 1), fail.s("in a group"), add.s(2, 2)))

    with pytest.raises(IntendedFailure, match="in a group"):
        await aget(result, timeout=RESULT_TIMEOUT)
    values = await aget(result, timeout=RESULT_TIMEOUT, propagate=False)
    assert values[0] == 2
    assert isinstance(values[1], IntendedFailure)
    assert values[2] == 4


async def test_a_chord_returns_its_callbacks_value(controller: AsyncCeleryController) -> None:
    result = await controller.delay(chord((add.s(i, i) for i in range(4)), xsum.s()))

    assert await aget(result, timeout=RESULT_TIMEOUT) == 12


async def test_a_chain_returns_its_last_tasks_value(controller: AsyncCeleryController) -> None:
    result = await controller.delay(chain(add.s(1, 2), add.s(3), add.s(4)))

    assert await aget(result, timeout=RESULT_TIMEOUT) == 10


async def test_a_chain_whose_first_task_fails_raises_that_failure(
    controller: AsyncCeleryController,
) -> None:
    result = await controller.delay(chain(fail.s("first link"), add.s(1)))

    with pytest.raises(IntendedFailure, match="first link"):
        await aget(result, timeout=RESULT_TIMEOUT)


async def test_a_thousand_concurrent_waits_add_no_thread(
    controller: AsyncCeleryController, celery_app: Celery, redis_server: RedisServer
) -> None:
    results = await asyncio.gather(*(controller.delay(add, i, 1) for i in range(1000)))
    threads = threading.active_count()
    clients_before = len(redis_server.client(1).client_list())

    waits = [asyncio.create_task(aget(r, timeout=60.0)) for r in results]
    peak_threads = threads
    peak_clients = clients_before
    while not all(w.done() for w in waits):
        peak_threads = max(peak_threads, threading.active_count())
        peak_clients = max(peak_clients, len(redis_server.client(1).client_list()))
        await asyncio.sleep(0.05)
    values = [w.result() for w in waits]

    assert values == [i + 1 for i in range(1000)]
    assert peak_threads == threads
    assert threading.active_count() == threads
    # One subscriber connection and a few for the batched reads, not a thousand.
    assert peak_clients - clients_before <= 10
    assert subscribed_channels(celery_app) == frozenset()


@pytest.fixture
def polled_app(redis_server: RedisServer, celery_app: Celery) -> Iterator[Celery]:
    """The test app's broker and results, read through a backend ``aget`` must poll."""
    app = Celery("polled", set_as_current=False)
    app.conf.update(
        celery_app.conf.table(),
        result_backend=f"{polled.__name__}:PolledRedisBackend+{redis_server.url(1)}",
    )
    try:
        yield app
    finally:
        app.close()


async def test_other_backends_are_polled_off_the_loop(
    controller: AsyncCeleryController, polled_app: Celery
) -> None:
    result = await controller.delay(sleep_briefly, 0.3)
    polled.reader_threads.clear()
    mine = polled_app.AsyncResult(result.id)
    started = time.monotonic()

    assert await aget(mine, timeout=RESULT_TIMEOUT) == 0.3

    assert polled.reader_threads
    assert threading.current_thread().name not in polled.reader_threads
    assert time.monotonic() - started < RESULT_TIMEOUT
    failed = polled_app.AsyncResult((await controller.delay(fail, "polled")).id)
    with pytest.raises(IntendedFailure, match="polled"):
        await aget(failed, timeout=RESULT_TIMEOUT)


@pytest.fixture
def prefixed_app(redis_server: RedisServer) -> Iterator[Celery]:
    """An app whose result keys (and so channels) carry a ``global_keyprefix``."""
    app = Celery("prefixed", set_as_current=False, broker="memory://")
    app.conf.update(
        result_backend=redis_server.url(1),
        result_backend_transport_options={"global_keyprefix": "tenant9"},
    )
    try:
        yield app
    finally:
        app.close()


async def test_the_channel_carries_the_global_keyprefix(
    prefixed_app: Celery, redis_server: RedisServer
) -> None:
    task_id = str(uuid.uuid4())
    channel = f"tenant9_celery-task-meta-{task_id}".encode()
    waiting = asyncio.create_task(aget(prefixed_app.AsyncResult(task_id), timeout=RESULT_TIMEOUT))
    await wait_until_async(
        lambda: server_subscribers(redis_server, channel) == 1,
        timeout=5.0,
        message="the wait never subscribed to the prefixed channel",
    )

    def store() -> None:  # as a worker would: SET and PUBLISH, on another thread
        prefixed_app.backend.store_result(task_id, {"stored": True}, "SUCCESS")
        prefixed_app.backend.client.connection_pool.disconnect()

    await asyncio.to_thread(store)

    assert await waiting == {"stored": True}


async def test_a_tasks_own_timeout_error_is_not_taken_for_the_deadline(
    celery_app: Celery,
) -> None:
    task_id = str(uuid.uuid4())

    def store() -> None:  # a failure as a worker stores it
        celery_app.backend.mark_as_failure(task_id, TimeoutError("the task's own"))
        celery_app.backend.client.connection_pool.disconnect()

    await asyncio.to_thread(store)

    with pytest.raises(TimeoutError, match="the task's own") as raised:
        await aget(celery_app.AsyncResult(task_id), timeout=RESULT_TIMEOUT)
    assert not isinstance(raised.value, CeleryTimeoutError)


async def test_the_rpc_backend_is_refused_with_a_reason() -> None:
    app = Celery("rpc", set_as_current=False, broker="memory://", backend="rpc://")
    try:
        with pytest.raises(NotImplementedError, match="rpc:// result backend"):
            await aget(app.AsyncResult(str(uuid.uuid4())), timeout=1.0)
    finally:
        app.close()


async def test_bad_arguments_say_what_to_change(controller: AsyncCeleryController) -> None:
    with pytest.raises(TypeError, match="Celery result"):
        await aget("not-a-result")  # type: ignore[arg-type]
    result = await controller.delay(add, 1, 2)
    with pytest.raises(ValueError, match="at least 0 seconds"):
        await aget(result, timeout=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        await aget(result, timeout="5")  # type: ignore[arg-type]
