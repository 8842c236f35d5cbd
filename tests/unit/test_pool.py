"""PublishPool: bounds, deadlines, abandonment, context and shutdown; no sleeps.

Deadlines run on a :class:`ManualClock`: a deadline passes when a test advances the
clock to it, never because real time went by. Real time only bounds waits for a
condition (``GATE_TIMEOUT``), which a passing test never reaches.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import pytest

from aceleryctl._clock import ClockTimer, ManualClock, TimerClock
from aceleryctl.dispatch.pool import (
    BatchJob,
    PoolClosed,
    PoolSaturated,
    PublishPool,
    WaitOutcome,
    run_each,
)

GATE_TIMEOUT = 10.0  # seconds; a bound on every wait, never expected to be reached
DEADLINE = 5.0  # seconds on the manual clock
BEFORE = 4.5  # advanced first: half a second short of DEADLINE (both exact in binary)

T = TypeVar("T")

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


class WatchedClock(ManualClock):
    """A manual clock that tells the test which timers were scheduled and which ran."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()
        self.scheduled: list[float] = []  # ``when`` of each call_at, in order
        self.fired: list[float] = []  # ``when`` of each timer that ran, in order

    def call_at(self, when: float, callback: Callable[[], object]) -> ClockTimer:
        def fire() -> None:
            self.fired.append(when)
            callback()

        with self._changed:
            self.scheduled.append(when)
            self._changed.notify_all()
        return super().call_at(when, fire)

    def await_scheduled(self, count: int) -> None:
        """Wait until ``count`` timers have been scheduled (by another thread)."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.scheduled) >= count, GATE_TIMEOUT)


class InThread(Generic[T]):
    """Runs a blocking call on its own thread; :meth:`result` joins it, bounded."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._result: list[T] = []
        self._thread = threading.Thread(target=lambda: self._result.append(fn()), daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> T:
        self._thread.join(GATE_TIMEOUT)
        assert not self._thread.is_alive(), "the call never returned"
        assert len(self._result) == 1, "the call raised"
        return self._result[0]


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``, failing the test if that takes GATE_TIMEOUT of real time."""
    return await asyncio.wait_for(awaitable, GATE_TIMEOUT)


async def loop_turns(count: int = 3) -> None:
    """Let the event loop run ``count`` turns (not a delay)."""
    for _ in range(count):
        await asyncio.sleep(0)


def pair(outcome: WaitOutcome[Any]) -> tuple[bool, bool]:
    return (outcome.done, outcome.never_started)


@pytest.fixture
def clock() -> WatchedClock:
    return WatchedClock()


@pytest.fixture
def pool(clock: WatchedClock) -> Iterator[PublishPool]:
    p = PublishPool(max_workers=1, max_pending=3, name="t", clock=clock)
    yield p
    p.shutdown(timeout=GATE_TIMEOUT)


def running_and_queued(pool: PublishPool) -> tuple[Gate, Future[str], Future[str]]:
    """A gated job holding the pool's one thread, and a job queued behind it."""
    gate = Gate()
    running = pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    queued = pool.submit(lambda: "never")
    return gate, running, queued


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
    p = PublishPool(max_workers=2, max_pending=10, name="cap", clock=ManualClock())
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
        clock=ManualClock(),
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


def test_the_default_clock_is_monotonic_time() -> None:
    p = PublishPool(max_workers=1, max_pending=1)
    assert p.clock is time.monotonic
    assert not isinstance(p.clock, TimerClock)  # waited for with real timeouts


def test_rejects_a_clock_that_is_not_callable() -> None:
    with pytest.raises(ValueError, match="clock must be a callable"):
        PublishPool(max_workers=1, max_pending=1, clock=5.0)  # type: ignore[arg-type]


def test_sync_wait_deadline_on_running_job_is_unknown_outcome(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate = Gate()
    future = pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    waiter = InThread(lambda: pool.wait(future, timeout=DEADLINE))
    clock.await_scheduled(1)
    assert clock.scheduled == [DEADLINE]
    clock.advance(BEFORE)
    assert clock.fired == []  # nothing can have woken the waiter
    assert waiter.running()
    clock.advance(DEADLINE - BEFORE)  # exactly at the deadline
    assert clock.fired == [DEADLINE]
    assert pair(waiter.result()) == (False, False)
    assert pool.abandon(future) is False
    gate.release.set()
    assert future.result(GATE_TIMEOUT) == "gate done"


def test_sync_wait_deadline_on_queued_job_means_never_started(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate, _, queued = running_and_queued(pool)
    waiter = InThread(lambda: pool.wait(queued, timeout=DEADLINE))
    clock.await_scheduled(1)
    clock.advance(BEFORE)
    assert waiter.running()
    assert not queued.cancelled()
    assert pool.statistics().waiting == 1
    clock.advance(DEADLINE - BEFORE)
    assert pair(waiter.result()) == (False, True)
    assert queued.cancelled()
    stats = pool.statistics()
    assert (stats.waiting, stats.abandoned) == (0, 1)
    gate.release.set()


def test_sync_wait_ends_when_the_job_does_without_the_clock_moving(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate = Gate()
    future = pool.submit(gate)
    waiter = InThread(lambda: pool.wait(future, timeout=DEADLINE))
    clock.await_scheduled(1)
    gate.release.set()
    outcome = waiter.result()
    assert pair(outcome) == (True, False)
    assert outcome.future.result() == "gate done"
    assert clock() == 0.0
    clock.advance(2 * DEADLINE)
    assert clock.fired == []  # the finished wait cancelled its timer


def test_sync_wait_on_a_done_job_schedules_nothing(pool: PublishPool, clock: WatchedClock) -> None:
    future = pool.submit(lambda: "ok")
    assert future.result(GATE_TIMEOUT) == "ok"
    assert pair(pool.wait(future, timeout=DEADLINE)) == (True, False)
    assert clock.scheduled == []


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_sync_wait_without_time_left_does_not_block(
    pool: PublishPool, clock: WatchedClock, timeout: float
) -> None:
    gate, running, queued = running_and_queued(pool)
    assert pair(pool.wait(queued, timeout=timeout)) == (False, True)
    assert pair(pool.wait(running, timeout=timeout)) == (False, False)
    assert clock() == 0.0
    gate.release.set()


async def test_async_wait_returns_done_outcome(pool: PublishPool, clock: WatchedClock) -> None:
    outcome = await bounded(pool.wait_async(pool.submit(lambda: "ok"), timeout=DEADLINE))
    assert outcome.done
    assert outcome.future.result() == "ok"
    assert clock() == 0.0


async def test_async_wait_deadline_on_queued_and_running_jobs(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate, running, queued = running_and_queued(pool)
    first = asyncio.ensure_future(pool.wait_async(running, timeout=DEADLINE))
    second = asyncio.ensure_future(pool.wait_async(queued, timeout=DEADLINE))
    await asyncio.sleep(0)  # both register their deadlines (one loop turn, not a delay)
    assert clock.scheduled == [DEADLINE]  # one timer for the two waits of the same length
    clock.advance(BEFORE)
    await loop_turns()
    assert not first.done()
    assert not second.done()
    assert not queued.cancelled()
    clock.advance(DEADLINE - BEFORE)  # exactly at the deadline
    assert pair(await bounded(first)) == (False, False)
    assert pair(await bounded(second)) == (False, True)
    assert queued.cancelled()
    assert clock.fired == [DEADLINE]
    gate.release.set()
    assert running.result(GATE_TIMEOUT) == "gate done"


async def test_async_deadline_passes_when_another_thread_moves_the_clock(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate, _, queued = running_and_queued(pool)
    waiter = asyncio.ensure_future(pool.wait_async(queued, timeout=DEADLINE))
    await asyncio.sleep(0)
    mover = InThread(lambda: clock.advance(DEADLINE))  # the timer runs on that thread
    mover.result()
    assert pair(await bounded(waiter)) == (False, True)
    gate.release.set()


async def test_async_waits_of_one_length_expire_at_their_own_deadlines(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate, _, queued = running_and_queued(pool)
    later = pool.submit(lambda: "never")
    first = asyncio.ensure_future(pool.wait_async(queued, timeout=DEADLINE))
    await asyncio.sleep(0)
    clock.advance(2.0)
    second = asyncio.ensure_future(pool.wait_async(later, timeout=DEADLINE))  # due at 7.0
    await asyncio.sleep(0)
    clock.advance(3.0)  # 5.0: only the first
    assert pair(await bounded(first)) == (False, True)
    await loop_turns()
    assert not second.done()
    assert clock.scheduled == [DEADLINE, 7.0]  # re-armed for the next entry
    clock.advance(1.5)
    await loop_turns()
    assert not second.done()
    clock.advance(0.5)  # 7.0
    assert pair(await bounded(second)) == (False, True)
    gate.release.set()


@pytest.mark.parametrize("timeout", [0.0, -1.0])
async def test_async_wait_without_time_left_expires_on_the_next_turn(
    pool: PublishPool, clock: WatchedClock, timeout: float
) -> None:
    gate, running, queued = running_and_queued(pool)
    outcomes = await bounded(
        asyncio.gather(pool.wait_async(queued, timeout), pool.wait_async(running, timeout))
    )
    assert [pair(o) for o in outcomes] == [(False, True), (False, False)]
    assert clock() == 0.0
    gate.release.set()


async def test_cancelling_the_waiter_abandons_a_queued_job(
    pool: PublishPool, clock: WatchedClock
) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    ran: list[str] = []
    queued = pool.submit(lambda: ran.append("ran"))
    waiter = asyncio.ensure_future(pool.wait_async(queued, timeout=DEADLINE))
    await asyncio.sleep(0)  # let the waiter start awaiting (one loop turn, not a delay)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(waiter)
    assert queued.cancelled()
    clock.advance(DEADLINE)  # the cancelled wait's deadline passing changes nothing
    await loop_turns()
    gate.release.set()
    pool.submit(lambda: None).result(GATE_TIMEOUT)
    assert ran == []
    assert pool.statistics().abandoned == 1


def test_abandoned_entries_do_not_grow_the_queue_while_threads_hang(pool: PublishPool) -> None:
    gate = Gate()
    pool.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    for _ in range(5_000):
        pool.abandon(pool.submit(lambda: None))
    assert len(pool._queue) <= 2 * pool.statistics().max_pending + 32
    assert pool.statistics().abandoned == 5_000
    gate.release.set()


def test_shutdown_drains_queued_jobs_then_refuses(clock: WatchedClock) -> None:
    p = PublishPool(max_workers=1, max_pending=10, name="drain", clock=clock)
    gate = Gate()
    results = [p.submit(gate)] + [p.submit(functools.partial(int, i)) for i in range(5)]
    assert gate.started.wait(GATE_TIMEOUT)
    closer = InThread(lambda: p.shutdown(DEADLINE))
    clock.await_scheduled(1)
    clock.advance(BEFORE)
    assert closer.running()  # the gate holds the thread; the deadline has not come
    gate.release.set()  # the jobs finishing wake the shutdown, not the clock
    assert closer.result() is True
    assert [f.result(0) for f in results] == ["gate done", 0, 1, 2, 3, 4]
    assert clock.fired == []
    with pytest.raises(PoolClosed):
        p.submit(lambda: None)
    assert p.statistics().closed


def test_shutdown_timeout_cancels_queued_and_leaves_running(clock: WatchedClock) -> None:
    p = PublishPool(max_workers=1, max_pending=10, name="stuck", clock=clock)
    gate, running, queued = running_and_queued(p)
    closer = InThread(lambda: p.shutdown(timeout=DEADLINE))
    clock.await_scheduled(1)
    assert clock.scheduled == [DEADLINE]
    clock.advance(BEFORE)
    assert clock.fired == []
    assert closer.running()
    assert not queued.cancelled()
    clock.advance(DEADLINE - BEFORE)  # exactly at the deadline
    assert closer.result() is False
    assert queued.cancelled()
    assert not running.done()
    stats = p.statistics()
    assert (stats.closed, stats.running, stats.waiting, stats.abandoned) == (True, 1, 0, 1)
    gate.release.set()
    assert running.result(GATE_TIMEOUT) == "gate done"


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_shutdown_without_time_left_does_not_wait(clock: WatchedClock, timeout: float) -> None:
    p = PublishPool(max_workers=1, max_pending=10, name="now", clock=clock)
    gate, running, queued = running_and_queued(p)
    assert p.shutdown(timeout=timeout) is False
    assert queued.cancelled()
    assert not running.done()
    assert clock() == 0.0
    gate.release.set()
    assert running.result(GATE_TIMEOUT) == "gate done"


async def test_a_real_clock_waits_with_real_timeouts_and_reads_the_given_clock() -> None:
    # Zero timeouts: the real-time paths (a threading wait, the loop's call_later,
    # the condition's wait_for) without waiting for real time.
    readings: list[float] = []

    def counting_clock() -> float:
        readings.append(now := time.monotonic())
        return now

    p = PublishPool(max_workers=1, max_pending=10, name="real", clock=counting_clock)
    gate, running, queued = running_and_queued(p)
    assert pair(await bounded(p.wait_async(running, 0.0))) == (False, False)
    assert readings  # the deadline was the given clock's reading
    assert pair(p.wait(running, 0.0)) == (False, False)
    assert pair(await bounded(p.wait_async(queued, 0.0))) == (False, True)
    assert p.shutdown(timeout=0.0) is False
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
        batch_runner=runner, batch_ready=ready.is_set, clock=ManualClock(),
    )  # fmt: skip
    gate = Gate()
    p.submit(gate)
    assert gate.started.wait(GATE_TIMEOUT)
    futures = [p.submit(functools.partial(int, i)) for i in range(10)]
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
        batch_runner=runner, batch_ready=lambda: False, clock=ManualClock(),
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

    p = PublishPool(
        max_workers=1, max_pending=5, name="broken", batch_runner=broken, clock=ManualClock()
    )
    assert p.submit(lambda: None).result(GATE_TIMEOUT) == "first"
    future = p.submit(lambda: None)
    assert future.result(GATE_TIMEOUT) == "first"
    p.shutdown(GATE_TIMEOUT)


async def test_deadlines_of_different_lengths_expire_independently(clock: WatchedClock) -> None:
    pool = PublishPool(max_workers=1, max_pending=10, name="t", clock=clock)
    gate = Gate()
    try:
        running = pool.submit(gate)
        assert gate.started.wait(GATE_TIMEOUT)
        queued = [pool.submit(lambda: None) for _ in range(3)]
        # A long wait started first must not hold back shorter ones behind it.
        long_wait = asyncio.ensure_future(pool.wait_async(queued[0], timeout=30.0))
        short = [
            asyncio.ensure_future(pool.wait_async(queued[1], timeout=1.0)),
            asyncio.ensure_future(pool.wait_async(queued[2], timeout=2.0)),
        ]
        await asyncio.sleep(0)
        clock.advance(1.0)
        assert pair(await bounded(short[0])) == (False, True)
        await loop_turns()
        assert not short[1].done()
        clock.advance(1.0)
        assert pair(await bounded(short[1])) == (False, True)
        assert not long_wait.done()
        assert clock.fired == [1.0, 2.0]
        gate.release.set()
        outcome = await bounded(long_wait)
        assert outcome.done
        assert (await bounded(pool.wait_async(running, timeout=30.0))).done
        assert clock() == 2.0
    finally:
        gate.release.set()
        pool.shutdown(timeout=GATE_TIMEOUT)


async def test_settled_waits_leave_no_deadline_entries_behind(pool: PublishPool) -> None:
    for _ in range(500):
        assert (await bounded(pool.wait_async(pool.submit(lambda: 1), timeout=DEADLINE))).done
    waker = pool._wakers[asyncio.get_running_loop()]
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

    pool = PublishPool(
        max_workers=1, max_pending=100, name="t", max_batch=50, batch_runner=runner,
        clock=ManualClock(),
    )  # fmt: skip
    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:
        futures = [pool.submit(lambda: 1) for _ in range(20)]
        waits = [asyncio.ensure_future(pool.wait_async(f, GATE_TIMEOUT)) for f in futures]
        await asyncio.sleep(0)  # every waiter registers (one loop turn, not a delay)
        wakeups.clear()
        release.set()
        outcomes = await bounded(asyncio.gather(*waits))
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        pool.shutdown(timeout=GATE_TIMEOUT)
    assert all(o.done for o in outcomes)
    # The first job may run alone (the thread takes what is queued when it starts);
    # the rest settle as one batch: one wake-up each, not one per job.
    assert len(wakeups) <= 2


async def test_a_settled_batch_resumes_its_waiters_a_few_per_loop_turn() -> None:
    from aceleryctl.dispatch.waker import _WAKE_CHUNK

    release = threading.Event()

    def runner(jobs: Sequence[BatchJob]) -> None:
        assert release.wait(GATE_TIMEOUT)
        run_each(jobs)

    pool = PublishPool(
        max_workers=1, max_pending=100, name="t", max_batch=50, batch_runner=runner,
        clock=ManualClock(),
    )  # fmt: skip
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
        turns = await bounded(asyncio.gather(*waits))
    finally:
        counting = False
        await counter
        pool.shutdown(timeout=GATE_TIMEOUT)
    per_turn = collections.Counter(turns)
    assert max(per_turn.values()) <= _WAKE_CHUNK
    assert len(per_turn) >= 40 // _WAKE_CHUNK


@pytest.mark.parametrize(("turn", "settles_at"), [(0.002, 2), (0.0001, 16)])
async def test_a_budgeted_waker_fits_the_waiters_per_turn_to_the_turns_length(
    turn: float, settles_at: int
) -> None:
    from aceleryctl.dispatch.waker import _MAX_CHUNK, _MIN_CHUNK, LoopWaker

    assert (_MIN_CHUNK, _MAX_CHUNK) == (2, 16)
    now = 0.0

    def turn_clock() -> float:  # every reading is one more turn of ``turn`` seconds
        nonlocal now
        now += turn
        return now

    loop = asyncio.get_running_loop()
    waker = LoopWaker(loop, ManualClock(), turn_budget=0.001, turn_clock=turn_clock)
    signals = [loop.create_future() for _ in range(400)]
    for signal in signals:
        waker.wake_here(signal)
    per_turn: list[int] = []
    while not all(s.done() for s in signals):
        before = sum(s.done() for s in signals)
        await asyncio.sleep(0)
        per_turn.append(sum(s.done() for s in signals) - before)
    assert per_turn[0] == 8  # where it starts
    assert max(per_turn) <= 16
    # Turns longer than the budget shrink the count by one a turn, shorter ones grow
    # it, down to 2 or up to 16, where it stays.
    assert per_turn[10] == settles_at
    assert per_turn[10:-1] == [settles_at] * (len(per_turn) - 11)
