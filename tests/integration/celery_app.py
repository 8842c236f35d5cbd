"""The Celery app shared by the integration tests and the worker subprocesses.

The worker imports this module with ``celery -A tests.integration.celery_app``; the
test process imports the same module, so both see the same task names. URLs come
from the environment (``ACELERYCTL_TEST_BROKER_URL``, ``ACELERYCTL_TEST_RESULT_BACKEND``,
``ACELERYCTL_TEST_RECORDS_URL``); the test process calls :func:`configure` once the
session's redis-server is up.

Tasks report what they saw to a Redis list (``record:<marker>``, see :func:`record`)
so tests can observe on the worker side when a task started, on which worker, and
with which request attributes. This module must not import Django.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from kombu import Queue

__all__ = [
    "AMQP_QUEUES",
    "PARKED_QUEUE",
    "SPECIAL_QUEUE",
    "IntendedFailure",
    "add",
    "app",
    "configure",
    "echo_request",
    "fail",
    "link_target",
    "parked",
    "record",
    "record_error",
    "record_key",
    "records_client",
    "sleep_briefly",
    "xsum",
]

BROKER_ENV = "ACELERYCTL_TEST_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_TEST_RESULT_BACKEND"
RECORDS_ENV = "ACELERYCTL_TEST_RECORDS_URL"
#: Set for a worker on a Sentinel broker URL: the monitored primary's name.
MASTER_NAME_ENV = "ACELERYCTL_TEST_BROKER_MASTER_NAME"
#: Set for a worker on a ``rediss://`` broker: the CA file to verify the server with.
BROKER_CA_ENV = "ACELERYCTL_TEST_BROKER_CA"
#: Set for a worker whose broker lists carry a ``global_keyprefix`` (this value).
BROKER_KEYPREFIX_ENV = "ACELERYCTL_TEST_BROKER_KEYPREFIX"
# Nothing listens here: an unconfigured app fails fast instead of reaching a real Redis.
_UNCONFIGURED = "redis://127.0.0.1:1/{db}"

#: The queue only the "special" worker consumes.
SPECIAL_QUEUE = "special"
#: A queue no worker consumes: messages sent there stay in Redis to be inspected.
PARKED_QUEUE = "aceleryctl-parked"
#: Queues declared alike by the RabbitMQ tests' apps and workers (a queue declared
#: with other arguments than the broker holds is refused): the two above, a quorum
#: queue, a classic priority queue, and the parked queue.
AMQP_QUEUES = (
    Queue("celery"),
    Queue(SPECIAL_QUEUE),
    Queue("aq.quorum", queue_arguments={"x-queue-type": "quorum"}),
    Queue("aq.priority", queue_arguments={"x-max-priority": 10}),
    Queue(PARKED_QUEUE),
)

app = Celery("aceleryctl_tests", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, _UNCONFIGURED.format(db=0)),
    result_backend=os.environ.get(BACKEND_ENV, _UNCONFIGURED.format(db=1)),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json", "msgpack"],
    result_accept_content=["json"],
    enable_utc=True,
    timezone="UTC",
    task_track_started=True,
    result_extended=True,
    result_expires=600,
    task_default_queue="celery",
    task_routes={"aceleryctl_tests.parked": {"queue": PARKED_QUEUE}},
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
    # Bounded client timeouts: a test never hangs on a dead broker for long.
    broker_transport_options={"socket_timeout": 10.0, "socket_connect_timeout": 2.0},
    # Give up quickly on a result store that is gone: results garbage-collected
    # after the session's Redis has stopped must not retry for a minute.
    result_backend_transport_options={
        "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    },
    redis_socket_timeout=10.0,
    redis_socket_connect_timeout=2.0,
)


if os.environ.get(MASTER_NAME_ENV):
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "master_name": os.environ[MASTER_NAME_ENV],
    }
if os.environ.get(BROKER_KEYPREFIX_ENV):
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "global_keyprefix": os.environ[BROKER_KEYPREFIX_ENV],
    }
if os.environ.get(BROKER_CA_ENV):
    app.conf.broker_use_ssl = {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": os.environ[BROKER_CA_ENV],
    }
if str(app.conf.broker_url).startswith("amqp"):  # a worker on the tests' RabbitMQ
    app.conf.task_queues = AMQP_QUEUES


def configure(*, broker_url: str, result_backend: str, records_url: str) -> None:
    """Point the app (and the record helper) at the session's Redis.

    Call before anything has used the app's connections or result backend: both are
    cached by Celery on first use.
    """
    os.environ[BROKER_ENV] = broker_url
    os.environ[BACKEND_ENV] = result_backend
    os.environ[RECORDS_ENV] = records_url
    app.conf.update(broker_url=broker_url, result_backend=result_backend)
    global _records
    _records = None


_records: redis.Redis | None = None


def records_client() -> redis.Redis:
    """The Redis client for the records database (one per process, made lazily)."""
    global _records
    if _records is None:
        _records = redis.Redis.from_url(
            os.environ.get(RECORDS_ENV, _UNCONFIGURED.format(db=2)),
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
        )
    return _records


def record_key(marker: str) -> str:
    """The Redis list a task appends to for ``marker``."""
    return f"record:{marker}"


def _write_record(marker: str, entry: dict[str, Any]) -> None:
    records_client().rpush(record_key(marker), json.dumps(entry, default=str))


def _request_summary(task: Task[Any, Any]) -> dict[str, Any]:
    request = task.request
    delivery_info = request.delivery_info or {}
    return {
        "task_id": request.id,
        "task_name": task.name,
        "hostname": request.hostname,
        "routing_key": delivery_info.get("routing_key"),
        "exchange": delivery_info.get("exchange"),
        "priority": delivery_info.get("priority"),
        "eta": request.eta,
        "expires": request.expires,
        "retries": request.retries,
        "correlation_id": request.correlation_id,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "group": request.group,
    }


class IntendedFailure(Exception):
    """Raised on purpose by :func:`fail`."""


@app.task(shared=False, name="aceleryctl_tests.add")
def add(x: int, y: int) -> int:
    """Return ``x + y``."""
    return x + y


@app.task(shared=False, name="aceleryctl_tests.xsum")
def xsum(numbers: list[int]) -> int:
    """Return the sum of ``numbers`` (a chord body)."""
    return sum(numbers)


@app.task(shared=False, name="aceleryctl_tests.echo_request", bind=True)
def echo_request(self: Task[Any, Any], *header_names: str) -> dict[str, Any]:
    """Return what the worker saw: ids, hostname, routing, eta, retries and the
    values of the message headers named in ``header_names``."""
    summary = _request_summary(self)
    request_dict = vars(self.request)
    custom = request_dict.get("headers") or {}
    summary["headers"] = {name: request_dict.get(name, custom.get(name)) for name in header_names}
    return summary


@app.task(shared=False, name="aceleryctl_tests.record", bind=True)
def record(self: Task[Any, Any], marker: str, payload: Any = None) -> str:
    """Append ``{start, task_id, hostname, ..., payload}`` to ``record:<marker>``.

    ``start`` is ``time.time()`` when the task body began, in seconds.
    """
    entry = {"start": time.time(), "payload": payload, **_request_summary(self)}
    _write_record(marker, entry)
    return marker


@app.task(shared=False, name="aceleryctl_tests.fail")
def fail(message: str) -> None:
    """Raise :class:`IntendedFailure` with ``message``."""
    raise IntendedFailure(message)


@app.task(shared=False, name="aceleryctl_tests.sleep_briefly")
def sleep_briefly(seconds: float) -> float:
    """Sleep ``seconds`` (capped at 5) inside the worker and return it."""
    seconds = min(float(seconds), 5.0)
    time.sleep(seconds)
    return seconds


@app.task(shared=False, name="aceleryctl_tests.link_target", bind=True)
def link_target(self: Task[Any, Any], result: Any, marker: str) -> Any:
    """A ``link`` callback: records the parent's result under ``marker``."""
    entry = {"start": time.time(), "payload": result, **_request_summary(self)}
    _write_record(marker, entry)
    return result


@app.task(shared=False, name="aceleryctl_tests.record_error")
def record_error(request: Any, exc: BaseException, traceback: Any, marker: str) -> None:
    """A ``link_error`` callback (new-style, run in the worker): records the failed
    task's id and the exception under ``marker``. Pass ``marker`` as a keyword."""
    entry = {
        "start": time.time(),
        "payload": {
            "failed_task_id": getattr(request, "id", None),
            "exc_type": type(exc).__name__,
            "exc": str(exc),
        },
    }
    _write_record(marker, entry)


@app.task(shared=False, name="aceleryctl_tests.parked")
def parked(i: int) -> int:
    """Routed to :data:`PARKED_QUEUE`, which no worker consumes: it never runs."""
    return i
