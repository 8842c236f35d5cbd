"""The AMQP wire against a real RabbitMQ and a real prefork worker.

* Round trips: every calling option, on the direct path or (canvases, links,
  exchanges, compression) through Celery's ``apply_async`` on the same confirmed
  channel; the worker runs each and reports what it saw. Quorum and classic
  priority queues included.
* The differential test: the Redis suite's cases published once on the direct path
  and once through Celery's stock ``apply_async``, into a virtual host no worker
  reads; the stored messages are compared field by field (headers, properties,
  body, exchange, routing key). Only ids and the per-thread ``reply_to`` are
  masked; publish-time stamps must agree within a few seconds.
* What the broker refuses: ``basic.nack`` (a full queue that rejects publishes)
  and an unroutable message are ``BrokerError`` saying nothing was stored; the
  unroutable one does not count against the breaker.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import amqp
import pytest
from celery import Celery, chain, chord, group
from kombu import Queue

from aceleryctl import AsyncCeleryController
from aceleryctl.exceptions import BrokerError
from tests._support.rabbitmq_server import RabbitMQServer
from tests._support.redis_server import RedisServer
from tests._support.worker import CeleryWorker
from tests.integration._helpers import new_marker
from tests.integration.test_direct_path import (
    CASES,
    assert_same_times,
    capture_app,
    decode,
    mask_ids,
    publish_all,
)

from .conftest import amqp_app

#: (case, options, takes the direct path)
RUN_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("plain", {}, True),
    ("countdown", {"countdown": 0.2}, True),
    ("eta", {"eta": datetime.now(UTC) + timedelta(seconds=0.3)}, True),
    ("expires", {"expires": 600}, True),
    ("headers", {"headers": {"x-tenant": "t1"}}, True),
    ("classic priority queue", {"queue": "aq.priority", "priority": 7}, True),
    ("quorum queue", {"queue": "aq.quorum"}, True),
    ("queue", {"queue": "special"}, True),
    ("time limits", {"time_limit": 30, "soft_time_limit": 20}, True),
    ("parent and root", {"parent_id": "p-1", "root_id": "r-1"}, True),
    ("msgpack", {"serializer": "msgpack"}, True),
    ("exchange and routing key", {"exchange": "aq.topic", "routing_key": "special.x"}, False),
    ("compression", {"compression": "zlib"}, False),
]


@pytest.fixture
async def controller(
    rabbitmq_server: RabbitMQServer, redis_server: RedisServer, amqp_worker: CeleryWorker
) -> AsyncIterator[AsyncCeleryController]:
    app = amqp_app(f"amqp-{new_marker()}", rabbitmq_server.url(), redis_server.url(1))
    async with AsyncCeleryController(app, dispatch_timeout=5.0, max_workers=2) as ctl:
        yield ctl


def bind_topic_exchange(rabbitmq: RabbitMQServer, exchange: str, queue: str, key: str) -> None:
    connection = amqp.Connection(f"127.0.0.1:{rabbitmq.port}")
    connection.connect()
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.queue_bind(queue, exchange, key)
    finally:
        connection.close()


async def test_every_calling_option_round_trips_through_a_worker(
    controller: AsyncCeleryController, rabbitmq_server: RabbitMQServer
) -> None:
    app = controller.app
    echo = app.tasks["aceleryctl_tests.echo_request"]
    bind_topic_exchange(rabbitmq_server, "aq.topic", "special", "special.#")
    expected_direct = 0
    for case, options, direct in RUN_CASES:
        before = controller.statistics().direct
        result = await controller.apply_async(echo, ("x-tenant",), **dict(options))
        summary = result.get(timeout=30.0)
        assert summary["task_id"] == summary["correlation_id"] == result.id, case
        assert controller.statistics().direct - before == int(direct), case
        expected_direct += int(direct)
        queue = options.get("queue") or options.get("routing_key") or "celery"
        assert summary["routing_key"] == queue, case
        if "priority" in options:
            assert summary["priority"] == options["priority"], case
        if "headers" in options:
            assert summary["headers"] == {"x-tenant": "t1"}, case
        if "parent_id" in options:
            assert (summary["parent_id"], summary["root_id"]) == ("p-1", "r-1"), case
        if "expires" in options or "eta" in options:
            assert summary["expires" if "expires" in options else "eta"] is not None, case
    assert controller.statistics().direct == expected_direct


async def test_send_task_signatures_and_canvases_round_trip(
    controller: AsyncCeleryController,
) -> None:
    app = controller.app
    add, xsum = app.tasks["aceleryctl_tests.add"], app.tasks["aceleryctl_tests.xsum"]
    by_name = await controller.send_task("aceleryctl_tests.add", (2, 3))
    assert by_name.get(timeout=30.0) == 5
    assert (await controller.delay(add.s(4), 5)).get(timeout=30.0) == 9
    assert (await controller.delay(chain(add.s(1, 2), add.s(10)))).get(timeout=30.0) == 13
    assert (await controller.delay(group(add.s(i, i) for i in range(4)))).get(timeout=30.0) == [
        0,
        2,
        4,
        6,
    ]
    chorded = await controller.delay(chord((add.s(i, 1) for i in range(3)), xsum.s()))
    assert chorded.get(timeout=30.0) == 6
    linked = await controller.apply_async(add, (1, 1), link=add.s(100))
    assert linked.get(timeout=30.0) == 2
    stats = controller.statistics()
    assert stats.direct == 0  # none of these is a plain task call
    assert stats.failed == 0


# -- the differential test --------------------------------------------------------------


@pytest.fixture(scope="module")
def capture_url(rabbitmq_server: RabbitMQServer) -> str:
    """A virtual host of its own: no worker consumes there."""
    return rabbitmq_server.add_vhost(f"capture-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def capture(
    capture_url: str, rabbitmq_server: RabbitMQServer, redis_server: RedisServer
) -> Iterator[Celery]:
    app = capture_app(capture_url)
    app.conf.result_backend = redis_server.url(1)  # the capture app's own is its broker
    yield app
    drain_captured(rabbitmq_server, capture_url)


def drain_captured(rabbitmq: RabbitMQServer, url: str) -> dict[str, amqp.Message]:
    """Take every message out of the capture virtual host: ``{task id: message}``."""
    vhost = url.rsplit("/", 1)[1]
    connection = amqp.Connection(f"127.0.0.1:{rabbitmq.port}", virtual_host=vhost)
    connection.connect()
    found: dict[str, amqp.Message] = {}
    try:
        channel = connection.channel()
        for queue in ("celery", "special", "routed"):
            channel.queue_declare(queue, durable=True, auto_delete=False)
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                found[message.headers["id"]] = message
    finally:
        connection.close()
    return found


def comparable(message: amqp.Message) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The message with ids masked, and its timestamps apart (epoch seconds)."""
    properties = dict(message.properties)
    headers = dict(properties.pop("application_headers"))
    decoded = decode(message.body, properties["content_type"])
    timed = mask_ids(headers, properties)
    info = message.delivery_info
    route = {"exchange": info["exchange"], "routing_key": info["routing_key"]}
    return {"route": route, "headers": headers, "properties": properties, "body": decoded}, timed


