"""The Celery app and tasks of the run-once tests: a Django project's worker, in small.

The worker runs ``celery -A tests.integration.run_once.worker_app worker``;
importing this module sets Django up with
:mod:`tests.integration.run_once.worker_settings` (the ``aceleryctl`` app installs
the guard when the worker starts). The test process imports it for the task
objects and publishes with :data:`app`; there Django is already set up.

Every task records its runs in Redis (``ACELERYCTL_ONCE_RECORDS_URL``): a counter
per key, so that a test counts how often a body ran. URLs and the broker's
transport options come from the environment; the test process calls
:func:`configure`.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import django
import redis
from celery import Task
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.run_once.worker_settings")
if not apps.ready:
    django.setup()

from tests._support.celery_apps import worker_app

__all__ = [
    "app",
    "blocking",
    "configure",
    "count",
    "count_late",
    "records",
    "replacing",
    "retrying",
    "unguarded",
]

BROKER_ENV = "ACELERYCTL_ONCE_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_ONCE_RESULT_BACKEND"
RECORDS_ENV = "ACELERYCTL_ONCE_RECORDS_URL"
TRANSPORT_ENV = "ACELERYCTL_ONCE_TRANSPORT_OPTIONS"
_UNCONFIGURED = "redis://127.0.0.1:1/{db}"

app = worker_app(
    "aceleryctl_once",
    broker_url=os.environ.get(BROKER_ENV, _UNCONFIGURED.format(db=10)),
    result_backend=os.environ.get(BACKEND_ENV, _UNCONFIGURED.format(db=11)),
    broker_transport_options={
        "socket_timeout": 10.0,
        "socket_connect_timeout": 2.0,
        **json.loads(os.environ.get(TRANSPORT_ENV) or "{}"),
    },
)

_records: dict[int, redis.Redis] = {}


def records() -> redis.Redis:
    """This process's client of the records database (made after a fork)."""
    client = _records.get(os.getpid())
    if client is None:
        client = redis.Redis.from_url(
            os.environ.get(RECORDS_ENV, _UNCONFIGURED.format(db=12)),
            socket_connect_timeout=2.0,
            socket_timeout=70.0,  # longer than a blocking task's wait
        )
        _records[os.getpid()] = client
    return client


def configure(*, broker_url: str, result_backend: str, records_url: str) -> None:
    """Point the app at the session's Redis; call before the app is first used."""
    os.environ[BROKER_ENV] = broker_url
    os.environ[BACKEND_ENV] = result_backend
    os.environ[RECORDS_ENV] = records_url
    app.conf.update(broker_url=broker_url, result_backend=result_backend)


@app.task(shared=False, name="once.count")
def count(key: str, secret: str = "") -> int:
    """Count a run under ``key``. ``secret`` is an argument no log record may show."""
    return int(records().incr(key))


@app.task(shared=False, name="once.count_late", acks_late=True)
def count_late(key: str) -> int:
    """:func:`count`, acked when it ends (``acks_late``)."""
    return int(records().incr(key))


@app.task(shared=False, bind=True, name="once.retrying", max_retries=5)
def retrying(self: Task[Any, Any], key: str, failures: int) -> int:
    """Count a run, then retry (Celery's ``self.retry``) until ``failures`` retries;
    the last run also counts under ``<key>:ok``. (The result backend's state is no
    witness: a retry's RETRY can be stored after the next attempt's SUCCESS.)"""
    runs = int(records().incr(key))
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    records().incr(f"{key}:ok")
    return runs


@app.task(shared=False, bind=True, name="once.blocking", acks_late=True, reject_on_worker_lost=True)
def blocking(self: Task[Any, Any], key: str, gate: str) -> str:
    """Note the run's start (pid and worker) in the list ``<key>:starts``, wait for a
    value on the list ``gate`` (at most 60 s), then count a finished run in
    ``<key>:done``."""
    client = records()
    started = {"pid": os.getpid(), "worker": self.request.hostname, "host": socket.gethostname()}
    client.rpush(f"{key}:starts", json.dumps(started))
    if client.blpop([gate], timeout=60) is None:
        raise TimeoutError(f"nobody opened {gate}")
    client.incr(f"{key}:done")
    return "done"


@app.task(shared=False, bind=True, name="once.replacing")
def replacing(self: Task[Any, Any], key: str, then: str) -> Any:
    """Count a run under ``key``, then replace itself by ``count(then)`` on the same
    queue: the same task id, ``retries`` 0 again, one more ``replaced_task_nesting``."""
    records().incr(key)
    queue = (self.request.delivery_info or {}).get("routing_key")
    return self.replace(count.s(then).set(queue=queue))


@app.task(shared=False, name="once.unguarded", run_once=False)
def unguarded(key: str) -> int:
    """Count a run; its class opts out of the guard (``run_once = False``)."""
    return int(records().incr(key))
