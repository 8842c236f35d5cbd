"""A message whose run never finished runs again under the guard, and one that was
settled does not: after its pool child was killed (``acks_late`` +
``reject_on_worker_lost``: requeued), after its whole worker was killed (the Redis
transport restores it after the visibility timeout), and after the worker holding
it until its eta shut down (restored at once) it runs; given back after it was
acked (a lost ack) it is skipped.

The restored messages are what a claim taken at receipt alone would get wrong:
each comes back while the claim it left still says "running". It comes back with
the delivery tag it was published with, which is how the guard knows it for the
same copy and lets it take the claim over.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until

from .conftest import CLAIMS_DB, OnceWorker, PairFactory, in_broker, unique

TIMEOUT = 60.0
VISIBILITY_TIMEOUT = 6  # seconds: long enough for the blocked run to be released first


def starts(records: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in records.lrange(f"{key}:starts", 0, -1)]


def runs(records: redis.Redis, key: str) -> int:
    return int(records.get(key) or 0)


def done(records: redis.Redis, key: str) -> int:
    return int(records.get(f"{key}:done") or 0)


@pytest.fixture
def publisher(redis_server: RedisServer) -> Iterator[Any]:
    """``publisher(broker_db)``: a Celery app publishing to that broker database (the
    pair's), by task name."""
    made: list[Celery] = []

    def make(broker_db: int) -> Celery:
        app = Celery(
            "once-publisher",
            set_as_current=False,
            broker=redis_server.url(broker_db),
            backend=redis_server.url(CLAIMS_DB),
        )
        app.conf.update(task_serializer="json", accept_content=["json"])
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def test_a_run_killed_with_its_child_runs_again_when_redelivered(
    once_workers: dict[str, OnceWorker], once_app: Celery, records: redis.Redis
) -> None:
    once = once_workers["guarded"]
    task_id, key, gate = unique("lost"), unique("blocking"), unique("gate")
    once_app.send_task("once.blocking", (key, gate), task_id=task_id, queue=once.queue)
    wait_until(lambda: len(starts(records, key)) == 1, timeout=TIMEOUT, message=once.records)
    os.kill(starts(records, key)[0]["pid"], signal.SIGKILL)
    # Celery rejects the message with requeue (reject_on_worker_lost): the guard
    # gives the claim up, and the redelivered message runs in a new child.
    wait_until(
        lambda: len(starts(records, key)) == 2,
        timeout=TIMEOUT,
        message=lambda: f"starts={starts(records, key)}; {once.worker.log_tail(30)}",
    )
    records.rpush(gate, "open")
    wait_until(lambda: done(records, key) == 1, timeout=TIMEOUT)
    wait_until(lambda: once_app.AsyncResult(task_id).state == "SUCCESS", timeout=TIMEOUT)
    first, second = starts(records, key)
    assert first["pid"] != second["pid"]
    assert once.skips(task_id) == []


def test_a_message_that_comes_back_after_it_was_acked_is_skipped(
    once_workers: dict[str, OnceWorker],
    once_app: Celery,
    records: redis.Redis,
    broker: redis.Redis,
) -> None:
    """An ack can be lost (the worker died before it reached Redis, a connection
    dropped): the transport then gives the message back, same envelope, although
    its run started (early ack) or ended (``acks_late``). The claim was made
    ``done`` before the ack was sent, so the message does not run again."""
    once = once_workers["guarded"]
    task_id, key, parked = unique("lostack"), unique("count"), unique("once-parked")
    once_app.send_task("once.count", (key,), task_id=task_id, queue=parked)
    envelope = broker.rpop(parked)  # a queue no worker reads: the envelope as published
    assert envelope is not None
    broker.lpush(once.queue, envelope)
    wait_until(lambda: runs(records, key) == 1, timeout=TIMEOUT, message=once.records)
    wait_until(lambda: in_broker(broker, once.queue, task_id) == 0, timeout=TIMEOUT)
    returned = json.loads(envelope)  # as kombu restores it
    returned["headers"]["redelivered"] = True
    returned["properties"]["delivery_info"]["redelivered"] = True
    broker.lpush(once.queue, json.dumps(returned))
    wait_until(lambda: once.skips(task_id), timeout=TIMEOUT, message=once.records)
    [skip] = once.skips(task_id)
    assert f"attempt 0: it already ran on {once.worker.hostname}" in skip
    assert runs(records, key) == 1


def test_a_message_restored_after_its_worker_died_runs_again(
    worker_pair: PairFactory, publisher: Any, records: redis.Redis, claims: redis.Redis
) -> None:
    broker_db = 13
    pair = worker_pair(
        broker_db=broker_db,
        transport={
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    task_id, key, gate = unique("vt"), unique("blocking"), unique("gate")
    publisher(broker_db).send_task(
        "once.blocking", (key, gate), task_id=task_id, queue=pair[0].queue
    )
    wait_until(lambda: len(starts(records, key)) == 1, timeout=TIMEOUT)
    holder_name = starts(records, key)[0]["worker"]
    [holder] = [w for w in pair if w.worker.hostname == holder_name]
    [other] = [w for w in pair if w is not holder]
    # The whole worker dies: nobody rejects or acks; its claim stays "running" for an
    # hour (RUNNING_TTL), and the message sits in the transport's unacked set.
    os.killpg(holder.worker.process.pid, signal.SIGKILL)
    holder.worker.process.wait(timeout=TIMEOUT)
    wait_until(
        lambda: len(starts(records, key)) == 2,
        timeout=TIMEOUT,
        message=lambda: f"starts={starts(records, key)}; {other.records()}",
    )
    records.rpush(gate, "open")
    wait_until(lambda: done(records, key) == 1, timeout=TIMEOUT)
    assert starts(records, key)[1]["worker"] == other.worker.hostname
    [taken] = [line for line in other.records("INFO") if f"[{task_id}]" in line]
    assert "its message came back unacked" in taken
    assert f"(claimed by {holder_name}, which never settled it)" in taken
    claim_key = f"aceleryctl:once:{task_id}:0"  # acks_late: done once acked
    wait_until(lambda: (claims.get(claim_key) or b"").startswith(b"done "), timeout=TIMEOUT)


def test_an_eta_message_held_by_a_worker_that_shuts_down_runs_on_the_next(
    worker_pair: PairFactory, publisher: Any, records: redis.Redis, claims: redis.Redis
) -> None:
    broker_db = 14
    pair = worker_pair(broker_db=broker_db)
    app = publisher(broker_db)
    task_id, key = unique("eta"), unique("count")
    claim_key = f"aceleryctl:once:{task_id}:0"
    for _ in range(2):  # two copies, both due in 10 s
        app.send_task("once.count", (key,), task_id=task_id, queue=pair[0].queue, countdown=10)
    wait_until(
        lambda: sum(len(w.skips(task_id)) for w in pair) == 1 and claims.get(claim_key),
        timeout=TIMEOUT,
        message=lambda: f"{[w.records() for w in pair]}",
    )
    held = (claims.get(claim_key) or b"").decode()
    assert held.startswith("running ")
    holder_name = held.rsplit(" ", 1)[1]
    [holder] = [w for w in pair if w.worker.hostname == holder_name]
    [other] = [w for w in pair if w is not holder]
    # A warm shutdown: the transport puts the held message back in its queue (same
    # envelope, same delivery tag), while the claim still says "running".
    holder.worker.stop()
    wait_until(
        lambda: int(records.get(key) or 0) == 1,
        timeout=TIMEOUT,
        message=lambda: f"{other.records()}",
    )
    [taken] = [line for line in other.records("INFO") if f"[{task_id}]" in line]
    assert f"(claimed by {holder_name}, which never settled it)" in taken
    done = f"done {held.split(' ')[1]} {other.worker.hostname}".encode()  # same copy
    wait_until(lambda: claims.get(claim_key) == done, timeout=TIMEOUT, message=other.records)
    assert int(records.get(key) or 0) == 1
