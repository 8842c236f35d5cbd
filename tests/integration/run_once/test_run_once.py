"""The run-once guard in real workers: a second copy of a (task id, attempt) is skipped
and logged, Celery's retries and ``Task.replace`` still run, and with the guard off
or its Redis gone every copy runs.

Copies are published as the outbox's relay would make them: the same task id (and
attempt) published again, each publish its own message.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from tests._support.waiting import wait_until

from . import worker_app
from .conftest import OnceWorker, in_broker, unique

TIMEOUT = 60.0  # seconds; generous for a 2-core machine shared with other suites


def runs(records: redis.Redis, key: str) -> int:
    return int(records.get(key) or 0)


def publish_copies(task: Any, args: tuple[Any, ...], task_id: str, queue: str, n: int) -> None:
    for _ in range(n):
        task.apply_async(args, task_id=task_id, queue=queue)


@pytest.mark.parametrize("pool", ["guarded", "threads", "solo"])
def test_a_second_copy_is_skipped_and_logged_without_its_arguments(
    once_workers: dict[str, OnceWorker],
    once_app: Celery,
    records: redis.Redis,
    claims: redis.Redis,
    broker: redis.Redis,
    pool: str,
) -> None:
    once = once_workers[pool]
    task_id, key = unique("dup"), unique("count")
    publish_copies(worker_app.count, (key, "planted-secret-arg"), task_id, once.queue, 2)
    wait_until(
        lambda: runs(records, key) == 1 and len(once.skips(task_id)) == 1,
        timeout=TIMEOUT,
        message=lambda: f"runs={runs(records, key)}, records={once.records()}",
    )
    # A third copy, long after the run ended.
    wait_until(lambda: once_app.AsyncResult(task_id).state == "SUCCESS", timeout=TIMEOUT)
    publish_copies(worker_app.count, (key, "planted-secret-arg"), task_id, once.queue, 1)
    wait_until(lambda: len(once.skips(task_id)) == 2, timeout=TIMEOUT, message=once.records)
    assert runs(records, key) == 1
    first, second = once.skips(task_id)
    prefix = f"WARNING aceleryctl.guard Skipped a second copy of task once.count[{task_id}] "
    assert first.startswith(prefix + "attempt 0: it ")  # "is running" or "already ran"
    assert second.startswith(prefix + f"attempt 0: it already ran on {once.worker.hostname}")
    assert "planted-secret-arg" not in "\n".join(once.records())
    # Every copy was acked: none waits in the queue or among the unacked messages.
    wait_until(lambda: in_broker(broker, once.queue, task_id) == 0, timeout=TIMEOUT)
    # count acks early: its claim was made done when the run started, for DONE_TTL.
    held = claims.get(f"aceleryctl:once:{task_id}:0")
    assert held is not None
    assert held.decode().startswith("done ")
    assert 86_000 < claims.ttl(f"aceleryctl:once:{task_id}:0") <= 86_400


def test_an_acks_late_task_is_claimed_until_acked_then_done(
    once_workers: dict[str, OnceWorker], records: redis.Redis, claims: redis.Redis
) -> None:
    once = once_workers["guarded"]
    task_id, key = unique("late"), unique("count")
    claim_key = f"aceleryctl:once:{task_id}:0"
    publish_copies(worker_app.count_late, (key,), task_id, once.queue, 2)
    wait_until(
        lambda: runs(records, key) == 1 and len(once.skips(task_id)) == 1,
        timeout=TIMEOUT,
        message=lambda: f"runs={runs(records, key)}, records={once.records()}",
    )
    wait_until(lambda: (claims.get(claim_key) or b"").startswith(b"done "), timeout=TIMEOUT)
    assert 86_000 < claims.ttl(claim_key) <= 86_400
    publish_copies(worker_app.count_late, (key,), task_id, once.queue, 1)
    wait_until(lambda: len(once.skips(task_id)) == 2, timeout=TIMEOUT, message=once.records)
    assert (
        f"[{task_id}] attempt 0: it already ran on {once.worker.hostname}"
        in (once.skips(task_id)[1])
    )
    assert runs(records, key) == 1


def test_celery_retries_run_and_a_copy_of_the_first_attempt_does_not(
    once_workers: dict[str, OnceWorker], records: redis.Redis
) -> None:
    once = once_workers["guarded"]
    task_id, key = unique("retry"), unique("count")
    publish_copies(worker_app.retrying, (key, 2), task_id, once.queue, 2)
    wait_until(
        lambda: runs(records, f"{key}:ok") == 1 and once.skips(task_id),
        timeout=TIMEOUT,
        message=lambda: f"runs={runs(records, key)}, records={once.records()}",
    )
    assert runs(records, key) == 3  # attempts 0, 1 and 2; the second copy of 0 skipped
    [skip] = once.skips(task_id)
    assert f"once.retrying[{task_id}] attempt 0:" in skip


def test_a_replaced_task_runs_its_replacement(
    once_workers: dict[str, OnceWorker], once_app: Celery, records: redis.Redis
) -> None:
    once = once_workers["guarded"]
    task_id, key, then = unique("replace"), unique("count"), unique("count")
    worker_app.replacing.apply_async((key, then), task_id=task_id, queue=once.queue)
    wait_until(
        lambda: runs(records, then) == 1,
        timeout=TIMEOUT,
        message=lambda: f"runs={runs(records, key)}, records={once.records()}",
    )
    wait_until(lambda: once_app.AsyncResult(task_id).state == "SUCCESS", timeout=TIMEOUT)
    assert runs(records, key) == 1
    assert once.skips(task_id) == []


def test_a_task_that_opts_out_runs_every_copy(
    once_workers: dict[str, OnceWorker], records: redis.Redis
) -> None:
    once = once_workers["guarded"]
    task_id, key = unique("optout"), unique("count")
    publish_copies(worker_app.unguarded, (key,), task_id, once.queue, 2)
    wait_until(lambda: runs(records, key) == 2, timeout=TIMEOUT, message=once.records)
    assert once.skips(task_id) == []


def test_with_the_guard_off_both_copies_run(
    once_workers: dict[str, OnceWorker], records: redis.Redis, claims: redis.Redis
) -> None:
    once = once_workers["off"]
    task_id, key = unique("off"), unique("count")
    publish_copies(worker_app.count, (key,), task_id, once.queue, 2)
    wait_until(lambda: runs(records, key) == 2, timeout=TIMEOUT)
    assert once.records() == []
    assert claims.exists(f"aceleryctl:once:{task_id}:0") == 0


def test_an_unreachable_guard_redis_lets_tasks_run_with_one_error_record(
    once_workers: dict[str, OnceWorker], records: redis.Redis
) -> None:
    once = once_workers["down"]
    task_id, key, other = unique("down"), unique("count"), unique("count")
    publish_copies(worker_app.count, (key,), task_id, once.queue, 3)
    for _ in range(2):
        worker_app.count.apply_async((other,), queue=once.queue)
    wait_until(
        lambda: runs(records, key) == 3 and runs(records, other) == 2,
        timeout=TIMEOUT,
        message=lambda: f"runs={runs(records, key)}/{runs(records, other)}: {once.records()}",
    )
    [error] = once.records("ERROR")
    assert "ERROR aceleryctl.guard The run-once guard cannot reach its Redis (ConnectionError" in (
        error
    )
    assert "tasks run unguarded" in error
    assert "ACELERYCTL['RUN_ONCE']['REDIS_URL']" in error
    assert once.records("WARNING") == []
