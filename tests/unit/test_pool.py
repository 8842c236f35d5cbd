"""PublishPool: bounds, deadlines, abandonment, context and shutdown; no sleeps."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from aceleryctl._pool import BatchJob, PoolClosed, PoolSaturated, PublishPool, run_each

GATE_TIMEOUT = 10.0  # seconds; a bound on every wait, never expected to be reached

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Gate:
    """A job that signals when it starts and blocks until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran_on: list[str] = []

    def __call__(self) -> str:
        self.ran_on.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(GATE_TIMEOUT), "gate never released"
        return "gate done"


@pytest.fixture
def pool() -> Iterator[PublishPool]:
    p = PublishPool(max_workers=1, max_pending=3, name="t")
    yield p
    p.shutdown(timeout=GATE_TIMEOUT)


def test_runs_job_and_returns_its_result(pool: PublishPool) -> None:
    future = pool.submit(lambda: 40 + 2)
    assert future.result(GATE_TIMEOUT) == 42
    stats = pool.statistics()
    assert (stats.submitted, stats.completed, stats.running, stats.waiting) == (1, 1, 0, 0)


def test_job_exception_lands_in_the_future(pool: PublishPool) -> None:
    def boom() -> None:
        raise ValueError("no")

    future = pool.submit(boom)
    with pytest.raises(ValueError, match="no"):
        future.result(GATE_TIMEOUT)


def test_context_variables_flow_into_the_thread(pool: PublishPool) -> None:
    token = request_id.set("req-7")
    try:
        future = pool.submit(request_id.get)
    finally:
        request_id.reset(token)
    assert future.result(GATE_TIMEOUT) == "req-7"


def test_threads_are_daemon_started_lazily_and_capped() -> None:
    p = PublishPool(max_workers=2, max_pending=10, name="cap")
    assert p.statistics().threads == 0
    gates = [Gate() for _ in range(3)]
    futures = [p.submit(g) for g in gates]
    assert gates[0].started.wait(GATE_TIMEOUT)
    assert gates[1].started.wait(GATE_TIMEOUT)
    stats = p.statistics()
    assert stats.threads == 2
    assert stats.running == 2
    assert stats.waiting == 1
    names = {t.name: t for t in threading.enumerate() if t.name.startswith("cap-publish-")}
    assert len(names) == 2
    assert all(t.daemon for t in names.values())
    for g in gates:
        g.release.set()
    assert [f.result(GATE_TIMEOUT) for f in futures] == ["gate done"] * 3
    assert p.shutdown(GATE_TIMEOUT)


def test_initializer_runs_once_per_thread_before_jobs() -> None:
    seen: list[str] = []
    p = PublishPool(
        max_workers=1,
        max_pending=5,
        name="init",
        initializer=lambda: seen.append(threading.current_thread().name),
    )
    for _ in range(3):
        p.submit(lambda: None).result(GATE_TIMEOUT)
    assert seen == ["init-publish-1"]
    p.shutdown(GATE_TIMEOUT)


