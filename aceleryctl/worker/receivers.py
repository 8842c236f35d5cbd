"""The worker's Celery signal receivers that turn a task's life into events
(see :mod:`aceleryctl.signals` for which signal fires where).

Every receiver is wrapped by :func:`~aceleryctl._once.guard`: it never raises
into Celery. Building an event (:mod:`~aceleryctl.worker.building`) costs a few
microseconds on the signalling thread; publishing is the emitter thread's
business. The retry announced before it is published lives in
:mod:`~aceleryctl.worker.retry`, ``task.sent`` in :mod:`aceleryctl.live.sent`,
the correlation-id receivers in :mod:`aceleryctl.correlation`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Final

from aceleryctl._once import guard
from aceleryctl.compat.celery_worker import worker_request_dict
from aceleryctl.correlation import correlation_id_from
from aceleryctl.events import summarize_error, summarize_result
from aceleryctl.worker.building import (
    attempt_number,
    build_event,
    error_type_of,
    headers_of,
    retry_details,
    task_correlation,
)
from aceleryctl.worker.config import worker_config
from aceleryctl.worker.layer import default_emitter as emitter
from aceleryctl.worker.progress_gate import process_gate
from aceleryctl.worker.retry import take_announced
from aceleryctl.worker.sending import emit_retried, finish

__all__ = [
    "attempt_of",
    "on_failure",
    "on_postrun",
    "on_prerun",
    "on_process_shutdown",
    "on_received",
    "on_rejected",
    "on_retry",
    "on_revoked",
    "on_success",
    "on_unknown",
]

_attempts_lock = threading.Lock()
_attempts: OrderedDict[str, int] = OrderedDict()
_MAX_REMEMBERED: Final = 10_000


def _remember_attempt(task_id: str, attempt: int) -> None:
    with _attempts_lock:
        _attempts[task_id] = attempt
        _attempts.move_to_end(task_id)
        while len(_attempts) > _MAX_REMEMBERED:
            _attempts.popitem(last=False)


def attempt_of(task: Any, task_id: str) -> int:
    """The attempt of ``task_id``: from the task's current request when it is that
    task's, else from what this process saw of it (the worker's main process fails
    a task on a hard time limit, and revokes it on a terminating revoke)."""
    request = getattr(task, "request", None)
    if request is not None and getattr(request, "id", None) == task_id:
        return attempt_number(getattr(request, "retries", 0))
    with _attempts_lock:
        return _attempts.get(task_id, 0)


@guard("task_received")
def on_received(sender: object = None, request: Any = None, **_: Any) -> None:
    """``task.received`` in the worker's main process."""
    headers = worker_request_dict(request)
    task_id = getattr(request, "id", None) or headers.get("id")
    if not task_id:
        return
    attempt = attempt_number(headers.get("retries"))
    _remember_attempt(task_id, attempt)
    current = emitter()
    if current is None:
        return
    name = getattr(request, "name", None) or headers.get("task")
    current.emit(
        build_event(
            "task.received", task_id, name, attempt, correlation_id=correlation_id_from(headers)
        )
    )


