"""The retry pre-announcement: ``task.retried`` sent from ``before_task_publish``,
before Celery publishes the retry's message, found by walking the stack to
``Task.retry``'s frame.

Celery fires ``task_retry`` only after ``Task.retry()`` has published the next
attempt's message. Another worker process can receive that message and publish
the next attempt's ``task.received`` first; a subscriber then drops the late
``task.retried`` as older than what it has. So the worker announces the retry from
``before_task_publish``, on the task's thread, and waits (bounded) until the
emitter has sent it. :func:`take_announced` tells the ``task_retry`` receiver
that the retry was already announced, and with what, so that it sends the same
``task.retried`` once more after Celery has stored the ``RETRY`` state: a
subscriber that joined after the first copy went out, and read the result
backend before that state was written, gets the second (docs/events.md, "When
``task.retried`` is sent"). The copy has the same order key: whoever got both
keeps one.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from celery.exceptions import Retry

from aceleryctl._once import guard
from aceleryctl.compat.celery_worker import RetryCall, current_worker_task, retry_call_on_stack
from aceleryctl.dispatch.listener import mark_loop_safe
from aceleryctl.events import RetryInfo
from aceleryctl.wires.template_shapes import ignores_direct_messages
from aceleryctl.worker.building import attempt_number, retry_details
from aceleryctl.worker.config import worker_config
from aceleryctl.worker.layer import default_emitter
from aceleryctl.worker.sending import emit_retried

__all__ = ["on_before_publish", "take_announced"]

#: Frames looked at above the receiver for Task.retry's (it is about ten up).
_MAX_FRAMES: Final = 64
#: No ``Task.retry`` call found on the stack.
_NO_CALL: Final = RetryCall(None, None, None, None)
_announced_lock = threading.Lock()
#: What was announced per (task id, attempt): the retry's details and error type.
Announced = tuple[RetryInfo | None, str | None]
_announced: OrderedDict[tuple[str, int], Announced] = OrderedDict()
#: Retries announced before publishing and not yet seen by task_retry, at most.
_MAX_ANNOUNCED: Final = 1_024


def _remember_announced(
    task_id: str, attempt: int, info: RetryInfo | None = None, error_type: str | None = None
) -> None:
    with _announced_lock:
        _announced[(task_id, attempt)] = (info, error_type)
        while len(_announced) > _MAX_ANNOUNCED:
            _announced.popitem(last=False)


def take_announced(task_id: str, attempt: int) -> Announced | None:
    """What :func:`on_before_publish` announced for this attempt's retry (forgotten
    now): ``(info, error_type)``; ``None`` when it announced nothing."""
    with _announced_lock:
        return _announced.pop((task_id, attempt), None)


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
    task = current_worker_task()
    if task is None:
        return
    request = task.request
    task_id = request.id
    if not task_id or found.get("id") != task_id:
        return
    attempt = attempt_number(request.retries)
    if attempt_number(retries) != attempt + 1:
        return
    current = default_emitter()
    if current is None:
        return
    info, error_type = retry_details(task, request, _retry_being_published())
    info = dataclasses.replace(info, eta=_eta_header(found.get("eta"), info.eta))
    emit_retried(task, request, info, error_type)
    _remember_announced(task_id, attempt, info, error_type)
    current.flush(worker_config().send_timeout)


# Loop-safe: it blocks only while publishing the retry of the task running on its
# thread (``retries`` > 0); a controller's dispatch, the only message the loop path
# writes, carries ``retries`` 0 and returns after two dictionary look-ups.
mark_loop_safe(on_before_publish)
# Direct-path messages have retries 0: for them it returns after two look-ups.
ignores_direct_messages(on_before_publish)


def _retry_being_published() -> Retry | None:
    """The reason of the retry this thread is publishing, as :func:`retry_details`
    reads it: a :class:`~celery.exceptions.Retry` whose ``exc`` is the exception
    being retried.

    ``Task.retry`` makes its ``Retry`` (``exc`` is its argument) before it
    publishes, so both are found in its frame on this thread's stack
    (:func:`~aceleryctl.compat.celery.retry_call_on_stack`, which knows Celery's
    frame). When it was given no exception, or its frame is not found (a retry
    published some other way), the exception being handled stands in
    (``autoretry_for`` and ``except X as e: raise self.retry(...)`` run inside an
    ``except`` block). Returns ``None`` when there is neither.
    """
    call = retry_call_on_stack(_MAX_FRAMES) or _NO_CALL
    made = call.retry
    if made is not None and made.exc is not None:
        return made
    exc = call.exc
    if not isinstance(exc, Exception):
        handled = sys.exc_info()[1]
        exc = handled if isinstance(handled, Exception) and not isinstance(handled, Retry) else None
    if exc is None:
        return made
    when = made.when if made is not None else call.eta or call.countdown
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


def _after_fork_in_child() -> None:
    global _announced_lock
    _announced_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
