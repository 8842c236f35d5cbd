"""Rows of the outbox table from dispatches and back, and the writes a relay needs.

Every function runs on the calling thread and uses that thread's Django database
connection for the given alias (so inside the caller's transaction when one is
open). The payload is :meth:`Dispatch.dumps` with the Celery app's task
serializer: what is stored is what would have been sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import Celery

from aceleryctl._logging import scrub_credentials
from aceleryctl.dispatch.record import Dispatch, DispatchKind
from aceleryctl.events import clip_text
from aceleryctl.outbox.models import OutboxMessage

__all__ = [
    "UndecodableRow",
    "decode",
    "describe_error",
    "encode",
    "insert",
]

#: Longest stored error text, in characters.
MAX_ERROR_LENGTH = 2_000


class UndecodableRow(ValueError):
    """A stored row cannot become a dispatch again (corrupt, or its task is unknown)."""


def encode(
    dispatch: Dispatch,
    app: Celery,
    *,
    reason: str,
    now: datetime,
    available_at: datetime,
    attempts: int = 0,
    error: str = "",
) -> OutboxMessage:
    """An unsaved row for ``dispatch``.

    Raises:
        aceleryctl.dispatch.record.NotData: ``dispatch`` is of a zero-argument callable.
        kombu.exceptions.EncodeError: an argument cannot be encoded by the app's
            task serializer.
    """
    serializer = dispatch.options.get("serializer") or app.conf.task_serializer
    content_type, encoding, payload = _anchored(dispatch, now).dumps(serializer)
    return OutboxMessage(
        task_id=dispatch.task_id or "",
        task_name=clip_text(dispatch.task_name, 255),
        payload=payload.encode() if isinstance(payload, str) else payload,
        content_type=content_type,
        content_encoding=encoding,
        reason=reason,
        attempts=attempts,
        created_at=now,
        available_at=available_at,
        last_attempt_at=now if attempts else None,
        last_error=error,
    )


def _anchored(dispatch: Dispatch, now: datetime) -> Dispatch:
    """``dispatch`` with its relative times made absolute at ``now``: a stored
    ``countdown=60`` means 60 seconds after the caller asked, not after the relay
    publishes it; likewise ``expires`` given in seconds."""
    options = dispatch.options
    countdown, expires = options.get("countdown"), options.get("expires")
    relative_expiry = isinstance(expires, int | float) and not isinstance(expires, bool)
    if countdown is None and not isinstance(expires, int | float):
        return dispatch
    anchored = dict(options)
    if countdown is not None:
        del anchored["countdown"]
        if anchored.get("eta") is None:
            anchored["eta"] = now + timedelta(seconds=float(countdown))
    if isinstance(expires, int | float) and relative_expiry:
        anchored["expires"] = now + timedelta(seconds=float(expires))
    return dataclasses.replace(dispatch, options=anchored)


def decode(row: OutboxMessage, app: Celery) -> Dispatch:
    """The dispatch stored in ``row``, its task resolved in ``app`` when registered.

    Raises:
        UndecodableRow: the payload does not decode to a dispatch, or it names a
            task (not sent by name) that ``app`` does not know.
    """
    payload = row.payload
    data = bytes(payload) if isinstance(payload, memoryview) else payload
    try:
        dispatch = Dispatch.loads(data, row.content_type, row.content_encoding)
    except Exception as exc:
        raise UndecodableRow(
            f"outbox row {row.pk} does not decode ({type(exc).__name__}: {exc}); "
            "it was changed by hand or written by an incompatible version"
        ) from exc
    if dispatch.kind is DispatchKind.TASK and not dispatch.by_name:
        task = app.tasks.get(dispatch.task_name)
        if task is None:
            raise UndecodableRow(
                f"outbox row {row.pk} names the task {dispatch.task_name!r}, which is not "
                "registered in the relay's Celery app; import it in the relay's process "
                "(or discard the row)"
            )
        return dataclasses.replace(dispatch, target=task)
    return dispatch


def describe_error(error: BaseException) -> str:
    """``Type: message`` of ``error``, credentials masked, clipped for storage."""
    return clip_text(scrub_credentials(f"{type(error).__name__}: {error}"), MAX_ERROR_LENGTH)


def insert(rows: Sequence[OutboxMessage], using: str) -> list[int]:
    """Insert ``rows`` in one statement; return their primary keys.

    Raises:
        django.db.Error: what the database raises.
    """
    created = OutboxMessage.objects.using(using).bulk_create(rows)
    return [int(row.pk) for row in created]


def delete(ids: Iterable[int], using: str) -> int:
    """Delete the rows ``ids`` (their messages are in the broker); the number deleted."""
    deleted, _ = OutboxMessage.objects.using(using).filter(pk__in=list(ids)).delete()
    return int(deleted)


def failed(
    row_ids: Sequence[int],
    using: str,
    *,
    error: str,
    now: datetime,
    retry_in: float,
) -> None:
    """Record a failed attempt of rows that a relay did not claim (the after-commit
    publish): one more attempt, the error, and the next try ``retry_in`` seconds on."""
    from django.db.models import F

    from aceleryctl.outbox.notify import notify

    OutboxMessage.objects.using(using).filter(pk__in=list(row_ids)).update(
        attempts=F("attempts") + 1,
        last_attempt_at=now,
        last_error=error,
        available_at=now + timedelta(seconds=retry_in),
    )
    notify(using)


def save_attempt(row: OutboxMessage, using: str, fields: Iterable[str]) -> None:
    """Write back ``fields`` of a claimed row."""
    row.save(using=using, update_fields=list(fields))


def count_pending(using: str) -> dict[str, Any]:
    """Depth of the outbox: pending and dead rows, and the oldest pending row's creation."""
    from django.db.models import Count, Min

    summary = {
        state: (count, oldest)
        for state, count, oldest in OutboxMessage.objects.using(using)
        .values_list("state")
        .annotate(Count("pk"), Min("created_at"))
        .values_list("state", "pk__count", "created_at__min")
    }
    pending, oldest = summary.get(OutboxMessage.State.PENDING, (0, None))
    dead, _ = summary.get(OutboxMessage.State.DEAD, (0, None))
    return {"pending": pending, "dead": dead, "oldest_pending": oldest}
