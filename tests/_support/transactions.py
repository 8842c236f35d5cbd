"""``transaction.atomic()`` for async code, as the on-commit and outbox tests and
the durable suite's views need it.

Django keeps a transaction on the connection of the thread that opened it; async
code runs its database work on asgiref's thread-sensitive thread, so the block
is entered and left there, and the ``sync_to_async`` ORM calls in between run in
it. Raises what the block raises (after rolling back).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.db import transaction

__all__ = ["async_atomic"]


@contextlib.asynccontextmanager
async def async_atomic(using: str | None = None) -> AsyncIterator[None]:
    """``transaction.atomic(using)`` entered and left on the thread-sensitive thread."""
    atomic = transaction.atomic(using=using)
    await sync_to_async(atomic.__enter__, thread_sensitive=True)()
    try:
        yield
    except BaseException as exc:
        await sync_to_async(atomic.__exit__, thread_sensitive=True)(
            type(exc), exc, exc.__traceback__
        )
        raise
    else:
        await sync_to_async(atomic.__exit__, thread_sensitive=True)(None, None, None)
