"""Celery internals the worker side relies on, each behind one function or constant.

The task a worker thread runs, ``Task.retry``'s frame (the retry
pre-announcement), the wrapper Celery puts around an exception it cannot pickle,
a worker request's message, and the Redis result backend's private methods the
one-round-trip progress store reproduces. As in :mod:`aceleryctl.compat.celery`,
each docstring says what the internal is, why it is needed and what happens when
it is missing; ``tests/unit/test_compat.py`` checks each one's shape.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import CodeType
from typing import Any, Final, NamedTuple

from celery import Task
from celery import _state as _celery_state
from celery.exceptions import Retry

__all__ = [
    "REDIS_RESULT_STORE_METHODS",
    "RetryCall",
    "TASK_RETRY_CODE",
    "current_worker_task",
    "max_stored_value_size",
    "result_meta",
    "retry_call_on_stack",
    "unpickleable_exception_name",
    "worker_request_dict",
]


# -- the worker side: the task running, its retry, its failure ------------------------


def current_worker_task() -> Task | None:  # type: ignore[type-arg]
    """The task this worker thread is executing, or ``None`` outside a task.

    ``celery._state.get_current_worker_task`` (a private module) is what
    ``app.current_worker_task`` reads, without needing an app: the retry
    pre-announcement runs in ``before_task_publish``, which hands it no task.
    It returns ``None`` for a task called directly (not by a worker). Were it
    removed, importing this module fails (at once, not per retry). Runs only for
    a message whose ``retries`` header is set.
    """
    task: Task | None = _celery_state.get_current_worker_task()  # type: ignore[type-arg]
    return task


#: The code object of ``Task.retry``, which identifies its frame on a thread's
#: stack (``None`` if ``Task.retry`` were no plain function: then no frame is found
#: and the retry pre-announcement falls back to the exception being handled).
TASK_RETRY_CODE: Final[CodeType | None] = getattr(Task.retry, "__code__", None)


class RetryCall(NamedTuple):
    """What a running ``Task.retry`` call holds, read from its frame's locals.

    Attributes:
        retry: the ``Retry`` it made (local ``ret``), or ``None`` before it is made
            or when that local is not a ``Retry``.
        exc: its ``exc`` argument (the exception being retried), as passed.
        eta: its ``eta`` argument, as passed.
        countdown: its ``countdown`` (argument, or the task's default delay).
    """

    retry: Retry | None
    exc: Any
    eta: Any
    countdown: Any


def retry_call_on_stack(max_frames: int) -> RetryCall | None:
    """The ``Task.retry`` call on this thread's stack, at most ``max_frames`` frames
    above the caller of this function, or ``None`` when there is none.

    The retry pre-announcement runs in ``before_task_publish`` while ``Task.retry``
    publishes the next attempt; Celery hands the signal no ``Retry``, so its frame
    is found (``sys._getframe``, then ``f_back``) by its code object
    (:data:`TASK_RETRY_CODE`) and its locals are read: ``ret`` (the ``Retry``,
    made before ``apply_async``), ``exc``, ``eta`` and ``countdown``. If Celery
    renamed one, that field is ``None`` and the caller falls back to the exception
    being handled (``tests/unit/test_compat.py`` fails first); if the interpreter
    has no ``sys._getframe``, this returns ``None``. Runs once per retry, not per
    publish.
    """
    getframe: Any = getattr(sys, "_getframe", None)
    if getframe is None or TASK_RETRY_CODE is None:
        return None
    frame: Any = getframe(1)
    try:
        for _ in range(max_frames):
            if frame.f_code is TASK_RETRY_CODE:
                found = dict(frame.f_locals)
                made = found.get("ret")
                return RetryCall(
                    made if isinstance(made, Retry) else None,
                    found.get("exc"),
                    found.get("eta"),
                    found.get("countdown"),
                )
            frame = frame.f_back
            if frame is None:
                return None
        return None
    finally:
        del frame


def unpickleable_exception_name(error: object) -> str | None:
    """The class name of the exception behind Celery's wrapper, if ``error`` is one.

    A result backend stores an exception it cannot pickle as
    ``celery.utils.serialization.UnpickleableExceptionWrapper`` (an internals-
    reference module), whose ``exc_cls_name`` names the original class; events
    name that class rather than the wrapper. Without the attribute, events name
    the wrapper's class. Runs once per failure event.
    """
    name = getattr(error, "exc_cls_name", None)
    return name if isinstance(name, str) and name else None


def worker_request_dict(request: object) -> Mapping[str, Any]:
    """The message fields of a worker ``Request`` (``task_received``'s ``request``):
    its ``request_dict``, or an empty mapping.

    ``celery.worker.request.Request`` is documented only in the internals
    reference; ``request_dict`` holds the message's headers (``id``, ``task``,
    ``retries``, custom headers such as the correlation id). Without it, the
    ``task.received`` event falls back to the request's ``id``/``name`` and its
    attempt and correlation id are unknown. Runs once per received message.
    """
    found = getattr(request, "request_dict", None)
    return found if isinstance(found, Mapping) else {}


# -- the worker side: storing progress in a Redis result backend -----------------------

#: The ``RedisBackend`` methods whose behaviour the one-round-trip progress store
#: reproduces (``aceleryctl.worker.progress_store``): a backend class overriding any
#: of them stores differently and goes through ``update_state``. Several are
#: private; were one renamed, the look-up on ``RedisBackend`` fails and every
#: progress report goes through ``update_state`` (``test_compat.py`` fails first).
REDIS_RESULT_STORE_METHODS: Final = (
    "store_result",
    "_store_result",
    "encode_result",
    "prepare_value",
    "_get_result_meta",
    "current_task_children",
    "encode",
    "_encode",
    "get_key_for_task",
    "_get_key_for",
    "_set_with_state",
    "set",
    "_set",
    "_get_task_meta_for",
    "get",
    "decode_result",
)


def result_meta(backend: Any, result: Any, state: str, request: Any) -> dict[str, Any]:
    """The meta a result backend stores for ``result`` in ``state`` (no traceback).

    ``BaseBackend._get_result_meta(result=, state=, traceback=, request=)`` is
    private; it adds the ``result_extended`` fields (name, args, kwargs, worker,
    retries, queue) from the request. The progress store calls it only when
    ``result_extended`` is on, so that what it stores is Celery's. Were it renamed,
    the progress store's eligibility check (:data:`REDIS_RESULT_STORE_METHODS`)
    fails first and every report goes through ``update_state``. Runs per progress
    report with ``result_extended`` on: one call.
    """
    meta: dict[str, Any] = backend._get_result_meta(
        result=result, state=state, traceback=None, request=request
    )
    return meta


def max_stored_value_size(backend: Any) -> int:
    """The largest string value Celery's Redis backend stores
    (``RedisBackend._MAX_STR_VALUE_SIZE``, 512 MiB, Redis's own limit).

    The progress store leaves larger values to ``update_state``, which raises
    Celery's own error for them. Read once per backend. Without the constant,
    Redis's limit (512 MiB) is assumed.
    """
    size = getattr(backend, "_MAX_STR_VALUE_SIZE", _REDIS_MAX_STRING)
    return size if isinstance(size, int) else _REDIS_MAX_STRING


_REDIS_MAX_STRING: Final = 512 * 1024 * 1024
