"""Run a batch of publish jobs on one publishing thread, in as few round trips as possible.

The pool hands a publishing thread the jobs that queued up together (see
:class:`aceleryctl._pool.PublishPool`). Here they are split in two:

* calls the direct path accepts (:mod:`aceleryctl._direct`) are built one by one
  and written with one ``LPUSH`` per queue, all in one round trip;
* the rest go through Celery's stock ``apply_async``: inside kombu's publish
  batch when there are several (one pipelined round trip), or one at a time.

Every job's future is settled here, on the publishing thread: with the task id
(direct path), with what Celery returned (stock path), or with the exception.
A write that fails takes all of its messages with it: each of them may or may
not have reached the broker, and their callers are told so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aceleryctl._calls import Call
from aceleryctl._direct import DirectPath, Prepared, Snapshot
from aceleryctl._pool import BatchJob, run_each
from aceleryctl._transport import LeanProducer, ThreadPublisher

__all__ = ["BatchRunner"]


class BatchRunner:
    """The pool's batch runner for one engine. Runs on publishing threads only.

    Args:
        direct: the direct path, or ``None`` when the broker is not Redis.
        publisher: returns the calling thread's :class:`ThreadPublisher`.
    """

    __slots__ = ("_direct", "_publisher")

    def __init__(self, direct: DirectPath | None, publisher: Callable[[], ThreadPublisher]):
        self._direct = direct
        self._publisher = publisher

    def __call__(self, jobs: Sequence[BatchJob]) -> None:
        """Publish ``jobs`` and settle every one of their futures. Never raises."""
        stock: list[BatchJob] = []
        direct: list[tuple[BatchJob, Call]] = []  # calls whose ``direct`` is set
        for job in jobs:
            call: Call | None = getattr(job.fn, "call", None)
            if self._direct is not None and call is not None and call.direct is not None:
                direct.append((job, call))
            else:
                stock.append(job)
        if direct:
            # The app's settings are read once per batch, and only when needed.
            snapshot = self._direct.configured() if self._direct is not None else None
            if snapshot is None:
                stock.extend(job for job, _ in direct)
            else:
                stock.extend(self._run_direct(direct, snapshot))
        if stock:
            self._run_stock(stock)

    # -- direct path -----------------------------------------------------------

    def _run_direct(self, batch: list[tuple[BatchJob, Call]], snapshot: Snapshot) -> list[BatchJob]:
        """Write the direct calls; return the jobs that must take the stock path."""
        assert self._direct is not None
        publisher = self._publisher()
        deadline = min(call.deadline for _, call in batch)
        started = time.monotonic()
        for _, call in batch:
            call.started_at = started
        try:
            producer = publisher.producer(deadline)
        except BaseException as exc:
            _settle_all(batch, exc)
            return []
        leftovers: list[BatchJob] = []
        ready: list[tuple[BatchJob, Call, Prepared]] = []
        for job, call in batch:
            try:
                assert call.direct is not None
                prepared = job.context.run(
                    self._direct.prepare, call.direct, producer.channel, snapshot
                )
            except BaseException as exc:
                call.finished_at = time.monotonic()
                job.future.set_exception(exc)
                continue
            if prepared is None:
                leftovers.append(job)
            else:
                ready.append((job, call, prepared))
        if not ready:
            return leftovers
        try:
            publisher.run(lambda p: _write(p, [item for _, _, item in ready]), deadline)
        except BaseException as exc:
            _settle_all([(job, call) for job, call, _ in ready], exc)
            return leftovers
        finished = time.monotonic()
        for job, call, item in ready:
            call.finished_at = finished
            call.sent_direct = True
            job.context.run(DirectPath.announce, (item,))
            job.future.set_result(item.task_id)
        return leftovers

    # -- stock path, batched -----------------------------------------------------

    def _run_stock(self, jobs: Sequence[BatchJob]) -> None:
        """Celery builds every message as usual; when there are several publishes
        that can share this thread's producer, kombu's publish batch buffers their
        Redis commands and sends them in one pipeline (never retried)."""
        found = [getattr(job.fn, "call", None) for job in jobs]
        calls = [call for call in found if call is not None and call.accepts_producer]
        if len(jobs) < 2 or len(calls) < len(jobs):
            run_each(jobs)  # one publish, or one that dispatches on its own
            return
        publisher = self._publisher()
        try:
            producer = publisher.producer(min(c.deadline for c in calls))
        except Exception:
            run_each(jobs)  # each job connects, retries and fails on its own
            return
        outcomes: list[tuple[bool, Any]] = []
        started = time.monotonic()
        flush_error: BaseException | None = None
        try:
            batching: Any = producer  # kombu 5.7's Producer.batch is not in the stubs
            with batching.batch(max_size=4 * len(jobs) + 8):
                for job, call in zip(jobs, calls, strict=True):
                    call.started_at = started
                    try:
                        outcomes.append((True, job.context.run(_buffer, call, producer)))
                    except BaseException as exc:
                        outcomes.append((False, exc))
        except BaseException as exc:
            flush_error = exc
            publisher.discard()
        finished = time.monotonic()
        for job, call, (ok, value) in zip(jobs, calls, outcomes, strict=False):
            call.finished_at = finished
            if ok and flush_error is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(flush_error if ok and flush_error else value)
        for job in jobs[len(outcomes) :]:  # not reached: the batch itself failed first
            job.future.set_exception(flush_error or RuntimeError("publish batch failed"))


def _write(producer: LeanProducer, items: list[Prepared]) -> None:
    """One round trip: an ``LPUSH`` of every message per list key, in call order.

    ``LPUSH key a b c`` leaves the list as ``c b a``; workers pop from the right,
    so ``a`` is taken first, as if each had been pushed on its own. The commands
    go out in one ``sendall`` (redis-py would send large values piece by piece,
    and every socket call lets the event loop thread take the GIL). Never retried.

    Raises:
        redis.RedisError: the write failed; any of the messages may have landed.
    """
    by_key: dict[str, list[str]] = {}
    for item in items:
        payloads = by_key.get(item.key)
        if payloads is None:
            producer.declare_once(item.queue)  # once per queue and connection
            payloads = by_key[item.key] = []
        payloads.append(item.payload)
    connection = producer.redis_connection()
    try:
        packed = [
            chunk
            for key, payloads in by_key.items()
            for chunk in connection.pack_command("LPUSH", key, *payloads)
        ]
        connection.send_packed_command([b"".join(packed)], check_health=False)
        for _ in by_key:
            connection.read_response()
    except BaseException:
        producer.drop_redis_connection()  # replies may be left unread: never reuse it
        raise


def _settle_all(batch: Sequence[tuple[BatchJob, Call]], exc: BaseException) -> None:
    finished = time.monotonic()
    for job, call in batch:
        call.finished_at = finished
        job.future.set_exception(exc)


def _buffer(call: Call, producer: Any) -> Any:
    # Inside a kombu publish batch: builds the message and buffers its commands.
    if call.prepare is not None:
        call.prepare()
    return call.publish(producer)
