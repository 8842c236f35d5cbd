"""Correlation ids: one token that follows a request into the tasks it dispatches.

* In the web process, :class:`CorrelationIdMiddleware` takes ``X-Correlation-ID``
  from the request when it is a sane token (1-128 of ``[A-Za-z0-9._-]``), or makes
  one (a uuid4 hex), makes it current for the request (:func:`current_correlation_id`),
  and echoes it in the response's ``X-Correlation-ID`` header.
* The controller puts the current id in the task message's headers, under
  :data:`CORRELATION_HEADER`. (Not ``correlation_id``: Celery owns that name; the
  worker overwrites it with the task id from the message properties.)
* In the worker, :func:`enter_correlation` and :func:`leave_correlation` (connected
  by :func:`aceleryctl.signals.connect`) make the header's value current while the
  task runs; the worker's receivers put it on every event, and
  :class:`CorrelationIdFilter` adds it to log records as ``record.correlation_id``.

The current id is a :mod:`contextvars` variable: per thread, and per asyncio task
(copied into ``sync_to_async`` threads). This module imports no Django at import
time, so a Celery worker without Django can use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from aceleryctl._once import guard

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = [
    "CORRELATION_HEADER",
    "HTTP_HEADER",
    "CorrelationIdFilter",
    "CorrelationIdMiddleware",
    "correlation_id",
    "correlation_id_from",
    "current_correlation_id",
    "enter_correlation",
    "is_valid_correlation_id",
    "leave_correlation",
    "new_correlation_id",
    "use_correlation_id",
]

#: The task-message header that carries the id to the worker.
CORRELATION_HEADER: Final = "aceleryctl_correlation_id"
#: The HTTP header read from requests and written to responses.
HTTP_HEADER: Final = "X-Correlation-ID"
_META_KEY: Final = "HTTP_X_CORRELATION_ID"
_VALID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")

#: The current correlation id, or ``None`` outside a request or task that has one.
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aceleryctl_correlation_id", default=None
)


def is_valid_correlation_id(value: object) -> bool:
    """Whether ``value`` is a sane correlation id: 1-128 of ``[A-Za-z0-9._-]``."""
    return isinstance(value, str) and _VALID.match(value) is not None


def current_correlation_id() -> str | None:
    """The correlation id of the current request or task, or ``None``."""
    return correlation_id.get()


def new_correlation_id() -> str:
    """A fresh id: 32 lower-case hex characters (uuid4)."""
    return uuid.uuid4().hex


@contextlib.contextmanager
def use_correlation_id(value: str | None) -> Iterator[str | None]:
    """Make ``value`` current inside the block (an invalid value counts as ``None``)
    and restore the previous one after."""
    token = correlation_id.set(value if is_valid_correlation_id(value) else None)
    try:
        yield correlation_id.get()
    finally:
        correlation_id.reset(token)


def correlation_id_from(request: object) -> str | None:
    """The correlation id a Celery request carries, if it is a sane token.

    Accepts what Celery's signals hand out: a task's ``task.request`` context (the
    header is an attribute, and in ``request.headers``), a worker ``Request`` (in
    ``request.request_dict``), or a plain mapping of message headers. Never raises.
    """
    try:
        value: Any = None
        if isinstance(request, Mapping):
            value = request.get(CORRELATION_HEADER)
        else:
            value = getattr(request, CORRELATION_HEADER, None)
            if value is None:
                headers = getattr(request, "headers", None)
                if isinstance(headers, Mapping) and headers.get(CORRELATION_HEADER):
                    value = headers.get(CORRELATION_HEADER)
                else:
                    # Imported here: this module loads without Celery's modules.
                    from aceleryctl.compat.celery_worker import worker_request_dict

                    value = worker_request_dict(request).get(CORRELATION_HEADER) or None
        return value if is_valid_correlation_id(value) else None
    except Exception:
        return None


class CorrelationIdFilter(logging.Filter):
    """Adds ``record.correlation_id`` (the current id, or ``"-"``) to every record it
    sees, unless the record already has one. Never drops a record.

    Attach it to a handler to use ``%(correlation_id)s`` in a format string.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; always ``True``."""
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = correlation_id.get() or "-"
        return True


class CorrelationIdMiddleware:
    """Django middleware (sync and async) that gives every request a correlation id.

    Add ``"aceleryctl.correlation.CorrelationIdMiddleware"`` near the top of
    ``MIDDLEWARE``. The id is current (:func:`current_correlation_id`) while the
    rest of the middleware chain and the view run, is also set as
    ``request.correlation_id``, and is echoed in the response's ``X-Correlation-ID``
    header. An incoming header that is missing, empty, longer than 128 characters
    or not made of ``[A-Za-z0-9._-]`` is replaced by a new id.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        """Handle one request on the thread (sync) or event loop (async) Django uses."""
        if self._is_async:
            return self.__acall__(request)
        value = self._take(request)
        token = correlation_id.set(value)
        try:
            response: HttpResponseBase = self.get_response(request)
        finally:
            correlation_id.reset(token)
        response[HTTP_HEADER] = value
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        """The async path: the id is current in the awaited chain and in any
        ``sync_to_async`` call it makes."""
        value = self._take(request)
        token = correlation_id.set(value)
        try:
            response: HttpResponseBase = await self.get_response(request)
        finally:
            correlation_id.reset(token)
        response[HTTP_HEADER] = value
        return response

    @staticmethod
    def _take(request: HttpRequest) -> str:
        incoming = request.META.get(_META_KEY)
        value = (
            incoming if isinstance(incoming, str) and is_valid_correlation_id(incoming) else None
        )
        value = value or new_correlation_id()
        request.correlation_id = value  # type: ignore[attr-defined]
        return value


# -- in the worker: the task's id current while it runs ------------------------------------
# Connected by aceleryctl.signals.connect(): enter first on task_prerun, leave last
# on task_postrun, so that every other receiver sees the task's id.

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
