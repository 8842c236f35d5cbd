"""Waiting for a task's final meta on a result backend without pub/sub: polling.

Database, cache, file-system and other backends have no channel to listen on:
the stored meta is read with the backend's own ``get_task_meta`` in the loop's
default executor (one short read, the thread is returned between reads), with
pauses from :mod:`aceleryctl.awaiting.backoff` (50 ms doubling to 1 s) spent on
the loop, holding no thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery, states

from aceleryctl.awaiting.backoff import delays

__all__ = ["poll_ready_meta"]


async def poll_ready_meta(app: Celery, task_id: str) -> dict[str, Any]:
    """The meta of ``task_id`` once it is in a ready state, read by polling ``app``'s backend.

    Returns the decoded meta (as ``backend.get_task_meta`` returns it) whose
    ``status`` is one of Celery's ready states (``SUCCESS``, ``FAILURE``,
    ``REVOKED``). Waits forever: the caller bounds it (``asyncio.timeout``) and
    cancelling it stops it between two reads (a read already running in the
    executor finishes there and is discarded). Raises the backend's own error
    when a read fails.
    """
    pauses = delays()
    while True:
        meta = await asyncio.to_thread(_read, app, task_id)
        if meta.get("status") in states.READY_STATES:
            return meta
        await asyncio.sleep(next(pauses))


def _read(app: Celery, task_id: str) -> dict[str, Any]:
    """One read through this (executor) thread's own backend instance."""
    meta: dict[str, Any] = app.backend.get_task_meta(task_id)
    return meta
