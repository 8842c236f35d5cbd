"""Fixtures for the RabbitMQ tests: the session's RabbitMQ node, a prefork worker
consuming it, and apps that publish to it.

The worker is the shared test app (``tests.integration.celery_app``) pointed at
RabbitMQ, consuming ``celery``, ``special``, the quorum queue and the priority
queue; results and execution records go to the session's Redis (dbs 1 and 2), so
that they outlive whatever a test does to RabbitMQ.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, Task

from tests._support.rabbitmq_server import RabbitMQServer
from tests._support.redis_server import RedisServer
from tests._support.worker import CeleryWorker
from tests.integration import celery_app as shared
from tests.integration._helpers import isolated_app, shared_app_worker

#: The queues the session's AMQP worker consumes.
CONSUMED = ["celery", shared.SPECIAL_QUEUE, "aq.quorum", "aq.priority"]


def amqp_app(name: str, broker_url: str, results_url: str) -> Celery:
    """An isolated app (``add``, ``record``) on ``broker_url`` that declares the
    workers' queues alike, plus ``echo_request``, whose body runs in the worker."""
    app = isolated_app(name, broker_url, results_url)
    app.conf.task_queues = shared.AMQP_QUEUES

    @app.task(shared=False, name="aceleryctl_tests.echo_request", bind=True)
    def echo_request(self: Task[Any, Any], *header_names: str) -> dict[str, Any]:
        return {}

    @app.task(shared=False, name="aceleryctl_tests.xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    return app


@pytest.fixture(scope="session")
def amqp_worker(
    rabbitmq_server: RabbitMQServer, redis_server: RedisServer
) -> Iterator[CeleryWorker]:
    """A prefork worker consuming the session's RabbitMQ."""
    name = f"amqp-{os.getpid()}"
    with shared_app_worker(name, rabbitmq_server.url(), redis_server, queues=CONSUMED) as worker:
        yield worker


@pytest.fixture(scope="module")
def fault_rabbitmq() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of the fault tests' own, which they pause, stop, kill and
    restart (same node name, ports and data); stopped after the module."""
    server = RabbitMQServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fault_worker(
    fault_rabbitmq: RabbitMQServer, redis_server: RedisServer
) -> Iterator[CeleryWorker]:
    """A prefork worker consuming the fault node's ``celery`` queue."""
    name = f"amqp-faults-{os.getpid()}"
    with shared_app_worker(name, fault_rabbitmq.url(), redis_server) as worker:
        yield worker


@pytest.fixture
def records(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The execution records (the session Redis, db 2)."""
    client = redis_server.client(2)
    yield client
    client.close()
