"""Publish after the surrounding database transaction commits, never on rollback.

Django keeps a transaction on the connection of the thread that opened it. From
async code that is the thread-sensitive thread where ``sync_to_async`` code runs,
so :func:`defer_until_commit` must run there; from sync code, on the caller's
thread. Django is imported lazily: the rest of aceleryctl works without it.
"""

from __future__ import annotations

import functools

from aceleryctl._calls import Call
from aceleryctl._engine import DispatchEngine

__all__ = ["check_deferrable", "defer_until_commit"]


def check_deferrable(call: Call) -> None:
    """Refuse calls whose task id cannot be known before publishing.

    Raises:
        TypeError: a canvas or a zero-argument callable was given.
    """
    if call.task_id is None:
        raise TypeError(
            f"on-commit dispatch needs a task, a signature or a task name, whose id is "
            f"assigned up front; got {call.task_name}. Dispatch a group/chain/chord or a "
            "callable with transaction.on_commit() yourself."
        )


def defer_until_commit(engine: DispatchEngine, call: Call, using: str | None) -> bool:
    """Register ``call`` to be published when the current transaction commits.

    Runs on the thread that owns the transaction. The publish itself is handed to
    the pool at commit time and never blocks the committing thread; a failure
    then is logged (there is no caller left to raise to).

    Returns:
        ``False`` when no transaction is open on ``using`` (autocommit): nothing
        was registered and the caller should publish now, under its deadline.
    """
    from django.db import transaction

    if not transaction.get_connection(using).in_atomic_block:
        return False
    transaction.on_commit(functools.partial(engine.submit_detached, call), using=using, robust=True)
    return True
