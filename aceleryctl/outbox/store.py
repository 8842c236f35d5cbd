"""Rows of the outbox table from dispatches and back, and the writes a relay needs.

Every function runs on the calling thread and uses that thread's Django database
connection for the given alias (so inside the caller's transaction when one is
open). The payload is :meth:`Dispatch.dumps` with the Celery app's task
serializer: what is stored is what would have been sent.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

from celery import Celery

from aceleryctl._logging import scrub_credentials
from aceleryctl.dispatch.record import Dispatch, DispatchKind
from aceleryctl.events import clip_text
from aceleryctl.outbox.models import OutboxMessage
from aceleryctl.tracing import capture

__all__ = [
    "ClaimedRow",
    "UndecodableRow",
    "decode",
    "describe_error",
    "encode",
    "insert",
    "insert_one",
]

#: Longest stored error text, in characters.
MAX_ERROR_LENGTH = 2_000


class UndecodableRow(ValueError):
    """A stored row cannot become a dispatch again (corrupt, or its task is unknown)."""


@dataclasses.dataclass(slots=True)
class ClaimedRow:
    """The columns of an outbox row that a relay reads, as plain values: a relay
    round builds no model instance per row.

    Attributes:
        pk: the row's primary key.
        task_id: the id the message goes under.
        task_name: the task's name (for logs and listeners).
        payload: the stored dispatch (:meth:`Dispatch.dumps`).
        content_type: its serializer's content type.
        content_encoding: its serializer's content encoding.
        attempts: publish attempts made so far.
    """

    pk: int
    task_id: str
    task_name: str
    payload: bytes | memoryview
    content_type: str
    content_encoding: str
    attempts: int

    #: The columns, in the order of the fields above (``values_list`` order).
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id",
        "task_id",
        "task_name",
        "payload",
        "content_type",
        "content_encoding",
        "attempts",
    )


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
    """An unsaved row for ``dispatch``, with the calling context's trace
    (:func:`aceleryctl.tracing.capture`) when there is one.

    Raises:
        aceleryctl.dispatch.record.NotData: ``dispatch`` is of a zero-argument callable.
        kombu.exceptions.EncodeError: an argument cannot be encoded by the app's
            task serializer.
    """
    serializer = dispatch.options.get("serializer") or app.conf.task_serializer
    dispatch = _anchored(dispatch, now)
    trace_context = capture()
    if trace_context is not None:  # the relay publishes it inside the caller's trace
        dispatch = dataclasses.replace(dispatch, trace_context=trace_context)
    content_type, encoding, payload = dispatch.dumps(serializer)
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


def decode(row: OutboxMessage | ClaimedRow, app: Celery) -> Dispatch:
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


#: The columns :func:`insert_one` writes, in order (every one but the primary key).
_COLUMNS = (
    "task_id",
    "task_name",
    "payload",
    "content_type",
    "content_encoding",
    "reason",
    "state",
    "attempts",
    "created_at",
    "available_at",
    "last_attempt_at",
    "last_error",
)
_insert_sql: dict[str, tuple[str, bool]] = {}
#: The table and its primary key column (``OutboxMessage.Meta``).
_TABLE, _PK = "aceleryctl_outbox", "id"


@functools.cache
def _fields() -> list[Any]:
    """The model fields of :data:`_COLUMNS`, in order (looked up once)."""
    by_name = {field.name: field for field in OutboxMessage._meta.concrete_fields}
    return [by_name[name] for name in _COLUMNS]


def _insert_statement(connection: Any) -> tuple[str, bool]:
    """The ``INSERT`` of one row for ``connection``'s database, and whether it
    returns the new id itself (``RETURNING``); built once per database vendor."""
    key = connection.vendor
    found = _insert_sql.get(key)
    if found is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in _fields())
        marks = ", ".join(["%s"] * len(_COLUMNS))
        sql = f"INSERT INTO {quote(_TABLE)} ({columns}) VALUES ({marks})"
        returning = bool(connection.features.can_return_columns_from_insert)
        if returning:
            sql += f" RETURNING {quote(_PK)}"
        found = _insert_sql[key] = (sql, returning)
    return found


def insert_one(row: OutboxMessage, using: str) -> int:
    """Insert ``row`` with one statement (no savepoint, no signals: the hot path of
    an on-commit dispatch) on the calling thread's connection; return its id and
    set ``row.pk``. Values are prepared by each field, as ``save()`` would.

    Raises:
        django.db.Error: what the database raises.
    """
    from django.db import connections

    connection = connections[using]
    sql, returning = _insert_statement(connection)
    values = [field.get_db_prep_save(getattr(row, field.name), connection) for field in _fields()]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        if returning:
            found = cursor.fetchone()
            assert found is not None  # INSERT ... RETURNING returns the row
            new_id = int(found[0])
        else:
            new_id = int(connection.ops.last_insert_id(cursor, _TABLE, _PK))
    row.pk = new_id
    return new_id


def delete(ids: Iterable[int], using: str) -> int:
    """Delete the rows ``ids`` (their messages are in the broker) with one
    ``DELETE`` statement per call, in autocommit unless a transaction is open
    (``QuerySet.delete()`` would add a transaction of its own: two more round
    trips). Returns the number deleted.

    Raises:
        django.db.Error: what the database raises.
    """
    from django.db import connections

    chosen = [int(i) for i in ids]
    if not chosen:
        return 0
    connection = connections[using]
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * len(chosen))
    sql = f"DELETE FROM {quote(_TABLE)} WHERE {quote(_PK)} IN ({marks})"
    with connection.cursor() as cursor:
        cursor.execute(sql, chosen)
        return int(cursor.rowcount)


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


def save_attempt(row_id: int, using: str, **values: Any) -> None:
    """Write ``values`` (column name to value) into the row ``row_id`` with one ``UPDATE``.

    Raises:
        django.db.Error: what the database raises.
    """
    OutboxMessage.objects.using(using).filter(pk=row_id).update(**values)


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
