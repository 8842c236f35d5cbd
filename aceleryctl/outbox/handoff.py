"""On-commit dispatch through the outbox: the row in the caller's transaction, the
publish right after the commit.

:func:`store_on_commit` runs on the thread that owns the transaction (the
thread-sensitive thread for async callers). It writes the dispatch's row inside
that transaction, so a rollback leaves nothing, and registers the publish for
after the commit. That publish goes to the controller's pool like any detached
one (the committing thread never waits); its end is handed to the process's
:class:`~aceleryctl.outbox.rows.RowWriter`: sent, the row is deleted; refused,
failed or unknown, the row records the attempt and the relay takes it over (and
the dispatch listeners hear ``STORED``).

A row is left alone by relays for ``HANDOFF_GRACE`` seconds, the after-commit
publish's turn; if this process dies first, a relay publishes it after that.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from aceleryctl.dispatch.build import Built
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Dispatch
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError
from aceleryctl.outbox.config import OutboxSettings, missing_table_note, outbox_settings
from aceleryctl.outbox.inprocess import in_process_relay
from aceleryctl.outbox.outcomes import tell_stored
from aceleryctl.outbox.rows import RowFailure, row_writer

__all__ = ["store_on_commit"]


def store_on_commit(engine: DispatchEngine, built: Built, using: str | None) -> bool:
    """Write ``built``'s dispatch to the outbox in the open transaction of ``using``
    (default: the outbox's database) and publish it after the commit.

    Runs on the thread owning the transaction.

    Returns:
        ``False`` when no transaction is open there (autocommit): nothing was
        written, and the caller should dispatch now.

    Raises:
        kombu.exceptions.EncodeError: the arguments cannot be encoded by the
            app's task serializer (nothing was written).
        django.db.Error: the row could not be written; the caller's transaction
            is then broken, as for any failed write in it.
    """
    from django.db import transaction
    from django.utils import timezone

    from aceleryctl.outbox import store
    from aceleryctl.outbox.models import OutboxMessage

    conf = outbox_settings()
    alias = using or conf.database
    if not transaction.get_connection(alias).in_atomic_block:
        return False
    dispatch, parent = built
    now = timezone.now()
    row = store.encode(
        dispatch,
        engine.app,
        reason=OutboxMessage.Reason.ON_COMMIT,
        now=now,
        available_at=now + timedelta(seconds=conf.handoff_grace),
    )
    try:
        row.save(using=alias, force_insert=True)
    except Exception as exc:
        exc.add_note(missing_table_note(alias))
        raise
    in_process_relay().ensure_started()
    settle = _RowSettler(engine, dispatch, alias, int(row.pk), conf)
    transaction.on_commit(
        functools.partial(engine.submit_detached, dispatch, parent, settle),
        using=alias,
        robust=True,
    )
    return True


class _RowSettler:
    """Hands a detached publish's end to the row writer (any thread; never blocks)."""

    __slots__ = ("_alias", "_conf", "_dispatch", "_engine", "_row_id")

    def __init__(
        self,
        engine: DispatchEngine,
        dispatch: Dispatch,
        alias: str,
        row_id: int,
        conf: OutboxSettings,
    ) -> None:
        self._engine = engine
        self._dispatch = dispatch
        self._alias = alias
        self._row_id = row_id
        self._conf = conf

    def __call__(self, outcome: DispatchOutcome, error: TaskDispatchError | None) -> None:
        writer = row_writer()
        if outcome is DispatchOutcome.SENT:
            writer.sent(self._alias, self._row_id)
            return
        retry_in = self._conf.backoff(1)
        if isinstance(error, CircuitOpenError):
            retry_in = max(retry_in, error.retry_after)
        text = _error_text(error)
        writer.failed(self._alias, RowFailure(self._row_id, text, retry_in))
        if error is not None:
            tell_stored(self._engine, self._dispatch, error)


def _error_text(error: Any) -> str:
    from aceleryctl.outbox.store import describe_error

    return "unknown error" if error is None else describe_error(error)
