"""A task's current state, read from the result backend once for many subscribers.

When 1,000 browsers subscribe to one task at the same moment, the result backend
is read a handful of times, not 1,000: :class:`SnapshotReader` keeps at most one
read in flight per task, and everyone who asks while it runs shares the *next*
read, started as soon as the current one ends. Nobody is handed a read that began
before they asked, which is what makes the consumer's "join the group, then read
the snapshot" ordering sound: any state written after a subscriber's read began
has its live event still on the way to that subscriber.

Reads run on a small thread pool of their own (:data:`MAX_READ_THREADS` threads,
named ``aceleryctl-snapshot``): never on the event loop, never on the loop's
default executor, never on asgiref's single thread-sensitive thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from celery import Celery

from aceleryctl._logging import Redactor
from aceleryctl.events import (
    STATE_OF_TYPE,
    Phase,
    Progress,
    RetryInfo,
    TaskEvent,
    order_key,
    split_order,
    summarize_error,
    summarize_result,
)

__all__ = [
    "MAX_READ_THREADS",
    "SnapshotReader",
    "SnapshotSource",
    "celery_snapshot_source",
    "reader_for_loop",
    "snapshot_from_meta",
]

#: A function that reads one task's current state; called on a snapshot thread.
#: ``None`` means nothing is known (Celery's ``PENDING``).
SnapshotSource: TypeAlias = Callable[[str], TaskEvent | None]

#: Threads reading the result backend, per process.
MAX_READ_THREADS: Final = 2

_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _read_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=MAX_READ_THREADS, thread_name_prefix="aceleryctl-snapshot"
            )
        return _executor


# -- Celery result meta -> TaskEvent ---------------------------------------------------


def _timestamp(value: object, default: float) -> float:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return default
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # Celery stores UTC
        return max(value.timestamp(), 0.0)
    return default


def _error_type(value: object) -> str:
    name = type(value).__name__ if isinstance(value, BaseException) else "Error"
    return name[:255]


def snapshot_from_meta(
    task_id: str,
    meta: Mapping[str, Any],
    *,
    redactor: Redactor | None = None,
    now: float | None = None,
) -> TaskEvent | None:
    """The event that describes a result backend's task meta, or ``None`` (pending).

    ``order`` is a lower bound of the state's true order key: the attempt comes from
    ``meta["retries"]`` (stored with ``result_extended``) and is 0 otherwise; a
    progress state uses the ``order`` stored in its meta when there is one, else
    report number 0 of its attempt, so that any live progress report sorts after
    it. Terminal states are final whatever their key (the consumer never sends
    anything after one).

    Runs on any thread; pure. Never raises: a meta it cannot read is ``None``.
    """
    status = meta.get("status")
    retries = meta.get("retries")
    attempt = retries if isinstance(retries, int) and not isinstance(retries, bool) else 0
    attempt = max(attempt, 0)
    name = meta.get("name")
    task_name = name if isinstance(name, str) and 0 < len(name) <= 255 else None
    current = time.time() if now is None else now
    timestamp = _timestamp(meta.get("date_done"), current)
    value = meta.get("result")
    common: dict[str, Any] = {"task_id": task_id, "task_name": task_name, "timestamp": timestamp}
    try:
        if status == "SUCCESS":
            return TaskEvent(
                type="task.succeeded",
                state="SUCCESS",
                order=order_key(attempt, Phase.TERMINAL),
                result=summarize_result(value, redactor),
                **common,
            )
        if status in ("FAILURE", "REVOKED"):
            kind = "task.failed" if status == "FAILURE" else "task.revoked"
            return TaskEvent(
                type=kind,
                state=STATE_OF_TYPE[kind],
                order=order_key(attempt, Phase.TERMINAL),
                error_type=_error_type(value) if status == "FAILURE" else "Revoked",
                error_message=summarize_error(value) if value is not None else None,
                **common,
            )
        if status == "RETRY":
            return TaskEvent(
                type="task.retried",
                state="RETRY",
                order=order_key(attempt, Phase.RETRIED),
                retry=RetryInfo(attempt=attempt + 1, reason=summarize_error(value)),
                error_type=_error_type(value),
                error_message=summarize_error(value),
                **common,
            )
        if status == "PROGRESS":
            return _progress(value, attempt, common)
        if status in ("STARTED", "RECEIVED"):
            kind = "task.started" if status == "STARTED" else "task.received"
            phase = Phase.STARTED if status == "STARTED" else Phase.RECEIVED
            return TaskEvent(type=kind, state=status, order=order_key(attempt, phase), **common)
    except ValueError:
        return None
    return None


def _progress(value: object, attempt: int, common: dict[str, Any]) -> TaskEvent:
    info = value if isinstance(value, Mapping) else {}
    order = order_key(attempt, Phase.PROGRESS)
    stored = info.get("order")
    try:
        if isinstance(stored, int) and split_order(stored)[1] == Phase.PROGRESS:
            order = stored
    except ValueError:
        pass
    try:
        progress = Progress(info.get("current", 0), info.get("total"), info.get("message"))
    except ValueError:
        progress = Progress(0)
    return TaskEvent(
        type="task.progress", state="PROGRESS", order=order, progress=progress, **common
    )


def celery_snapshot_source(app: Celery, *, redactor: Redactor | None = None) -> SnapshotSource:
    """A :data:`SnapshotSource` reading ``app``'s result backend.

    The returned function runs on a snapshot thread; Celery gives each thread its
    own backend client. It raises what the backend raises (bounded by the
    backend's own socket timeouts); the reader reports that as unavailable.
    """

    def read(task_id: str) -> TaskEvent | None:
        meta = app.backend.get_task_meta(task_id)
        return snapshot_from_meta(task_id, meta, redactor=redactor)

    read.__qualname__ = f"celery_snapshot_source({app.main!r})"
    return read


# -- coalescing reader -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Reads:
    running: asyncio.Future[TaskEvent | None] | None = None
    following: asyncio.Future[TaskEvent | None] | None = None


class SnapshotReader:
    """Coalesces concurrent snapshot reads per (source, task). One per event loop.

    Args:
        executor: where reads run; the shared ``aceleryctl-snapshot`` pool by default.

    Attributes:
        reads: backend reads started so far.
        requests: snapshots asked for so far (``requests - reads`` were shared).
    """

    def __init__(self, executor: concurrent.futures.Executor | None = None) -> None:
        self._executor = executor
        self._tasks: dict[tuple[SnapshotSource, str], _Reads] = {}
        self.reads = 0
        self.requests = 0

    async def read(
        self, source: SnapshotSource, task_id: str, *, timeout: float
    ) -> TaskEvent | None:
        """``source(task_id)``, read no earlier than this call, shared with concurrent callers.

        Runs on the event loop; the read itself runs on a snapshot thread.
        Cancelling or timing out stops this caller's wait only: the read goes on
        for the others, and its thread is freed when the backend answers.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            Exception: whatever ``source`` raised.
        """
        self.requests += 1
        key = (source, task_id)
        reads = self._tasks.get(key)
        if reads is None:
            reads = self._tasks[key] = _Reads()
        if reads.running is None:
            future = self._start(key, reads)
        else:
            if reads.following is None:
                reads.following = asyncio.get_running_loop().create_future()
            future = reads.following
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    def _start(
        self,
        key: tuple[SnapshotSource, str],
        reads: _Reads,
        future: asyncio.Future[TaskEvent | None] | None = None,
    ) -> asyncio.Future[TaskEvent | None]:
        loop = asyncio.get_running_loop()
        if future is None:
            future = loop.create_future()
        reads.running = future
        self.reads += 1
        source, task_id = key
        work = loop.run_in_executor(self._executor or _read_executor(), source, task_id)

        def finished(done: asyncio.Future[TaskEvent | None]) -> None:
            assert future is not None
            if not future.done():
                if done.cancelled():
                    future.cancel()
                elif (error := done.exception()) is not None:
                    future.set_exception(error)
                else:
                    future.set_result(done.result())
            _retrieve(future)
            following, reads.following = reads.following, None
            reads.running = None
            if following is not None:
                self._start(key, reads, following)
            elif self._tasks.get(key) is reads:
                del self._tasks[key]

        work.add_done_callback(finished)
        return future


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every waiter may have given up already: mark the outcome as seen.
    if not future.cancelled():
        future.exception()


_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SnapshotReader] = (
    weakref.WeakKeyDictionary()
)


def reader_for_loop() -> SnapshotReader:
    """The running loop's :class:`SnapshotReader` (built on first use)."""
    loop = asyncio.get_running_loop()
    reader = _readers.get(loop)
    if reader is None:
        reader = _readers[loop] = SnapshotReader()
    return reader
