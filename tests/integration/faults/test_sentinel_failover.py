"""Redis Sentinel: the primary is killed while 20 callers dispatch on the direct wire.

A primary, replicas and three real ``redis-sentinel`` processes
(tests/_support/redis_sentinel.py); the controller and a real worker both use the
``sentinel://...;sentinel://...`` URL with ``master_name``, as kombu reads them.
For each storm, as in test_faults.py:

* every call returns within its deadline (plus scheduling slack);
* dispatch resumes on the promoted replica by itself (the recovery probe), and
  no id returned after the kill is lost (it runs, or the new primary holds it, or
  the worker received it: see :func:`check`); none runs twice;
* ids reported "nothing sent" never run; unknown ones run at most once;
* with ``replica_acks=1`` (``ACELERYCTL["REPLICA_ACKS"]``), every returned id is
  in the new primary's queue exactly once, including those returned just before
  the kill, and no id reported as not sent is (no worker consumes during that
  storm: see the test for why). Without it, Redis replicates after replying, so
  an id returned in the last moment before the kill may be lost: that count is
  printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import cast

import pytest
import redis

from aceleryctl import AsyncCeleryController, CircuitBreaker
from tests._support.broker_messages import read_queue
from tests._support.redis_sentinel import MASTER_NAME, SentinelCluster, sentinel_executable
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until, wait_until_async
from tests._support.worker import CeleryWorker
from tests.integration import celery_app as shared
from tests.integration._helpers import isolated_app, new_marker, shared_app_worker

from .test_faults import (  # the autouse fixture closes what a failed test left open
    DEADLINE,
    SLACK,
    Outcome,
    Storm,
    _close_leftover_controllers,  # noqa: F401
    _made,
    close_and_check_no_leaks,
    executions,
    publish_threads,
)

pytestmark = pytest.mark.skipif(
    sentinel_executable() is None and os.environ.get("ACELERYCTL_ALLOW_SKIP") == "1",
    reason="redis-sentinel is not installed",
)

#: Seconds after the promotion by which the first dispatch must have succeeded: the
#: recovery probe asks every 0.2 s; the rest is slack for a loaded 2-core machine.
RESUME_WITHIN = 3.0


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[SentinelCluster]:
    """A fresh deployment per test (the test kills its primary)."""
    replicas = getattr(request, "param", 1)
    server = os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server")
    with SentinelCluster.start(server=server, replicas=replicas) as deployment:
        yield deployment


@pytest.fixture
def sentinel_worker(cluster: SentinelCluster, redis_server: RedisServer) -> Iterator[CeleryWorker]:
    """A prefork worker on the Sentinel URL; records go to the session Redis."""
    env = {shared.MASTER_NAME_ENV: MASTER_NAME}
    name = f"sentinel-{new_marker()}"
    with shared_app_worker(name, cluster.url(0), redis_server, env=env) as worker:
        yield worker


def sentinel_controller(
    cluster: SentinelCluster, results_url: str, replica_acks: int = 0
) -> AsyncCeleryController:
    app = isolated_app(f"sentinel-{new_marker()}", cluster.url(0), results_url)
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **cluster.transport_options(),
    }
    ctl = AsyncCeleryController(
        app,
        dispatch_timeout=DEADLINE,
        max_workers=2,
        replica_acks=replica_acks,
        breaker=CircuitBreaker(failure_threshold=5, reset_timeout=30.0, max_reset_timeout=60.0),
    )
    _made.append((ctl, publish_threads()))
    return ctl


async def failover_storm(
    cluster: SentinelCluster,
    ctl: AsyncCeleryController,
    *,
    revive: bool = False,
) -> tuple[Storm, float, float]:
    """20 callers on the direct path; the primary is killed once calls succeed.

    With ``revive``, the killed primary is started again once the replica was
    promoted, and the sentinels make it the new primary's replica.
    Returns the storm, the clock reading of the kill, and seconds from the
    promotion (or the revived replica's return) to the first call that started
    after it and succeeded. The breaker's reset timeout is 30 s: only the recovery
    probe can close it that fast.
    """
    storm = Storm(ctl, callers=20, max_calls=2000, direct=True)
    killed_at = promoted_at = 0.0

    async def scenario() -> None:
        nonlocal killed_at, promoted_at
        await wait_until_async(lambda: storm.kinds().get("ok", 0) >= 100, timeout=30)
        old = cluster.kill_primary()
        killed_at = time.monotonic()  # dead: nothing written after this reaches it
        await asyncio.to_thread(cluster.wait_for_promotion)
        promoted_at = time.monotonic()
        if revive:
            await asyncio.to_thread(cluster.revive, old)
            await asyncio.to_thread(cluster.wait_for_replicas, 1)
            promoted_at = time.monotonic()

        def resumed() -> int:
            return sum(1 for o in storm.outcomes if o.kind == "ok" and o.started > promoted_at)

        await wait_until_async(lambda: resumed() >= 50, timeout=30, message=storm.kinds)

    await storm.run(scenario)
    first = min(
        o.started + o.elapsed for o in storm.outcomes if o.kind == "ok" and o.started > promoted_at
    )
    return storm, killed_at, first - promoted_at


def held_ids(client: redis.Redis) -> set[str]:
    """Task ids of every message the broker holds: waiting in the ``celery`` queue, or
    delivered to a worker and not acknowledged (kombu's ``unacked`` hash: a worker
    that lost its connection to the killed primary gets these again after the
    visibility timeout)."""
    ids = {m.headers.get("id") for m in read_queue(client, "celery")}
    for raw in cast("list[bytes]", client.hvals("unacked")):
        envelope = json.loads(raw)[0]
        ids.add(envelope.get("headers", {}).get("id"))
    return {i for i in ids if i}


def check(
    storm: Storm,
    records: redis.Redis,
    broker: redis.Redis,
    worker: CeleryWorker,
    killed_at: float,
    *,
    none_lost: bool,
) -> tuple[int, int]:
    """The promises of the module docstring. Returns how many returned ids are
    lost (neither run, nor held by the new primary, nor ever delivered), and how
    many the worker received but dropped.

    The second kind left the broker on the consumer's side: kombu's Redis
    transport pops a message (``BRPOP``) and then records it as unacknowledged in
    a second command, and Celery drops reserved messages when its connection
    breaks; a primary killed between the two loses it whatever the producer did.
    """
    late = [o for o in storm.outcomes if o.elapsed > DEADLINE + SLACK]
    assert not late, f"{len(late)} calls overran their deadline, e.g. {late[:3]}"
    ok = [o for o in storm.outcomes if o.kind == "ok"]

    def missing(outcomes: list[Outcome]) -> list[Outcome]:
        held, log = held_ids(broker), worker.log()
        return [
            o
            for o in outcomes
            if not executions(records, o.marker) and o.task_id not in held and o.task_id not in log
        ]

    after = [o for o in ok if o.started > killed_at]
    wait_until(
        lambda: not missing(after),
        timeout=60,
        message=lambda: f"ids returned after the kill lost: {missing(after)[:3]}",
    )
    if none_lost:
        wait_until(
            lambda: not missing(ok),
            timeout=30,
            message=lambda: f"returned ids lost with the primary: {missing(ok)[:3]}",
        )
    lost = len(missing(ok))
    held = held_ids(broker)
    dropped = (
        sum(1 for o in ok if not executions(records, o.marker) and o.task_id not in held) - lost
    )
    twice = [o for o in storm.outcomes if executions(records, o.marker) > 1]
    assert not twice, f"executed more than once: {twice[:3]}"
    lying = [o for o in storm.outcomes if not o.may_exist and executions(records, o.marker)]
    assert not lying, f"reported as not sent but executed: {lying[:3]}"
    return lost, dropped


async def test_primary_killed_mid_storm_dispatch_resumes_on_the_promoted_replica(
    cluster: SentinelCluster,
    sentinel_worker: CeleryWorker,
    redis_server: RedisServer,
) -> None:
    ctl = sentinel_controller(cluster, redis_server.url(1))
    assert ctl.health()["wire"] == "redis"  # the direct wire, on a Sentinel URL
    storm, killed_at, resumed = await failover_storm(cluster, ctl)
    assert ctl.statistics().direct > 0
    records, broker = redis_server.client(2), cluster.client(cluster.primary_port)
    try:
        lost, dropped = check(storm, records, broker, sentinel_worker, killed_at, none_lost=False)
    finally:
        records.close()
        broker.close()
    print(
        f"first success {resumed:.2f} s after the promotion; {storm.kinds()}; "
        f"lost {lost}; received by the worker and dropped {dropped}"
    )
    assert resumed < RESUME_WITHIN, f"dispatch resumed {resumed:.2f} s after the promotion"
    await close_and_check_no_leaks(ctl)


def queued_ids(client: redis.Redis) -> list[str]:
    """Task ids of the messages waiting in the ``celery`` queue (repeats kept)."""
    return [str(m.headers.get("id")) for m in read_queue(client, "celery")]


async def test_with_replica_acks_every_returned_id_is_in_the_new_primary(
    cluster: SentinelCluster,
    redis_server: RedisServer,
) -> None:
    # One replica, REPLICA_ACKS 1: every returned id is on the replica that gets
    # promoted. The promoted primary has no replica until the old one comes back:
    # calls are refused meanwhile (the breaker, whose probe then also waits for a
    # replica), and dispatch resumes once it is back.
    # No worker consumes during the storm: a consumer's BRPOP removes a message
    # from the primary (and, replicated, from the replica) before the worker has
    # read it, so a kill at that moment loses it on the consumer's side, whatever
    # the producer did (kombu's Redis transport; docs/brokers-redis.md). The
    # queue itself shows what the producer's promise is worth.
    ctl = sentinel_controller(cluster, redis_server.url(1), replica_acks=1)
    assert ctl._engine.wire.describe()["replica_acks"] == 1
    storm, _, resumed = await failover_storm(cluster, ctl, revive=True)
    broker = cluster.client(cluster.primary_port)
    try:
        queued = queued_ids(broker)
    finally:
        broker.close()
    counts = {task_id: queued.count(task_id) for task_id in set(queued)}
    ok = [o for o in storm.outcomes if o.kind == "ok"]
    lost = [o for o in ok if counts.get(str(o.task_id), 0) != 1]
    failovers = cluster.failovers()
    if lost and failovers > 1:
        # On a loaded machine the sentinels may call the new primary down too (1 s
        # without a PONG) and fail over again, to the revived node before its first
        # sync completed: that node is promoted empty, and what the previous primary
        # held goes with it. WAIT only promises that a replica held each write, not
        # that Sentinel promotes that replica (docs/brokers-redis.md).
        pytest.skip(
            f"{failovers} failovers instead of one; {len(lost)} of {len(ok)} returned ids "
            "were on a primary that a second failover replaced"
        )
    assert not lost, f"{len(lost)} of {len(ok)} returned ids not queued once, e.g. {lost[:3]}"
    twice = [o for o in storm.outcomes if counts.get(str(o.task_id), 0) > 1]
    assert not twice, f"queued more than once: {twice[:3]}"
    lying = [o for o in storm.outcomes if not o.may_exist and str(o.task_id) in counts]
    assert not lying, f"reported as not sent but queued: {lying[:3]}"
    print(f"first success {resumed:.2f} s after a replica was back; {storm.kinds()}")
    assert resumed < RESUME_WITHIN, f"dispatch resumed {resumed:.2f} s after a replica was back"
    await close_and_check_no_leaks(ctl)
