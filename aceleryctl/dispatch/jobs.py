"""What the publish pool takes and gives: its errors, jobs, wait outcomes and statistics.

Standard library only; see :mod:`aceleryctl.dispatch.pool` for the pool itself.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar, Union

__all__ = [
    "AnyFuture",
    "BatchJob",
    "PoolClosed",
    "PoolSaturated",
    "PoolStatistics",
    "WaitOutcome",
    "run_each",
]

T = TypeVar("T")


class PoolSaturated(Exception):
    """The wait queue already holds ``max_pending`` jobs; the job was not queued."""


class PoolClosed(Exception):
    """The pool is shut down and accepts no jobs."""


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`PublishPool`, taken under its lock.

    Attributes:
        max_workers: the thread limit.
        max_pending: the wait-queue limit.
        threads: threads started so far (at most ``max_workers``).
        running: jobs executing now.
        waiting: jobs queued and not abandoned.
        submitted: jobs accepted since creation.
        completed: jobs that ran to completion, successfully or by raising.
        abandoned: jobs dropped from the queue before they started.
        saturated: submissions refused because the queue was full.
        closed: whether :meth:`PublishPool.shutdown` has been called.
    """

    max_workers: int
    max_pending: int
    threads: int
    running: int
    waiting: int
    submitted: int
    completed: int
    abandoned: int
    saturated: int
    closed: bool


#: A job's future: a concurrent one (pool jobs) or an asyncio one (the loop path's
#: jobs, settled on their loop's thread). The engine reads either the same way.
AnyFuture: TypeAlias = Union[Future[T], "asyncio.Future[T]"]


class WaitOutcome(NamedTuple, Generic[T]):
    """What a bounded wait on a job found.

    Exactly one of the three is true: ``done`` (``future`` holds the result or the
    exception), ``never_started`` (the job was abandoned before it ran; it never
    will), or neither, meaning it was still running when the deadline passed.
    Immutable; a named tuple, made on every wait (a frozen dataclass's ``__init__``
    costs 0.5 µs more).
    """

    future: AnyFuture[T]
    done: bool
    never_started: bool


class BatchJob(Protocol):
    """What a batch runner sees of one job: run ``fn`` in ``context``, settle ``future``."""

    @property
    def fn(self) -> Callable[[], Any]: ...
    @property
    def context(self) -> contextvars.Context: ...
    @property
    def future(self) -> Future[Any]: ...


def run_each(jobs: Sequence[BatchJob]) -> None:
    """The default batch runner: run each job in its own context, settle its future."""
    for job in jobs:
        try:
            result = job.context.run(job.fn)
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
