"""The fault suite on RabbitMQ: a dead, silent, held, paused, stopped or killed broker
under a storm of callers (the Redis suite's helpers and promises, see
``tests/integration/faults/test_faults.py``):

* every call returns within its deadline (plus scheduling slack), with a task id or
  a TaskDispatchError subclass, and the event loop keeps ticking;
* a returned id is executed exactly once; an id reported as not sent is never
  executed; an id whose outcome was unknown at most once;
* the breaker opens during the fault and closes again by itself;
* no publishing threads and no RabbitMQ connections are left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import amqp
import kombu.exceptions
import kombu.pools
import pytest
import redis
from celery import Celery

from aceleryctl import AsyncCeleryController, BreakerState
from aceleryctl.exceptions import TaskDispatchError
from tests._support.holding_proxy import HoldingProxy
from tests._support.rabbitmq_server import RabbitMQServer
from tests._support.redis_server import RedisServer
from tests._support.tarpit import Tarpit
from tests._support.waiting import wait_until, wait_until_async
from tests._support.worker import CeleryWorker
from tests.integration._helpers import new_marker
from tests.integration.faults.test_faults import (
    DEADLINE,
    MAX_STALL,
    Storm,
    _close_leftover_controllers,  # noqa: F401  (autouse: closes what a failed test left open)
    check_outcomes,
    close_and_check_no_leaks,
    closed_port_fails_fast,
    fault_persists,
    make_controller,
    sentinel_ok,
    silent_broker_fails_in_time,
)

#: Both AMQP dispatch paths: Celery's stock send_task and the direct path (the
#: loop path is Redis's only).
PATHS = pytest.mark.parametrize("direct", [False, True], ids=["stock", "direct"])

#: The loop-stall bound while a RabbitMQ node boots from nothing (a restart after
#: SIGKILL): the node keeps both cores busy for seconds while the worker reconnects
#: beside it, and the process, starved of CPU, loses it while one of its threads
#: holds the GIL. ``stop_app``/``start_app`` is held to the Redis suite's bound (half
#: the deadline): its extra stalls were a thread started on the loop's thread (the
#: recovery probe's, now readied on a publishing thread) and CPU starvation (the
#: loop thread's run-queue wait, ``/proc/self/task/<tid>/schedstat``, accounted for
#: most of each remaining gap). A publish that blocked the loop would hold it for
#: the whole fault, several seconds.
MAX_STALL_BOOT = DEADLINE


def amqp_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def connections(server: RabbitMQServer) -> int:
    """This process's established TCP connections to the node (Linux ``/proc``).

    Counted on this side rather than with ``rabbitmqctl list_connections``: the
    worker reconnects after ``stop_app`` with connections of its own, which are not
    the controller's to close.
    """
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == server.port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


async def test_closed_port_fails_fast_and_opens_the_breaker(
    records: redis.Redis, redis_server: RedisServer
) -> None:
    await closed_port_fails_fast(make_controller(amqp_url(1), redis_server.url(1)), records)


@PATHS
async def test_silent_broker_fails_every_caller_within_its_deadline(
    records: redis.Redis, redis_server: RedisServer, direct: bool
) -> None:
    with Tarpit() as tarpit:
        ctl = make_controller(amqp_url(tarpit.port), redis_server.url(1))
        await silent_broker_fails_in_time(ctl, records, direct, until_open=True)


@PATHS
@pytest.mark.parametrize("fault", ["held-proxy", "sigstop", "stop-app"])
async def test_broker_fault_mid_storm_never_duplicates_and_recovers(
    fault: str,
    direct: bool,
    fault_rabbitmq: RabbitMQServer,
    fault_worker: CeleryWorker,
    records: redis.Redis,
    redis_server: RedisServer,
) -> None:
    proxy = HoldingProxy(fault_rabbitmq.port).start() if fault == "held-proxy" else None
    url = amqp_url(proxy.port if proxy else fault_rabbitmq.port)
    baseline = connections(fault_rabbitmq)
    ctl = make_controller(url, redis_server.url(1))
    # stop_app also drops the worker's connection: a message it had received but
    # not yet acknowledged is delivered again and runs twice, whoever published it
    # (consumer-side at-least-once). So that the publishing side is what is judged,
    # that storm goes to a queue nobody consumes until the fault is over.
    parked = new_marker("stopq") if fault == "stop-app" else None
    storm = Storm(ctl, callers=20, direct=direct, queue=parked)

    def start_fault() -> None:
        if proxy:
            proxy.hold()
        elif fault == "sigstop":
            fault_rabbitmq.pause()
        else:
            fault_rabbitmq.stop_app()

    def end_fault() -> None:
        if proxy:
            proxy.release()
        elif fault == "sigstop":
            fault_rabbitmq.resume()
        else:
            fault_rabbitmq.start_app()

    async def scenario() -> None:
        await wait_until_async(lambda: storm.kinds().get("ok", 0) >= 40, timeout=20)
        await asyncio.to_thread(start_fault)  # rabbitmqctl blocks: off the loop
        try:
            await wait_until_async(lambda: ctl.breaker.statistics().times_opened >= 1, timeout=15)
            await fault_persists(ctl, rejections=200, timeout=20)
        finally:
            await asyncio.to_thread(end_fault)
        recovered_after = await sentinel_ok(ctl, records, timeout=20, worker=fault_worker)
        assert recovered_after < 10, f"took {recovered_after:.2f} s to dispatch again"
        await wait_until_async(lambda: storm.kinds().get("ok", 0) >= 80, timeout=20)

    try:
        await storm.run(scenario)
        if parked is not None:
            check_parked(fault_rabbitmq, storm, parked)
            consume_parked(ctl, fault_worker, parked)
        check_outcomes(storm, records)
        assert ctl.breaker.state is BreakerState.CLOSED
        assert (ctl.statistics().direct > 0) is direct
        assert storm.max_lag() < MAX_STALL, f"event loop stalled {storm.max_lag():.3f} s"
        await close_and_check_no_leaks(ctl)
        wait_until(
            lambda: connections(fault_rabbitmq) <= baseline,
            timeout=10,
            message=lambda: f"connections left behind: {connections(fault_rabbitmq)}",
        )
    finally:
        if proxy:
            proxy.stop()


async def test_killed_and_restarted_broker(
    fault_rabbitmq: RabbitMQServer,
    fault_worker: CeleryWorker,
    records: redis.Redis,
    redis_server: RedisServer,
) -> None:
    # Published to a queue nobody consumes during the storm: every returned id must
    # be in RabbitMQ after the restart (confirmed persistent messages on a durable
    # queue survive SIGKILL); the worker consumes it afterwards.
    queue = new_marker("killq")
    ctl = make_controller(amqp_url(fault_rabbitmq.port), redis_server.url(1))
    # RabbitMQ takes seconds to boot: enough calls for a storm that outlasts it.
    storm = Storm(ctl, callers=20, max_calls=3000, queue=queue, direct=True)

    async def scenario() -> None:
        await wait_until_async(lambda: storm.kinds().get("ok", 0) >= 40, timeout=20)
        await asyncio.to_thread(fault_rabbitmq.kill)
        await wait_until_async(lambda: ctl.breaker.state is BreakerState.OPEN, timeout=15)
        await fault_persists(ctl, rejections=200, timeout=20)
        await asyncio.to_thread(fault_rabbitmq.restart)
        started = asyncio.get_running_loop().time()
        while True:  # the first success after the restart (bounded)
            try:
                await ctl.send_task("aceleryctl_tests.record", (new_marker("s"),), queue=queue)
                break
            except TaskDispatchError:
                assert asyncio.get_running_loop().time() - started < 30, "never dispatched again"
                await asyncio.sleep(0.05)  # pacing between attempts
        await wait_until_async(lambda: storm.kinds().get("ok", 0) >= 80, timeout=30)

    await storm.run(scenario)
    assert ctl.breaker.statistics().times_opened >= 1
    assert ctl.breaker.state is BreakerState.CLOSED
    assert ctl.statistics().direct > 0
    assert storm.max_lag() < MAX_STALL_BOOT, f"event loop stalled {storm.max_lag():.3f} s"
    check_parked(fault_rabbitmq, storm, queue)
    consume_parked(ctl, fault_worker, queue)
    check_outcomes(storm, records)
    await close_and_check_no_leaks(ctl)


def check_parked(server: RabbitMQServer, storm: Storm, queue: str) -> None:
    """Every returned id is in ``queue`` once; no id reported as not sent is."""
    queued = queued_ids(server, queue)
    ok_ids = {o.task_id for o in storm.outcomes if o.kind == "ok"}
    assert ok_ids <= set(queued), f"{len(ok_ids - set(queued))} returned ids not in RabbitMQ"
    assert len(queued) == len(set(queued)), "a message was queued twice"
    not_sent = {o.task_id for o in storm.outcomes if not o.may_exist}
    assert not (not_sent & set(queued)), "an id reported as not sent is in the queue"


def consume_parked(ctl: AsyncCeleryController, worker: CeleryWorker, queue: str) -> None:
    """Have ``worker`` consume ``queue`` from now on; leaves no connection open."""
    try:
        _add_consumer(ctl, worker, queue)
    finally:
        close_control_pools(ctl.app)


def close_control_pools(app: Celery) -> None:
    """Close the connections Celery's control commands left in kombu's pools.

    A broadcast publishes through ``app.amqp.producer_pool`` even when it is handed
    a connection, and that pool draws from ``kombu.pools.connections``: pools of the
    whole process, keyed by broker URL, that ``app.close()`` leaves open (measured:
    the one connection counted after a ``stop_app`` test was the pooled one, held
    by a pooled producer; the controller's own connections were all closed). They
    are forgotten as well, so that a later broadcast to the same URL gets new pools
    rather than closed ones.
    """
    key = app.connection_for_write()
    for group in (kombu.pools.producers, kombu.pools.connections):
        pool = group[key]
        del group[key]
        pool.force_close_all()


def _add_consumer(ctl: AsyncCeleryController, worker: CeleryWorker, queue: str) -> None:
    """Ask ``worker`` (control command ``add_consumer``) until it reports consuming
    ``queue`` (``active_queues``): a reply alone does not prove it, as a consumer
    that restarts after its own reconnection may come back without the queue."""

    def consuming() -> bool:
        try:
            with ctl.app.connection_for_write() as connection:  # closed: no leak to count
                control = ctl.app.control
                control.add_consumer(
                    queue,
                    destination=[worker.hostname],
                    reply=True,
                    timeout=2,
                    connection=connection,
                )
                active = control.inspect(
                    destination=[worker.hostname], timeout=2, connection=connection
                ).active_queues()
        except (OSError, kombu.exceptions.OperationalError, amqp.exceptions.AMQPError):
            return False  # the app's control connection predates the fault: ask again
        queues = (active or {}).get(worker.hostname) or []
        return any(q.get("name") == queue for q in queues)

    wait_until(consuming, timeout=30, interval=0.5, message="the worker never took the queue")


def queued_ids(server: RabbitMQServer, queue: str) -> list[str]:
    """The task ids in ``queue``, read without taking them (requeued on close)."""
    connection = amqp.Connection(f"127.0.0.1:{server.port}", connect_timeout=5)
    connection.connect()
    ids: list[str] = []
    try:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=False)) is not None:
            ids.append(message.headers["id"])
    finally:
        connection.close()  # unacked messages go back to the queue
    return ids


def test_probe_reaches_the_broker_even_on_an_established_connection(
    fault_rabbitmq: RabbitMQServer, redis_server: RedisServer
) -> None:
    ctl = make_controller(amqp_url(fault_rabbitmq.port), redis_server.url(1))
    try:
        assert ctl.sync.probe() >= 0.0  # connects
        assert ctl.sync.probe() >= 0.0  # a round trip on the same connection
        fault_rabbitmq.pause()
        try:
            with pytest.raises(TaskDispatchError):
                ctl.sync.probe(timeout=0.5)
        finally:
            fault_rabbitmq.resume()
        assert ctl.sync.probe() >= 0.0  # a fresh connection after the failed one
    finally:
        ctl.sync.close(DEADLINE * 3)
