"""Publish after the surrounding database transaction commits, never on rollback.

Django keeps a transaction on the connection of the thread that opened it. From
async code that is the thread-sensitive thread where ``sync_to_async`` code runs,
so :func:`defer_until_commit` must run there; from sync code, on the caller's
thread. Django is imported lazily: the rest of aceleryctl works without it. The
real controllers and the recording ones all defer through this one helper.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aceleryctl.dispatch.record import Dispatch

__all__ = ["check_deferrable", "defer_until_commit"]

T = TypeVar("T")


def check_deferrable(dispatch: Dispatch) -> str:
    """Return the dispatch's task id; refuse dispatches whose id is not known
    before publishing.

    Raises:
        TypeError: a canvas or a zero-argument callable was given.
    """
    if dispatch.task_id is None:
        raise TypeError(
            f"on-commit dispatch needs a task, a signature or a task name, whose id is "
            f"assigned up front; got {dispatch.task_name}. Dispatch a group/chain/chord or a "
            "callable with transaction.on_commit() yourself."
        )
    return dispatch.task_id


def defer_until_commit(action: Callable[..., Any], arguments: Any, using: str | None) -> bool:
    """Register ``action(*arguments)`` to run when the current transaction commits.

    Runs on the thread that owns the transaction. The real controllers pass the
    engine's ``submit_detached``, which hands the publish to the pool and never
    blocks the committing thread (a failure then is logged: there is no caller
    left to raise to); the recording controllers pass their recorder.

    Returns:
        ``False`` when no transaction is open on ``using`` (autocommit): nothing
        was registered and the caller should act now.
    """
    from django.db import transaction

    if not transaction.get_connection(using).in_atomic_block:
        return False
    transaction.on_commit(functools.partial(action, *arguments), using=using, robust=True)
    return True
