"""The one Celery task that runs Django task functions on workers: ``aceleryctl.django_task``.

Registered on every Celery app (Celery's ``shared_task``) when the backend is
first made, in web processes and workers alike. It runs only functions
registered by ``@task`` for a :class:`~aceleryctl.backends.CeleryBackend` in
this process (:mod:`.registry`): a message naming any other path is rejected
(Celery's ``Reject``, not requeued) and logged at ERROR on
``aceleryctl.backends``; the path is never imported and nothing is called.

For an accepted message, on the task's thread: the record (:mod:`.records`) is
stored as the ``STARTED`` meta, ``task_started`` is sent, the function runs
(a coroutine function on this thread's event loop, one per worker process with
the prefork and solo pools), ``task_finished`` is sent, and the record is the
Celery result; when the function raised, :class:`~.records.TaskFunctionError`
carrying the record is raised for Celery to store (the original exception
chained to it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from datetime import UTC, datetime
from inspect import iscoroutinefunction
from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from aceleryctl.backends.records import (
    RUNNER_NAME,
    Record,
    TaskFunctionError,
    error_entry,
    parse_time,
    record_of,
)
from aceleryctl.backends.registry import registered

__all__ = ["current_celery_task", "run_django_task"]

logger = logging.getLogger("aceleryctl.backends")

_local = threading.local()


def current_celery_task() -> Any:
    """The Celery task running a Django task function on this thread, or ``None``."""
    return getattr(_local, "task", None)


def _event_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for coroutine functions, made on first use and
    again in a forked child (a loop must not cross a fork)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or getattr(_local, "pid", None) != os.getpid() or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        _local.pid = os.getpid()
    return loop


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _previous_workers(celery_task: Any) -> list[str]:
    # A redelivered or retried message: the workers of the earlier attempts are in
    # the record the last one stored.
    request = celery_task.request
    if not (request.retries or (request.delivery_info or {}).get("redelivered")):
        return []
    try:
        meta = celery_task.backend.get_task_meta(request.id)
    except Exception:
        return []
    record = record_of(meta.get("result"))
    return list(record.get("worker_ids") or []) if record else []


def _task_result(task: Any, task_id: str, record: Record, status: Any) -> Any:
    from aceleryctl.compat.django_tasks import TaskError, TaskResult

    started = parse_time(record.get("started_at"))
    return TaskResult(
        task=task,
        id=task_id,
        status=status,
        enqueued_at=parse_time(record.get("enqueued_at")),
        started_at=started,
        finished_at=parse_time(record.get("finished_at")),
        last_attempted_at=started,
        args=record.get("args") or [],
        kwargs=record.get("kwargs") or {},
        backend=record.get("backend") or task.backend,
        errors=[
            TaskError(exception_class_path=e[0], traceback=e[1]) for e in record.get("errors", [])
        ],
        worker_ids=list(record.get("worker_ids") or []),
    )


def _call(task: Any, result: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    from aceleryctl.compat.django_tasks import TaskContext

    if task.takes_context:
        args = [TaskContext(task_result=result), *args]
    func = task.func
    if iscoroutinefunction(func):
        return _event_loop().run_until_complete(func(*args, **kwargs))
    return func(*args, **kwargs)


@shared_task(name=RUNNER_NAME, bind=True, typing=False)
def run_django_task(
    self: Any, path: str, alias: str, enqueued_at: str | None, /, *args: Any, **kwargs: Any
) -> Record:
    """Run the registered Django task function at ``path`` (see the module docstring).

    Returns:
        The task's record, with ``return_value`` (JSON-normalised).

    Raises:
        Reject: ``path`` is not a registered ``@task`` function of this backend.
        TaskFunctionError: the function raised; carries the record with ``errors``.
    """
    task = registered(path) if isinstance(path, str) else None
    if task is None:
        logger.error(
            "rejected task %s: %r is not a @task function of an aceleryctl CeleryBackend "
            "registered in this worker (its module is not imported, and nothing is run)",
            self.request.id,
            path,
        )
        raise Reject(f"{path!r} is not a registered Django task function", requeue=False)
    from aceleryctl.compat.django_tasks import (
        TaskResultStatus,
        set_return_value,
        task_finished,
        task_started,
    )

    sender = type(task.get_backend())
    started = _now()
    record: Record = {
        "django_task": path,
        "backend": alias,
        "args": list(args),
        "kwargs": dict(kwargs),
        "enqueued_at": enqueued_at,
        "started_at": started,
        "finished_at": None,
        "worker_ids": [*_previous_workers(self), str(self.request.hostname or os.getpid())],
    }
    self.update_state(state="STARTED", meta=record)
    running = _task_result(task, self.request.id, record, TaskResultStatus.RUNNING)
    task_started.send(sender=sender, task_result=running)
    _local.task = self
    from aceleryctl.compat.django_tasks import normalize_json

    try:
        value = normalize_json(_call(task, running, record["args"], record["kwargs"]))
    except BaseException as exc:
        # As Django's own backends do, a failure is anything the function raised
        # (a return value that is not JSON included) but KeyboardInterrupt; only
        # the exact SystemExit of exit() / sys.exit(), not a worker's own.
        if not isinstance(exc, Exception) and type(exc) is not SystemExit:
            raise
        record["finished_at"] = _now()
        record["errors"] = [error_entry(exc)]
        failed = _task_result(task, self.request.id, record, TaskResultStatus.FAILED)
        task_finished.send(sender=sender, task_result=failed)
        raise TaskFunctionError(dict(record)) from exc
    finally:
        _local.task = None
    record["finished_at"] = _now()
    record["return_value"] = value
    done = _task_result(task, self.request.id, record, TaskResultStatus.SUCCESSFUL)
    set_return_value(done, value)
    task_finished.send(sender=sender, task_result=done)
    return record
