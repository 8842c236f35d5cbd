"""``aget``: ``await`` any Celery result as ``result.get()`` would return it.

What is waited on, by result type (Celery's own semantics):

* ``AsyncResult``: its task's final state; with ``propagate``, a failed or
  revoked parent (a chain's earlier task, a chord's header member) raises its
  error as ``get()``'s ``follow_parents`` does. A chain's result is its last
  task's ``AsyncResult``; a chord's is its callback's.
* ``GroupResult`` / ``ResultSet``: every member, concurrently; the values in
  the members' order. With ``propagate`` the first failure to arrive is raised
  at once (as ``join_native``, the Redis backend's join, does).
* ``EagerResult``: its value, at once.

Each task waited on is one :func:`~aceleryctl.awaiting.ready.wait_ready_meta`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, EagerResult, ResultBase, ResultSet

from aceleryctl.awaiting.meta import aread_meta
from aceleryctl.awaiting.ready import wait_ready_meta
from aceleryctl.compat.celery_results import set_result_cache

__all__ = ["aget"]


async def aget(result: ResultBase, *, timeout: float | None = None, propagate: bool = True) -> Any:
    """Wait for ``result`` on the running loop and return what ``result.get()`` would.

    ``result``: an ``AsyncResult`` (a task's, a chain's, a chord's), a
    ``GroupResult`` or ``ResultSet``, or an ``EagerResult``, from the
    controller or built by hand (``app.AsyncResult(id)``).

    ``timeout``: seconds to wait at most (``None``: no limit). ``0`` reads the
    stored state once and does not wait.

    ``propagate``: raise the task's exception when it failed or was revoked
    (``True``), or return the exception instance instead (``False``).

    Returns the task's return value; for a group, the list of its members'
    values in order; ``None`` for a task with ``ignore_result``.

    Raises ``celery.exceptions.TimeoutError`` when ``timeout`` passes first (the
    task keeps running); the task's exception (or a parent's) with
    ``propagate``, ``celery.exceptions.TaskRevokedError`` for a revoked task;
    ``TypeError`` / ``ValueError`` for a bad argument; ``NotImplementedError``
    on the ``rpc://`` result backend; the result backend's connection error
    when it cannot be reached.

    Threads: none on Celery's Redis result backend (one shared pub/sub
    connection per loop and backend); other backends are polled with a
    short read in the loop's default executor, 50 ms doubling to 1 s apart.
    Cancelling the awaiting task stops the wait and unsubscribes.
    """
    if not isinstance(result, ResultBase):
        raise TypeError(
            f"aget() takes a Celery result (AsyncResult, GroupResult, ResultSet), "
            f"not {type(result).__name__}: pass what delay()/apply_async() returned"
        )
    if not isinstance(propagate, bool):
        raise TypeError(f"propagate must be True or False, not {propagate!r}")
    limit = _check_timeout(timeout)
    if isinstance(result, EagerResult):
        return result.get(propagate=propagate, disable_sync_subtasks=False)
    if limit == 0:
        return await _peek(result, propagate)
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await _value(result, propagate)
    except TimeoutError:
        if not deadline.expired():
            raise  # a task's own TimeoutError, propagated
        raise CeleryTimeoutError("The operation timed out.") from None


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be at least 0 seconds (or None), not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


async def _value(result: ResultBase, propagate: bool) -> Any:
    if isinstance(result, ResultSet):
        return await _set_values(result, propagate)
    if isinstance(result, AsyncResult):
        return await _task_value(result, propagate)
    raise TypeError(f"aget() cannot wait on a {type(result).__name__}")


async def _task_value(result: AsyncResult[Any], propagate: bool) -> Any:
    if result.ignored:
        return None
    parents = list(_parent_tasks(result)) if propagate else []
    if not parents:
        meta = await wait_ready_meta(result.app, result.backend, result.id)
        return _settle(result, meta, propagate)
    own: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(
        wait_ready_meta(result.app, result.backend, result.id)
    )
    # Parents in chain order, root first: Celery raises the failure nearest the root.
    watches: dict[asyncio.Future[dict[str, Any]], AsyncResult[Any]] = {
        asyncio.ensure_future(wait_ready_meta(p.app, p.backend, p.id)): p for p in parents
    }
    order = {watch: i for i, watch in enumerate(watches)}
    pending: set[asyncio.Future[dict[str, Any]]] = {own, *watches}
    try:
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failed = [w for w in done if w is not own and _failed(w)]
            if failed:
                first = min(failed, key=lambda watch: order[watch])
                return _settle(watches[first], first.result(), True)
            if own in done:
                return _settle(result, own.result(), propagate)
    finally:
        for waiting in pending:
            waiting.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _failed(watch: asyncio.Future[dict[str, Any]]) -> bool:
    """A parent's wait that ended with a failure to raise (or an error of its own)."""
    if watch.exception() is not None:
        raise watch.exception()  # type: ignore[misc]
    return watch.result().get("status") in states.PROPAGATE_STATES


def _parent_tasks(result: AsyncResult[Any]) -> Iterator[AsyncResult[Any]]:
    """The task results above ``result``, root first (a group parent's members in order)."""
    chain: list[ResultBase] = []
    node = result.parent
    while node is not None:
        chain.append(node)
        node = node.parent
    for parent in reversed(chain):
        yield from _tasks_of(parent)


def _tasks_of(result: ResultBase) -> Iterator[AsyncResult[Any]]:
    if isinstance(result, ResultSet):
        for member in result.results or ():
            yield from _tasks_of(member)
    elif isinstance(result, AsyncResult) and not isinstance(result, EagerResult):
        yield result


def _settle(result: AsyncResult[Any], meta: dict[str, Any], propagate: bool) -> Any:
    """The value ``result.get()`` returns for its ready ``meta``, or the error it raises."""
    set_result_cache(result, meta)
    if propagate and meta.get("status") in states.PROPAGATE_STATES:
        result.maybe_throw()  # Celery's own raise (with the remote traceback if enabled)
        raise meta["result"]  # maybe_throw raised unless the cache could not be set
    return meta.get("result")


async def _set_values(results: ResultSet, propagate: bool) -> list[Any]:
    members = list(results.results or ())
    waits = [asyncio.ensure_future(_value(member, propagate)) for member in members]
    try:
        if propagate:
            # The first failure to arrive is raised at once, the rest abandoned.
            for finished in asyncio.as_completed(waits):
                await finished
        else:
            await asyncio.gather(*waits)
        return [w.result() for w in waits]
    finally:
        for waiting in waits:
            waiting.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _peek(result: ResultBase, propagate: bool) -> Any:
    """``timeout=0``: the value if every task is ready now, else Celery's ``TimeoutError``."""
    tasks = [t for t in _tasks_of(result) if not t.ignored]
    metas = await asyncio.gather(*(aread_meta(t.app, t.id) for t in tasks))
    for task, meta in zip(tasks, metas, strict=True):
        if meta is None or meta.get("status") not in states.READY_STATES:
            raise CeleryTimeoutError("The operation timed out.")
        set_result_cache(task, meta)
    return await _value(result, propagate)
