"""Reading a task's stored meta without holding a thread on Redis.

:func:`aread_meta` is the awaitable twin of ``app.backend.get_task_meta(id)``
for code that must know a task's current state (the Django Tasks backend's
``aget_result``, the waiting in :func:`aceleryctl.aget`): one ``GET`` with
``redis.asyncio`` on the running loop when the result backend is Celery's
Redis backend, the backend's own blocking read in a thread otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend

from aceleryctl.awaiting.clients import RedisEndpoint, endpoint_for

__all__ = ["aread_meta", "decode_stored", "read_stored"]


async def aread_meta(app: Celery, task_id: str) -> dict[str, Any] | None:
    """The meta Celery's result backend stores for ``task_id``, decoded, or ``None``.

    The dict is what ``app.backend.get_task_meta(task_id)`` returns for a
    stored task (``status``, ``result`` with a failure's exception rebuilt,
    ``traceback``, ``date_done``, ``children``, and with ``result_extended``
    the request's fields), read with the backend's serializer, accepted content
    and key prefix (``result_backend_transport_options["global_keyprefix"]``
    included).

    ``None`` means nothing is stored: the task is unknown, not started with
    ``task_track_started`` off, or its result has expired. Backends other than
    Redis cannot tell "nothing stored" from a stored ``PENDING`` state: there
    ``None`` is returned for a ``PENDING`` meta carrying no result, traceback
    or ``date_done``.

    Threads: on the Redis result backend, none (one ``GET`` on the running
    loop through the loop's shared ``redis.asyncio`` client, batched with the
    other reads of the same loop turn into one ``MGET``); on other backends
    the backend's ``get_task_meta`` runs in the loop's default executor.

    Raises ``ValueError`` for an empty ``task_id``; the Redis client's
    ``redis.exceptions.RedisError`` (connection refused or lost, timeout) or
    the backend's own error when it cannot be read; kombu's
    ``ContentDisallowed`` when the stored meta's serializer is not accepted by
    ``result_accept_content``. Must be awaited on a running event loop.
    """
    if not task_id:
        raise ValueError(f"task_id must be a non-empty task id string, not {task_id!r}")
    backend = app.backend  # this (the loop's) thread's backend: decoding is pure
    endpoint = endpoint_for(backend)
    if endpoint is None or not isinstance(backend, RedisBackend):
        return await asyncio.to_thread(_read_in_thread, app, task_id)
    return await read_stored(endpoint, backend, task_id)


async def read_stored(
    endpoint: RedisEndpoint, backend: RedisBackend, task_id: str
) -> dict[str, Any] | None:
    """``task_id``'s stored meta read on ``endpoint`` (batched reads), decoded by ``backend``.

    ``None`` when nothing is stored. Raises what :func:`aread_meta` raises.
    """
    payload = await endpoint.reads.get(backend.get_key_for_task(task_id))
    return decode_stored(backend, payload)


def decode_stored(backend: RedisBackend, payload: bytes | str | None) -> dict[str, Any] | None:
    """A stored (or published) meta ``payload`` decoded as Celery's backend decodes it.

    ``None`` for an empty payload. Raises kombu's ``ContentDisallowed`` for a
    serializer not accepted, the serializer's error for a corrupt payload.
    """
    if not payload:
        return None
    # A ``str`` when the backend's URL asks for ``decode_responses``.
    raw = payload.encode() if isinstance(payload, str) else payload
    meta: dict[str, Any] = backend.decode_result(raw)
    return meta


def _read_in_thread(app: Celery, task_id: str) -> dict[str, Any] | None:
    """``get_task_meta`` through this (executor) thread's backend; ``None`` if not stored."""
    meta: dict[str, Any] = app.backend.get_task_meta(task_id)
    if (
        meta.get("status") == states.PENDING
        and meta.get("result") is None
        and not meta.get("traceback")
        and meta.get("date_done") is None
    ):
        return None
    return meta
