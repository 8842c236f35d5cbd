"""Celery's stored meta of a task, as Django's ``TaskResult``.

=====================================  ==============  =================================
Celery state                           Django status   where the facts come from
=====================================  ==============  =================================
``PENDING`` (no record)                ``READY``       this process's recent enqueues,
                                                       else ``TaskResultDoesNotExist``
``RECEIVED``, ``RETRY``                ``READY``       the message's arguments
``STARTED`` and any custom state       ``RUNNING``     the worker's record
(``PROGRESS``)                                         (``STARTED``), or the message's
                                                       arguments (``result_extended``)
``SUCCESS``                            ``SUCCESSFUL``  the record returned by the runner
``FAILURE``, ``REVOKED``, ``REJECTED`` ``FAILED``      the record in the stored error,
                                                       or Celery's own error fields
=====================================  ==============  =================================

The message's arguments are in the meta only with Celery's ``result_extended``
on (the backend's system check warns when it is off). The ``Task`` of a result is
looked up in the registry of decorated functions (:mod:`.registry`): a path is
never imported.

Thread-safe: pure functions, and one bounded map of recent enqueues per configured
backend (see :mod:`.shared`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aceleryctl._logging import scrub_credentials
from aceleryctl.backends.records import MARKER, Record, parse_time, record_of
from aceleryctl.backends.registry import registered
from aceleryctl.compat.django_tasks import (
    AnyTaskResult,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    set_return_value,
)

__all__ = ["RecentEnqueues", "STATUS_OF_STATE", "task_result_from_meta"]

#: Celery's states, as Django's statuses; any state not listed is ``RUNNING``.
STATUS_OF_STATE: dict[str, TaskResultStatus] = {
    "PENDING": TaskResultStatus.READY,
    "RECEIVED": TaskResultStatus.READY,
    "RETRY": TaskResultStatus.READY,
    "STARTED": TaskResultStatus.RUNNING,
    "SUCCESS": TaskResultStatus.SUCCESSFUL,
    "FAILURE": TaskResultStatus.FAILED,
    "REVOKED": TaskResultStatus.FAILED,
    "REJECTED": TaskResultStatus.FAILED,
}


class RecentEnqueues:
    """The last ``size`` results this process enqueued, by id: Celery keeps no
    record of a task until a worker takes it, so a ``PENDING`` id is known only here.

    Thread-safe enough for its use: single ``OrderedDict`` operations under the
    GIL; two racing evictions each forget one result.
    """

    __slots__ = ("_results", "_size")

    def __init__(self, size: int = 10_000) -> None:
        self._size = max(1, size)
        # Ordered by insertion: evicting the oldest is O(1) (a plain dict's first
        # key, after many deletions at its front, is found by a scan).
        self._results: OrderedDict[str, AnyTaskResult] = OrderedDict()

    def add(self, result: AnyTaskResult) -> None:
        """Remember ``result`` (the oldest is forgotten beyond ``size``)."""
        results = self._results
        results[result.id] = result
        if len(results) > self._size:
            results.popitem(last=False)  # never empty here: size >= 1

    def get(self, result_id: str) -> AnyTaskResult | None:
        """The result enqueued here under ``result_id``, or ``None``."""
        return self._results.get(result_id)


def _from_message(meta: Mapping[str, Any]) -> Record | None:
    # result_extended stores the request's positional arguments: the runner's.
    args = meta.get("args")
    if isinstance(args, list | tuple) and len(args) >= 3 and isinstance(args[0], str):
        path, alias, enqueued_at, *call_args = args
        call_kwargs = meta.get("kwargs")
        return {
            "django_task": path,
            "backend": str(alias),
            "args": call_args,
            "kwargs": dict(call_kwargs) if isinstance(call_kwargs, Mapping) else {},
            "enqueued_at": enqueued_at,
        }
    return None


def _celery_error(meta: Mapping[str, Any]) -> TaskError:
    stored = meta.get("result")
    if isinstance(stored, BaseException):
        kind = type(stored)
        path = f"{kind.__module__}.{kind.__qualname__}"
    elif isinstance(stored, Mapping) and stored.get("exc_type"):
        module = stored.get("exc_module") or "builtins"
        path = f"{module}.{stored['exc_type']}"
    else:
        path = "celery.exceptions.TaskRevokedError"
    text = meta.get("traceback")
    return TaskError(exception_class_path=path, traceback=scrub_credentials(str(text or "")))


def task_result_from_meta(
    result_id: str,
    meta: Mapping[str, Any] | None,
    backend_alias: str,
    recent: RecentEnqueues,
) -> AnyTaskResult:
    """Build the ``TaskResult`` of ``result_id`` from its Celery meta (``None``: none stored).

    Raises:
        TaskResultDoesNotExist: nothing is known of ``result_id`` here, or its
            function is not registered in this process (import its module).
    """
    state = str(meta.get("status") or "PENDING") if meta else "PENDING"
    status = STATUS_OF_STATE.get(state, TaskResultStatus.RUNNING)
    stored = meta.get("result") if meta else None
    record = record_of(stored) or (_from_message(meta) if meta else None)
    known = recent.get(result_id)
    if record is None:
        if known is None:
            raise TaskResultDoesNotExist(
                f"no task result {result_id!r}: Celery keeps no record of a task until a "
                "worker takes it, and this process did not enqueue it recently"
                + (
                    f" (state {state}; turn Celery's result_extended on)"
                    if meta and state != "PENDING"
                    else ""
                )
            )
        return _copy(known, status, meta)
    path = str(record.get(MARKER, ""))
    task = known.task if known is not None else registered(path)
    if task is None:
        raise TaskResultDoesNotExist(
            f"task result {result_id!r} is of {path!r}, which is not a @task function "
            "registered in this process: import its module first"
        )
    errors = [
        TaskError(exception_class_path=str(e[0]), traceback=str(e[1]))
        for e in record.get("errors") or []
        if isinstance(e, list | tuple) and len(e) == 2
    ]
    if status is TaskResultStatus.FAILED and not errors:
        errors.append(_celery_error(meta or {}))
    finished = parse_time(record.get("finished_at"))
    if finished is None and status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
        finished = parse_time(meta.get("date_done")) if meta else None
    worker_ids = [str(w) for w in record.get("worker_ids") or []]
    if not worker_ids and meta and meta.get("worker") and status is not TaskResultStatus.READY:
        worker_ids = [str(meta["worker"])]
    started = parse_time(record.get("started_at"))
    result: AnyTaskResult = TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=parse_time(record.get("enqueued_at")),
        started_at=started,
        finished_at=finished,
        last_attempted_at=started,
        args=list(record.get("args") or []),
        kwargs=dict(record.get("kwargs") or {}),
        backend=record.get("backend") or backend_alias,
        errors=errors,
        worker_ids=worker_ids,
    )
    if status is TaskResultStatus.SUCCESSFUL:
        set_return_value(result, record.get("return_value"))
    return result


def _copy(
    known: AnyTaskResult, status: TaskResultStatus, meta: Mapping[str, Any] | None
) -> AnyTaskResult:
    finished: datetime | None = None
    if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) and meta:
        finished = parse_time(meta.get("date_done"))
    copied: AnyTaskResult = TaskResult(
        task=known.task,
        id=known.id,
        status=status,
        enqueued_at=known.enqueued_at,
        started_at=None,
        finished_at=finished,
        last_attempted_at=None,
        args=list(known.args),
        kwargs=dict(known.kwargs),
        backend=known.backend,
        errors=[_celery_error(meta)] if status is TaskResultStatus.FAILED and meta else [],
        worker_ids=[],
    )
    return copied
