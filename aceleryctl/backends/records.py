"""What the web side and the worker side of the Django Tasks backend agree on.

* The message: one Celery task, :data:`RUNNER_NAME`, called with the positional
  arguments ``[module_path, backend_alias, enqueued_at, *args]`` and the
  function's keyword arguments as its own (:func:`message_args`; ``enqueued_at``
  an ISO 8601 string). Flat, so that Celery's ``argsrepr`` of simple arguments
  takes the direct path's plain ``repr`` instead of ``saferepr`` (about 90 µs
  per message for nested ones, measured).
* The record stored in Celery's result backend, a JSON dict (:class:`Record`)
  keyed by ``"django_task"``: written as the ``STARTED`` meta when a worker
  starts the function, returned as the Celery result when it returns, and
  carried by :class:`TaskFunctionError` (which Celery stores) when it raises.

Pure data and functions; imports no Django. Thread-safe.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypedDict

from aceleryctl._logging import scrub_credentials

__all__ = [
    "MARKER",
    "RUNNER_NAME",
    "Record",
    "TaskFunctionError",
    "error_entry",
    "message_args",
    "parse_time",
    "record_of",
]

#: The name of the one Celery task that runs Django task functions on workers.
RUNNER_NAME = "aceleryctl.django_task"
#: The key that marks a stored dict as this backend's record.
MARKER = "django_task"


class Record(TypedDict, total=False):
    """A task's record in the result backend (times are ISO 8601 strings, UTC)."""

    django_task: str  # the function's module path
    backend: str  # the TASKS alias
    args: list[Any]
    kwargs: dict[str, Any]
    enqueued_at: str | None
    started_at: str | None
    finished_at: str | None
    worker_ids: list[str]
    return_value: Any
    errors: list[list[str]]  # [exception class path, redacted traceback]


def message_args(path: str, alias: str, args: list[Any], enqueued_at: datetime) -> tuple[Any, ...]:
    """The runner's positional arguments for one enqueue (its keyword arguments are
    the function's): a tuple, which the controller keeps as it is."""
    return (path, alias, enqueued_at.isoformat(), *args)


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 string (or a datetime) as a datetime; anything else ``None``."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def error_entry(exc: BaseException) -> list[str]:
    """``[exception class path, traceback]`` for ``exc``, with the user-info part of
    every URL in the traceback text masked (tracebacks carry source lines and the
    exception's message, never local values)."""
    kind = type(exc)
    text = "".join(traceback.format_exception(exc))
    return [f"{kind.__module__}.{kind.__qualname__}", scrub_credentials(text)]


class TaskFunctionError(Exception):
    """What Celery stores when a Django task function raised: ``args[0]`` is the
    task's :class:`Record`, whose ``errors`` name the original exception.

    Raised by the worker runner from the function's exception (chained with
    ``from``, so Celery's own traceback shows it).
    """

    def __str__(self) -> str:
        record = self.args[0] if self.args and isinstance(self.args[0], Mapping) else {}
        errors = record.get("errors") or []
        if errors and isinstance(errors[-1], list | tuple) and errors[-1]:
            last = str(errors[-1][1]).rstrip().rsplit("\n", 1)[-1]
            return f"{record.get(MARKER, '?')} raised {last}"
        return "a Django task function raised"


def record_of(stored: object) -> Record | None:
    """The :class:`Record` inside what Celery stored as a task's result, if any:
    a record dict (``STARTED``, ``SUCCESS``), a :class:`TaskFunctionError` as
    Celery rebuilt it, or the exception as stored (``exc_type`` and
    ``exc_message``) when it was not rebuilt."""
    if isinstance(stored, Mapping):
        if MARKER in stored:
            return stored  # type: ignore[return-value]
        if stored.get("exc_type") == TaskFunctionError.__name__:
            message = stored.get("exc_message")
            if isinstance(message, list | tuple) and message:
                stored = message[0]
            if isinstance(stored, Mapping) and MARKER in stored:
                return stored  # type: ignore[return-value]
        return None
    if isinstance(stored, TaskFunctionError) and stored.args:
        return record_of(stored.args[0])
    return None
