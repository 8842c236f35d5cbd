"""The remaining calling options reach the broker unchanged, and the task still runs.

Two views: the raw message kombu stored (in a queue no worker consumes, so it can
be read), and a real worker running the task sent with the same option.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aceleryctl import AsyncCeleryController

from ._helpers import Broker, Records, new_marker
from .celery_app import echo_request, record

RESULT_TIMEOUT = 20.0


@pytest.fixture
def parked_queue(broker: Broker) -> Iterator[str]:
    """A fresh queue name that no worker consumes; emptied afterwards."""
    queue = f"parked-{uuid.uuid4().hex}"
    yield queue
    broker.purge(queue)


async def test_priority_reaches_the_broker_and_the_worker(
    controller: AsyncCeleryController, broker: Broker, parked_queue: str
) -> None:
    parked = await controller.apply_async(echo_request, queue=parked_queue, priority=9)
    [message] = broker.messages(parked_queue)
    assert message.task_id == parked.id
    assert message.properties["priority"] == 9

    result = await controller.apply_async(echo_request, priority=9)
    assert result.get(timeout=RESULT_TIMEOUT)["priority"] == 9


async def test_serializer_reaches_the_broker_and_the_worker_decodes_it(
    controller: AsyncCeleryController, broker: Broker, parked_queue: str, records: Records
) -> None:
    await controller.apply_async(record, args=("unused",), queue=parked_queue, serializer="msgpack")
    [message] = broker.messages(parked_queue)
    assert message.content_type == "application/x-msgpack"

    marker = new_marker()
    await controller.apply_async(record, args=(marker, {"n": 1}), serializer="msgpack")
    [entry] = await records.wait_for_async(marker)
    assert entry["payload"] == {"n": 1}


async def test_compression_reaches_the_broker_and_the_worker_decompresses_it(
    controller: AsyncCeleryController, broker: Broker, parked_queue: str, records: Records
) -> None:
    await controller.apply_async(record, args=("unused",), queue=parked_queue, compression="zlib")
    [message] = broker.messages(parked_queue)
    assert message.headers.get("compression") == "application/x-gzip"

    marker = new_marker()
    await controller.apply_async(record, args=(marker, "x" * 2000), compression="zlib")
    [entry] = await records.wait_for_async(marker)
    assert entry["payload"] == "x" * 2000


async def test_ignore_result_reaches_the_broker_and_the_task_runs(
    controller: AsyncCeleryController, broker: Broker, parked_queue: str, records: Records
) -> None:
    await controller.apply_async(record, args=("unused",), queue=parked_queue, ignore_result=True)
    [message] = broker.messages(parked_queue)
    assert message.headers.get("ignore_result") is True

    marker = new_marker()
    result = await controller.apply_async(record, args=(marker,), ignore_result=True)
    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"retry": True}, id="retry"),
        pytest.param({"retry": False}, id="no-retry"),
        pytest.param(
            {
                "retry": True,
                "retry_policy": {
                    "max_retries": 2,
                    "interval_start": 0,
                    "interval_step": 0.1,
                    "interval_max": 0.2,
                },
            },
            id="retry-policy",
        ),
        pytest.param({"routing_key": "celery"}, id="routing-key"),
        pytest.param({"priority": 0, "serializer": "json", "compression": "bzip2"}, id="mixed"),
    ],
)
async def test_option_passes_through_and_the_task_runs(
    controller: AsyncCeleryController, records: Records, options: dict[str, Any]
) -> None:
    marker = new_marker()

    result = await controller.apply_async(record, args=(marker,), **options)

    [entry] = await records.wait_for_async(marker)
    assert entry["task_id"] == result.id


async def test_dispatch_timeout_is_consumed_and_never_sent(
    controller: AsyncCeleryController, broker: Broker, parked_queue: str
) -> None:
    await controller.apply_async(
        echo_request, queue=parked_queue, dispatch_timeout=3.0, headers={"x-mine": "1"}
    )
    [message] = broker.messages(parked_queue)
    assert "dispatch_timeout" not in message.headers
    assert "dispatch_timeout" not in message.properties
    assert b"dispatch_timeout" not in message.body
    assert message.headers.get("x-mine") == "1"