async def test_direct_and_stock_messages_are_equal_field_by_field(
    capture: Celery, capture_url: str, rabbitmq_server: RabbitMQServer
) -> None:
    drain_captured(rabbitmq_server, capture_url)
    stock_ids, stock_direct = await publish_all(capture, direct=False)
    stock = drain_captured(rabbitmq_server, capture_url)
    direct_ids, direct_count = await publish_all(capture, direct=True)
    direct = drain_captured(rabbitmq_server, capture_url)

    assert stock_direct == 0
    assert direct_count == len(CASES)  # every case took the direct path
    for (case, *_), stock_id, direct_id in zip(CASES, stock_ids, direct_ids, strict=True):
        expected, expected_times = comparable(stock[stock_id])
        got, got_times = comparable(direct[direct_id])
        assert got == expected, case
        assert_same_times(case, expected_times, got_times)


# -- what the broker refuses ---------------------------------------------------------------


async def test_a_nacked_publish_says_nothing_was_stored(
    rabbitmq_server: RabbitMQServer, redis_server: RedisServer
) -> None:
    full = f"aq.full-{uuid.uuid4().hex[:8]}"
    app = amqp_app(f"nack-{new_marker()}", rabbitmq_server.url(), redis_server.url(1))
    queue = Queue(full, queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    app.conf.task_queues = (*app.conf.task_queues, queue)
    add = app.tasks["aceleryctl_tests.add"]
    async with AsyncCeleryController(app, dispatch_timeout=5.0) as ctl:
        first = await ctl.apply_async(add, (1, 2), queue=full)
        with pytest.raises(BrokerError) as refused:
            await ctl.apply_async(add, (3, 4), queue=full)
        stats = ctl.statistics()
    assert refused.value.message_may_exist is False
    assert "nothing was sent" in str(refused.value)
    assert "basic.nack" in str(refused.value)
    assert stats.direct == 1
    held = drain_queue(rabbitmq_server, full)
    assert held == [first.id]


async def test_an_unroutable_publish_says_nothing_was_stored_and_spares_the_breaker(
    rabbitmq_server: RabbitMQServer, redis_server: RedisServer
) -> None:
    lonely = f"aq.lonely-{uuid.uuid4().hex[:8]}"
    connection = amqp.Connection(f"127.0.0.1:{rabbitmq_server.port}")
    connection.connect()
    try:
        connection.channel().exchange_declare(lonely, "direct", durable=False, auto_delete=False)
    finally:
        connection.close()
    app = amqp_app(f"unroutable-{new_marker()}", rabbitmq_server.url(), redis_server.url(1))
    add = app.tasks["aceleryctl_tests.add"]
    async with AsyncCeleryController(app, dispatch_timeout=5.0) as ctl:
        for _ in range(6):  # past the breaker's default threshold
            with pytest.raises(BrokerError) as refused:
                await ctl.apply_async(add, (1, 2), exchange=lonely, routing_key="nowhere")
            assert refused.value.message_may_exist is False
            assert "nothing was stored" in str(refused.value)
        assert ctl.breaker.statistics().consecutive_failures == 0
        assert (await ctl.delay(add, 1, 1)).id  # still closed


def drain_queue(rabbitmq: RabbitMQServer, queue: str) -> list[str]:
    """Take every message out of ``queue``; their task ids, in order."""
    connection = amqp.Connection(f"127.0.0.1:{rabbitmq.port}")
    connection.connect()
    ids: list[str] = []
    try:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(message.headers["id"])
    finally:
        connection.close()
    return ids
