"""Durable dispatch: a publish that is refused, fails or ends unknown is stored in
the outbox, and the caller gets a :class:`DeferredResult` instead of an exception.

What is stored: every :class:`~aceleryctl.exceptions.TaskDispatchError` but
:class:`~aceleryctl.exceptions.TaskSerializationError` (the caller's arguments,
which would fail again). After an unknown outcome the message may be in the
broker already; the relay's copy is then a duplicate, which the run-once guard
runs once. A canvas gets its id before the first attempt, so that the stored
dispatch and the returned result agree. If the row cannot be written either, the
original error is raised, with a note saying why it was not stored.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from celery import Celery
from celery.result import AsyncResult

from aceleryctl.dispatch.build import Built
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.dispatch.record import Dispatch, DispatchKind, NotData
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError, TaskSerializationError
from aceleryctl.outbox.config import missing_table_note, outbox_settings
from aceleryctl.outbox.inprocess import in_process_relay
from aceleryctl.outbox.notify import notify
from aceleryctl.outbox.outcomes import tell_stored

__all__ = ["DeferredResult", "prepare", "run_durable", "run_durable_sync", "store_deferred"]


class DeferredResult(AsyncResult):  # type: ignore[type-arg]
    """The result of a durable dispatch the broker did not take: the dispatch is
    stored in the outbox and the relay will publish it under this id.

    Attributes:
        deferred: always ``True`` (a plain ``AsyncResult`` has no such attribute:
            test with ``getattr(result, "deferred", False)``).
        reason: why it was stored: the error a non-durable call would have raised
            (type and message, credentials masked).
    """

    deferred = True

    def __init__(self, task_id: str, *, app: Celery, reason: str) -> None:
        super().__init__(task_id, app=app)
        self.reason = reason


def prepare(built: Built) -> Built:
    """Check that ``built`` can be durable, and give a canvas its id up front.

    Raises:
        TypeError: a zero-argument callable (it cannot be stored).
    """
    dispatch, parent = built
    if dispatch.kind is DispatchKind.CALLABLE:
        raise NotData(
            f"{dispatch.task_name} is a zero-argument callable and cannot be durable; "
            "dispatch the task with its arguments, or leave durable off"
        )
    if dispatch.task_id is None:
        task_id = new_task_id()
        dispatch = dataclasses.replace(
            dispatch, task_id=task_id, options={**dispatch.options, "task_id": task_id}
        )
    return dispatch, parent


def _storable(error: TaskDispatchError) -> bool:
    return not isinstance(error, TaskSerializationError)


def store_deferred(
    dispatch: Dispatch, error: TaskDispatchError, engine: DispatchEngine
) -> DeferredResult:
    """Write ``dispatch`` to the outbox (autocommit, or inside the calling thread's
    open transaction) and return its :class:`DeferredResult`. Calling thread.

    Raises:
        TaskDispatchError: ``error`` itself, noted, when the row cannot be written.
    """
    from django.utils import timezone

    from aceleryctl.outbox import store
    from aceleryctl.outbox.models import OutboxMessage

    app = engine.app
    conf = outbox_settings()
    reason = store.describe_error(error)
    now = timezone.now()
    retry_in = conf.backoff(1)
    if isinstance(error, CircuitOpenError):
        retry_in = max(retry_in, error.retry_after)
    try:
        row = store.encode(
            dispatch,
            app,
            reason=OutboxMessage.Reason.DURABLE,
            now=now,
            available_at=now + timedelta(seconds=retry_in),
            attempts=1,
            error=reason,
        )
        row.save(using=conf.database, force_insert=True)
        notify(conf.database)
        in_process_relay().ensure_started()
    except Exception as exc:
        error.add_note(
            f"durable: storing the dispatch in the outbox failed too "
            f"({type(exc).__name__}: {exc}); nothing was stored. "
            + missing_table_note(conf.database)
        )
        raise error from exc
    assert dispatch.task_id is not None  # prepare() gave every durable dispatch an id
    tell_stored(engine, dispatch, error)
    return DeferredResult(dispatch.task_id, app=app, reason=reason)


async def run_durable(engine: DispatchEngine, built: Built) -> Any:
    """Publish on the event loop; store what the broker did not take (module docstring).

    Raises:
        TaskSerializationError: the arguments cannot be encoded.
        TaskDispatchError: the publish failed and the row could not be written.
    """
    dispatch, parent = built = prepare(built)
    try:
        return await engine.run_async(dispatch, parent)
    except TaskDispatchError as error:
        if not _storable(error):
            raise
        store = sync_to_async(store_deferred, thread_sensitive=True)
        return await store(dispatch, error, engine)


def run_durable_sync(engine: DispatchEngine, built: Built) -> Any:
    """:func:`run_durable`, blocking the calling thread (the sync facade)."""
    dispatch, parent = built = prepare(built)
    try:
        return engine.run_sync(dispatch, parent)
    except TaskDispatchError as error:
        if not _storable(error):
            raise
        return store_deferred(dispatch, error, engine)