def test_full_queue_refuses_at_once(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    for _ in range(3):
        pool.submit(lambda: None)
    with pytest.raises(PoolSaturated, match="max_pending=3"):
        pool.submit(lambda: None)
    assert pool.statistics().saturated == 1
    gate.release.set()


def test_abandoned_queued_job_never_runs(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    ran: list[str] = []
    queued = pool.submit(lambda: ran.append("ran"))
    assert pool.abandon(queued) is True
    assert pool.abandon(queued) is True  # idempotent, counted once
    stats = pool.statistics()
    assert (stats.waiting, stats.abandoned) == (0, 1)
    gate.release.set()
    assert pool.submit(lambda: "after").result(GATE_TIMEOUT) == "after"
    assert ran == []


def test_running_job_cannot_be_abandoned(pool: PublishPool) -> None:
    gate = Gate()
    future = pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    assert pool.abandon(future) is False
    gate.release.set()
    assert future.result(GATE_TIMEOUT) == "gate done"


def test_sync_wait_deadline_on_running_job_is_unknown_outcome(pool: PublishPool) -> None:
    gate = Gate()
    future = pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    outcome = pool.wait(future, timeout=0.01)
    assert (outcome.done, outcome.never_started) == (False, False)
    gate.release.set()
    assert future.result(GATE_TIMEOUT) == "gate done"


def test_sync_wait_deadline_on_queued_job_means_never_started(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    queued = pool.submit(lambda: "never")
    outcome = pool.wait(queued, timeout=0.01)
    assert (outcome.done, outcome.never_started) == (False, True)
    gate.release.set()


async def test_async_wait_returns_done_outcome(pool: PublishPool) -> None:
    outcome = await pool.wait_async(pool.submit(lambda: "ok"), timeout=GATE_TIMEOUT)
    assert outcome.done
    assert outcome.future.result() == "ok"


async def test_async_wait_deadline_on_queued_and_running_jobs(pool: PublishPool) -> None:
    gate = Gate()
    running = pool.submit(gate)
    queued = pool.submit(lambda: "never")
    assert gate.started.wait(GATE_TIMEOUT)
    first = await pool.wait_async(running, timeout=0.01)
    second = await pool.wait_async(queued, timeout=0.01)
    assert (first.done, first.never_started) == (False, False)
    assert (second.done, second.never_started) == (False, True)
    gate.release.set()


async def test_cancelling_the_waiter_abandons_a_queued_job(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    ran: list[str] = []
    queued = pool.submit(lambda: ran.append("ran"))
    waiter = asyncio.ensure_future(pool.wait_async(queued, timeout=GATE_TIMEOUT))
    await asyncio.sleep(0)  # let the waiter start awaiting (one loop turn, not a delay)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert queued.cancelled()
    gate.release.set()
    pool.submit(lambda: None).result(GATE_TIMEOUT)
    assert ran == []


def test_abandoned_entries_do_not_grow_the_queue_while_threads_hang(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    for _ in range(5_000):
        pool.abandon(pool.submit(lambda: None))
    assert len(pool._queue) <= 2 * pool.statistics().max_pending + 32
    assert pool.statistics().abandoned == 5_000
    gate.release.set()


def test_shutdown_drains_queued_jobs_then_refuses() -> None:
    p = PublishPool(max_workers=1, max_pending=10, name="drain")
    results = [p.submit(lambda i=i: i) for i in range(5)]
    assert p.shutdown(GATE_TIMEOUT) is True
    assert [f.result(0) for f in results] == [0, 1, 2, 3, 4]
    with pytest.raises(PoolClosed):
        p.submit(lambda: None)
    assert p.statistics().closed


def test_shutdown_timeout_cancels_queued_and_leaves_running() -> None:
    p = PublishPool(max_workers=1, max_pending=10, name="stuck")
    gate = Gate()
    running = p.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    queued = p.submit(lambda: "never")
    assert p.shutdown(timeout=0.01) is False
    assert queued.cancelled()
    assert not running.done()
    gate.release.set()
    assert running.result(GATE_TIMEOUT) == "gate done"


def test_statistics_are_frozen(pool: PublishPool) -> None:
    stats = pool.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.running = 5  # type: ignore[misc]


@pytest.mark.parametrize(("workers", "pending"), [(0, 1), (1, 0), (-1, 5)])
def test_rejects_bad_limits(workers: int, pending: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PublishPool(max_workers=workers, max_pending=pending)


def test_batches_up_to_max_batch_once_ready() -> None:
    batches: list[int] = []
    ready = threading.Event()

    def runner(jobs: Sequence[BatchJob]) -> None:
        batches.append(len(jobs))
        run_each(jobs)

    p = PublishPool(
        max_workers=1, max_pending=50, name="batch", max_batch=4,
        batch_runner=runner, batch_ready=ready.is_set,
    )  # fmt: skip
    gate = Gate()
    p.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    futures = [p.submit(lambda i=i: i) for i in range(10)]
    ready.set()  # the next take may batch
    gate.release.set()
    assert [f.result(GATE_TIMEOUT) for f in futures] == list(range(10))
    assert batches == [1, 4, 4, 2]
    p.shutdown(GATE_TIMEOUT)


def test_not_ready_means_one_job_at_a_time_and_the_rest_stay_abandonable() -> None:
    taken: list[int] = []

    def runner(jobs: Sequence[BatchJob]) -> None:
        taken.append(len(jobs))
        run_each(jobs)

    p = PublishPool(
        max_workers=1, max_pending=50, name="unready", max_batch=8,
        batch_runner=runner, batch_ready=lambda: False,
    )  # fmt: skip
    gate = Gate()
    p.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    queued = [p.submit(lambda: None) for _ in range(3)]
    assert all(p.abandon(f) for f in queued[1:])
    gate.release.set()
    queued[0].result(GATE_TIMEOUT)
    assert set(taken) == {1}
    p.shutdown(GATE_TIMEOUT)


def test_a_runner_that_fails_still_settles_every_job() -> None:
    def broken(jobs: Sequence[BatchJob]) -> None:
        jobs[0].future.set_result("first")
        raise RuntimeError("runner bug")

    p = PublishPool(max_workers=1, max_pending=5, name="broken", batch_runner=broken)
    assert p.submit(lambda: None).result(GATE_TIMEOUT) == "first"
    future = p.submit(lambda: None)
    assert future.result(GATE_TIMEOUT) == "first"
    p.shutdown(GATE_TIMEOUT)


async def test_deadlines_of_different_lengths_expire_independently() -> None:
    pool = PublishPool(max_workers=1, max_pending=10, name="t")
    gate = Gate()
    try:
        running = pool.submit(gate)
        assert gate.started.wait(GATE_TIMEOUT)
        queued = [pool.submit(lambda: None) for _ in range(3)]
        # A long wait started first must not hold back shorter ones behind it.
        long_wait = asyncio.ensure_future(pool.wait_async(queued[0], timeout=GATE_TIMEOUT))
        short = await asyncio.gather(
            pool.wait_async(queued[1], timeout=0.01), pool.wait_async(queued[2], timeout=0.02)
        )
        assert [o.never_started for o in short] == [True, True]
        assert not long_wait.done()
        gate.release.set()
        outcome = await long_wait
        assert outcome.done
        assert (await pool.wait_async(running, timeout=GATE_TIMEOUT)).done
    finally:
        gate.release.set()
        pool.shutdown(timeout=GATE_TIMEOUT)


async def test_settled_waits_leave_no_deadline_entries_behind(pool: PublishPool) -> None:
    from aceleryctl._pool import _waker_for

    for _ in range(500):
        assert (await pool.wait_async(pool.submit(lambda: 1), timeout=GATE_TIMEOUT)).done
    waker = _waker_for(asyncio.get_running_loop())
    # Entries of finished waits are dropped as new ones arrive: at most one is left.
    assert sum(len(q) for q in waker._deadlines.values()) <= 1


async def test_a_batch_wakes_the_loop_once() -> None:
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    original = loop.call_soon_threadsafe

    def counting(callback: object, *args: object, **kwargs: object) -> object:
        wakeups.append(callback)
        return original(callback, *args, **kwargs)  # type: ignore[arg-type]

    release = threading.Event()

    def runner(jobs: Sequence[BatchJob]) -> None:
        assert release.wait(GATE_TIMEOUT)
        run_each(jobs)

    pool = PublishPool(max_workers=1, max_pending=100, name="t", max_batch=50, batch_runner=runner)
    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        futures = [pool.submit(lambda: 1) for _ in range(20)]
        waits = [asyncio.ensure_future(pool.wait_async(f, GATE_TIMEOUT)) for f in futures]
        await asyncio.sleep(0)  # every waiter registers (one loop turn, not a delay)
        wakeups.clear()
        release.set()
        outcomes = await asyncio.gather(*waits)
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        pool.shutdown(timeout=GATE_TIMEOUT)
    assert all(o.done for o in outcomes)
    # The first job may run alone (the thread takes what is queued when it starts);
    # the rest settle as one batch: one wake-up each, not one per job.
    assert len(wakeups) <= 2


async def test_a_settled_batch_resumes_its_waiters_a_few_per_loop_turn() -> None:
    from aceleryctl._pool import _WAKE_CHUNK

    release = threading.Event()

    def runner(jobs: Sequence[BatchJob]) -> None:
        assert release.wait(GATE_TIMEOUT)
        run_each(jobs)

    pool = PublishPool(max_workers=1, max_pending=100, name="t", max_batch=50, batch_runner=runner)
    turn = 0
    counting = True

    async def count_turns() -> None:
        nonlocal turn
        while counting:
            turn += 1
            await asyncio.sleep(0)

    async def wait_one(future: Any) -> int:
        await pool.wait_async(future, GATE_TIMEOUT)
        return turn

    counter = asyncio.ensure_future(count_turns())
    try:
        futures = [pool.submit(lambda: 1) for _ in range(40)]
        waits = [asyncio.ensure_future(wait_one(f)) for f in futures]
        await asyncio.sleep(0)
        release.set()
        turns = await asyncio.gather(*waits)
    finally:
        counting = False
        await counter
        pool.shutdown(timeout=GATE_TIMEOUT)
    per_turn = collections.Counter(turns)
    assert max(per_turn.values()) <= _WAKE_CHUNK
    assert len(per_turn) >= 40 // _WAKE_CHUNK