@guard("task_prerun")
def on_prerun(sender: object = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    """``task.started`` on the task's thread."""
    if task is None or not task_id:
        return
    request = task.request
    attempt = attempt_number(request.retries)
    _remember_attempt(task_id, attempt)
    current = emitter()
    if current is not None:
        current.emit(
            build_event(
                "task.started",
                task_id,
                task.name,
                attempt,
                correlation_id=task_correlation(request),
            )
        )


@guard("task_success")
def on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    """``task.succeeded`` with a size-capped, redacted result summary."""
    if sender is None or not sender.request.id:
        return
    request = sender.request
    attempt = attempt_number(request.retries)
    finish(
        request.id,
        attempt,
        lambda: build_event(
            "task.succeeded",
            request.id,
            sender.name,
            attempt,
            result=summarize_result(result, worker_config().redactor),
            correlation_id=task_correlation(request),
        ),
    )


@guard("task_failure")
def on_failure(
    sender: Any = None, task_id: Any = None, exception: BaseException | None = None, **_: Any
) -> None:
    """``task.failed``: the error's type and scrubbed message, never a traceback."""
    if sender is None:
        return
    own = sender.request if getattr(sender.request, "id", None) == task_id else None
    task_id = task_id or getattr(sender.request, "id", None)
    if not task_id:
        return
    attempt = attempt_of(sender, task_id)
    finish(
        task_id,
        attempt,
        lambda: build_event(
            "task.failed",
            task_id,
            sender.name,
            attempt,
            error_type=error_type_of(exception),
            error_message=summarize_error(exception),
            correlation_id=task_correlation(own),
        ),
    )


@guard("task_retry")
def on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    """``task.retried``: the retry's number, limit, reason and ETA. When
    :func:`on_before_publish` already announced this retry (the usual case in a
    worker), the same event once more: Celery has stored ``RETRY`` by now, and a
    subscriber whose snapshot was read between the first copy and that write
    missed both. Runs on the task's thread."""
    if sender is None or request is None or not getattr(request, "id", None):
        return
    task_id = request.id
    announced = take_announced(task_id, attempt_number(getattr(request, "retries", 0)))
    info, error_type = (None, None) if announced is None else announced
    if info is None:
        info, error_type = retry_details(sender, request, reason)
    emit_retried(sender, request, info, error_type)


@guard("task_revoked")
def on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: object = None,
    expired: bool = False,
    **_: Any,
) -> None:
    """``task.revoked`` (``error_type`` ``Expired``, ``Terminated`` or ``Revoked``)."""
    task_id = getattr(request, "id", None)
    if not task_id:
        return
    if expired:
        error_type, text = "Expired", "the task expired before it could run"
    elif terminated:
        error_type, text = "Terminated", f"terminated by signal {signum}"
    else:
        error_type, text = "Revoked", "revoked before it started"
    name = getattr(sender, "name", None) or getattr(request, "task", None)
    attempt = attempt_number(getattr(request, "retries", None)) or attempt_of(None, task_id)
    finish(
        task_id,
        attempt,
        lambda: build_event(
            "task.revoked",
            task_id,
            name,
            attempt,
            error_type=error_type,
            error_message=text,
            correlation_id=correlation_id_from(request),
        ),
    )


@guard("task_rejected")
def on_rejected(
    sender: object = None, message: object = None, exc: object = None, **_: Any
) -> None:
    """``task.rejected`` for a message the worker cannot accept (when it names a task)."""
    headers = headers_of(message)
    task_id = headers.get("id")
    current = emitter()
    if not task_id or current is None:
        return
    if exc is None:
        error_type, text = "UnknownMessage", "the worker does not accept this message"
    else:
        error_type, text = error_type_of(exc), summarize_error(exc)
    current.emit(
        build_event(
            "task.rejected",
            task_id,
            headers.get("task"),
            attempt_number(headers.get("retries")),
            error_type=error_type,
            error_message=text,
            correlation_id=correlation_id_from(headers),
        )
    )


@guard("task_unknown")
def on_unknown(
    sender: object = None,
    name: object = None,
    id: object = None,
    message: object = None,
    **_: Any,
) -> None:
    """``task.rejected`` with ``error_type`` ``NotRegistered``."""
    current = emitter()
    if not id or current is None:
        return
    headers = headers_of(message)
    current.emit(
        build_event(
            "task.rejected",
            id,
            name,
            attempt_number(headers.get("retries")),
            error_type="NotRegistered",
            error_message=summarize_error(f"task {name!r} is not registered in this worker"),
            correlation_id=correlation_id_from(headers),
        )
    )


@guard("task_postrun")
def on_postrun(sender: object = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    """Send a progress report still held by a task that ended without an outcome
    signal (``Ignore``, ``Reject``); forget the attempt's throttle state."""
    if not task_id:
        return
    attempt = attempt_of(task, task_id)
    held = process_gate(worker_config().progress_interval).finish(task_id, attempt)
    current = emitter()
    if held is not None and current is not None:
        current.emit(held)


@guard("worker_process_shutdown")
def on_process_shutdown(**_: Any) -> None:
    """A pool child is exiting (it never runs ``atexit``): send what is queued,
    for at most two seconds."""
    current = emitter()
    if current is not None:
        current.close(2.0)


def _after_fork_in_child() -> None:
    global _attempts_lock
    _attempts_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
