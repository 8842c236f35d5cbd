"""The Celery signal receivers that turn a task's life into events (see
:mod:`aceleryctl.signals` for which signal fires where), and those that keep the
task's correlation id current while it runs.

Every receiver is wrapped by :func:`~aceleryctl._worker_config.guard`: it never
raises into Celery. Building an event costs a few microseconds on the signalling
thread; publishing is the emitter thread's business. One receiver waits for it:
:func:`on_before_publish` announces a task's retry before Celery publishes the
retry's message and waits, at most ``EVENT_SEND_TIMEOUT`` seconds, until the
event is sent, so that it reaches subscribers before the next attempt's events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import CodeType
from typing import Any, Final

from celery._state import get_current_worker_task
from celery.app.task import Task
from celery.exceptions import Retry

from aceleryctl._emitter import Emitter, default_emitter
from aceleryctl._progress import process_gate
from aceleryctl._worker_config import guard, worker_config
from aceleryctl.correlation import correlation_id, correlation_id_from
from aceleryctl.events import (
    MAX_NAME_LENGTH,
    PHASE_OF_TYPE,
    STATE_OF_TYPE,
    RetryInfo,
    TaskEvent,
    clip_text,
    order_key,
    summarize_error,
    summarize_result,
)

__all__ = [
    "build_event",
    "emitter",
    "enter_correlation",
    "leave_correlation",
    "on_before_publish",
    "on_failure",
    "on_postrun",
    "on_prerun",
    "on_process_shutdown",
    "on_published",
    "on_received",
    "on_rejected",
    "on_retry",
    "on_revoked",
    "on_success",
    "on_unknown",
    "retry_details",
    "task_correlation",
    "attempt_number",
]

# -- helpers ----------------------------------------------------------------------------------

_attempts_lock = threading.Lock()
_attempts: OrderedDict[str, int] = OrderedDict()
_MAX_REMEMBERED: Final = 10_000


def emitter() -> Emitter | None:
    """The process's emitter, or ``None`` when events are off or have no layer."""
    return default_emitter()


def attempt_number(value: object) -> int:
    """Celery's ``retries`` as a non-negative int (0 when missing or odd)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _remember_attempt(task_id: str, attempt: int) -> None:
    with _attempts_lock:
        _attempts[task_id] = attempt
        _attempts.move_to_end(task_id)
        while len(_attempts) > _MAX_REMEMBERED:
            _attempts.popitem(last=False)


def _attempt_of(task: Any, task_id: str) -> int:
    """The attempt of ``task_id``: from the task's current request when it is that
    task's, else from what this process saw of it (the worker's main process fails
    a task on a hard time limit, and revokes it on a terminating revoke)."""
    request = getattr(task, "request", None)
    if request is not None and getattr(request, "id", None) == task_id:
        return attempt_number(getattr(request, "retries", 0))
    with _attempts_lock:
        return _attempts.get(task_id, 0)


def task_correlation(request: object) -> str | None:
    """The correlation id of a running task: its header, else the current one."""
    return correlation_id_from(request) or correlation_id.get()


def build_event(
    type_: str, task_id: object, task_name: object, attempt: int, seq: int = 0, **fields: Any
) -> TaskEvent:
    """A :class:`TaskEvent` stamped now, its state and order key derived from
    ``type_``, ``attempt`` and ``seq``.

    Raises:
        ValueError: a field is invalid (the receivers' guard logs it).
    """
    name = task_name if isinstance(task_name, str) else None
    return TaskEvent(
        type=type_,
        task_id=str(task_id),
        task_name=None if name is None else clip_text(name, MAX_NAME_LENGTH),
        state=STATE_OF_TYPE[type_],
        timestamp=time.time(),
        order=order_key(attempt, PHASE_OF_TYPE[type_], seq),
        **fields,
    )


def _finish(task_id: str, attempt: int, terminal: Callable[[], TaskEvent]) -> None:
    """The attempt ended: send its held progress report, then ``terminal()``."""
    held = process_gate(worker_config().progress_interval).finish(task_id, attempt)
    current = emitter()
    if current is None:
        return
    if held is not None:
        current.emit(held)
    current.emit(terminal())


def _error_type(error: object) -> str:
    # Celery wraps exceptions it cannot pickle; name the original class.
    wrapped = getattr(error, "exc_cls_name", None)
    return wrapped if isinstance(wrapped, str) and wrapped else type(error).__name__


def _headers_of(message: object) -> Mapping[str, Any]:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, Mapping) else {}


def retry_details(task: Any, request: Any, reason: Any) -> tuple[RetryInfo, str | None]:
    """``(retry info, error type)`` from a ``task_retry`` signal's arguments.

    ``reason`` is Celery's ``Retry`` (``.exc`` the cause, ``.when`` a countdown in
    seconds or a datetime), or ``None`` when the worker requeues a lost task.
    """
    exc = getattr(reason, "exc", None)
    if exc is not None:
        text: str | None = summarize_error(exc)
        error_type: str | None = _error_type(exc)
    else:
        text = summarize_error(reason) if reason is not None else None
        error_type = None
    when = getattr(reason, "when", None)
    eta: datetime | None = None
    if isinstance(when, datetime):
        eta = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    elif isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
        eta = datetime.now(UTC) + timedelta(seconds=max(float(when), 0.0))
    max_retries = getattr(task, "max_retries", None)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        max_retries = None
    info = RetryInfo(
        attempt=attempt_number(getattr(request, "retries", 0)) + 1,
        max_retries=max_retries,
        reason=text or None,
        eta=None if eta is None else eta.isoformat(),
    )
    return info, error_type


# -- event receivers --------------------------------------------------------------------------


@guard("after_task_publish")
def on_published(
    sender: object = None, body: object = None, headers: object = None, **_: Any
) -> None:
    """``task.sent`` on the publishing thread; only for a task's first message."""
    current = emitter()
    if current is None:
        return
    found: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
    if "id" not in found and isinstance(body, Mapping):  # task protocol 1
        found = body
    task_id = found.get("id")
    if not task_id or attempt_number(found.get("retries")):
        return  # a retry's message: task.retried announces it, with a lower order key
    current.emit(
        build_event(
            "task.sent",
            task_id,
            found.get("task") or sender,
            0,
            correlation_id=correlation_id_from(found) or correlation_id.get(),
        )
    )


@guard("task_received")
def on_received(sender: object = None, request: Any = None, **_: Any) -> None:
    """``task.received`` in the worker's main process."""
    headers = getattr(request, "request_dict", None)
    headers = headers if isinstance(headers, Mapping) else {}
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
    _finish(
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
    attempt = _attempt_of(sender, task_id)
    _finish(
        task_id,
        attempt,
        lambda: build_event(
            "task.failed",
            task_id,
            sender.name,
            attempt,
            error_type=_error_type(exception),
            error_message=summarize_error(exception),
            correlation_id=task_correlation(own),
        ),
    )


@guard("task_retry")
def on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    """``task.retried``: the retry's number, limit, reason and ETA, unless
    :func:`on_before_publish` already announced this retry (the usual case in a
    worker: then nothing is emitted here). Runs on the task's thread."""
    if sender is None or request is None or not getattr(request, "id", None):
        return
    task_id = request.id
    if _take_announced(task_id, attempt_number(getattr(request, "retries", 0))):
        return
    info, error_type = retry_details(sender, request, reason)
    _emit_retried(sender, request, info, error_type)


def _emit_retried(task: Any, request: Any, info: RetryInfo, error_type: str | None) -> None:
    """Send the attempt's held progress report, then its ``task.retried``."""
    task_id = request.id
    _finish(
        task_id,
        info.attempt - 1,
        lambda: build_event(
            "task.retried",
            task_id,
            task.name,
            info.attempt - 1,
            retry=info,
            error_type=error_type,
            error_message=info.reason,
            correlation_id=task_correlation(request),
        ),
    )


# -- the retry, announced before Celery publishes it --------------------------------------------
#
# Celery fires task_retry only after Task.retry() has published the next attempt's
# message. Another worker process can receive that message and publish the next
# attempt's task.received first; a subscriber then drops the late task.retried as
# older than what it has. So the worker announces the retry from before_task_publish,
# on the task's thread, and waits (bounded) until the emitter has sent it.

_RETRY_CODE: Final[CodeType | None] = getattr(Task.retry, "__code__", None)
#: Frames looked at above the receiver for Task.retry's (it is about ten up).
_MAX_FRAMES: Final = 64
_announced_lock = threading.Lock()
_announced: OrderedDict[tuple[str, int], None] = OrderedDict()
#: Retries announced before publishing and not yet seen by task_retry, at most.
_MAX_ANNOUNCED: Final = 1_024


def _remember_announced(task_id: str, attempt: int) -> None:
    with _announced_lock:
        _announced[(task_id, attempt)] = None
        while len(_announced) > _MAX_ANNOUNCED:
            _announced.popitem(last=False)


def _take_announced(task_id: str, attempt: int) -> bool:
    """Whether :func:`on_before_publish` announced this attempt's retry (forgets it)."""
    key = (task_id, attempt)
    with _announced_lock:
        if key not in _announced:
            return False
        del _announced[key]
        return True


@guard("before_task_publish")
def on_before_publish(
    sender: object = None, body: object = None, headers: object = None, **_: Any
) -> None:
    """``task.retried`` when the message about to be published is the retry of the
    task running on this thread; nothing for any other message.

    Runs on the publishing thread, for every task message the process publishes. A
    message that is not a retry (``retries`` 0: every publish of a web process)
    returns after two dictionary look-ups, under a microsecond (Celery's signal
    dispatch costs a few more). For the retry of the current task it builds the
    event as :func:`on_retry` would (:func:`retry_details` on Celery's ``Retry``,
    see :func:`_retry_being_published`), with the ETA of the message's ``eta``
    header, hands the attempt's held progress report and the event to the emitter,
    and blocks until the emitter has sent them and whatever was queued before, for
    at most ``EVENT_SEND_TIMEOUT`` seconds: so the event reaches the layer before
    the next attempt's ``task.received`` can. Never raises (:func:`guard`).
    """
    found: Mapping[str, Any] = headers if isinstance(headers, dict) else {}
    retries = found.get("retries")
    if retries is None and isinstance(body, dict):  # task protocol 1
        found, retries = body, body.get("retries")
    if not retries:
        return
    task = get_current_worker_task()
    if task is None:
        return
    request = task.request
    task_id = request.id
    if not task_id or found.get("id") != task_id:
        return
    attempt = attempt_number(request.retries)
    if attempt_number(retries) != attempt + 1:
        return
    current = emitter()
    if current is None:
        return
    info, error_type = retry_details(task, request, _retry_being_published())
    info = dataclasses.replace(info, eta=_eta_header(found.get("eta"), info.eta))
    _emit_retried(task, request, info, error_type)
    _remember_announced(task_id, attempt)
    current.flush(worker_config().send_timeout)


def _retry_being_published() -> Retry | None:
    """The reason of the retry this thread is publishing, as :func:`retry_details`
    reads it: a :class:`~celery.exceptions.Retry` whose ``exc`` is the exception
    being retried.

    ``Task.retry`` makes its ``Retry`` (local ``ret``; ``exc`` is its argument)
    before it publishes, so both are found in its frame on this thread's stack.
    When it was given no exception, or its frame is not found (a retry published
    some other way), the exception being handled stands in (``autoretry_for`` and
    ``except X as e: raise self.retry(...)`` run inside an ``except`` block).
    Returns ``None`` when there is neither.
    """
    found: dict[str, Any] = {}
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame.f_code is _RETRY_CODE:
            found = dict(frame.f_locals)
            break
        if frame.f_back is None:
            break
        frame = frame.f_back
    del frame
    made = found.get("ret")
    made = made if isinstance(made, Retry) else None
    if made is not None and made.exc is not None:
        return made
    exc = found.get("exc")
    if not isinstance(exc, Exception):
        handled = sys.exc_info()[1]
        exc = handled if isinstance(handled, Exception) and not isinstance(handled, Retry) else None
    if exc is None:
        return made
    when = made.when if made is not None else found.get("eta") or found.get("countdown")
    return Retry(exc=exc, when=when)


def _eta_header(value: object, default: str | None) -> str | None:
    """A message's ``eta`` header as ISO 8601 in UTC (a naive time is taken as
    UTC); ``None`` when there is none (the retry is due at once); ``default`` when
    it is not a date and time."""
    if value is None:
        return None
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).isoformat()
    except (ValueError, OverflowError):
        return default


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
    attempt = attempt_number(getattr(request, "retries", None)) or _attempt_of(None, task_id)
    _finish(
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
    headers = _headers_of(message)
    task_id = headers.get("id")
    current = emitter()
    if not task_id or current is None:
        return
    if exc is None:
        error_type, text = "UnknownMessage", "the worker does not accept this message"
    else:
        error_type, text = _error_type(exc), summarize_error(exc)
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
    headers = _headers_of(message)
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
    attempt = _attempt_of(task, task_id)
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


# -- correlation ------------------------------------------------------------------------------

_tokens = threading.local()


@guard("correlation_enter")
def enter_correlation(
    sender: object = None, task_id: Any = None, task: Any = None, **_: Any
) -> None:
    """``task_prerun``: make the task's correlation id current (an eager task with
    none keeps its caller's)."""
    if task is None:
        return
    request = task.request
    value = correlation_id_from(request)
    if value is None and getattr(request, "is_eager", False):
        value = correlation_id.get()
    stack: list[Any] = getattr(_tokens, "stack", None) or []
    stack.append((task_id, correlation_id.set(value)))
    _tokens.stack = stack


@guard("correlation_leave")
def leave_correlation(sender: object = None, task_id: Any = None, **_: Any) -> None:
    """``task_postrun``: restore the correlation id from before the task."""
    stack: list[Any] = getattr(_tokens, "stack", None) or []
    while stack:
        entered, token = stack.pop()
        with contextlib.suppress(ValueError):  # set in another context: nothing to restore
            correlation_id.reset(token)
        if entered == task_id:
            break


def _after_fork_in_child() -> None:
    global _attempts_lock, _announced_lock
    _attempts_lock = threading.Lock()
    _announced_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
