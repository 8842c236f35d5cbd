"""Rebuild Celery result objects in the caller's thread.

Celery keeps a result backend per thread (``app.backend`` is thread-local), and a
result object holds the backend of the thread that built it. A result built on a
publishing thread therefore waits on that thread's backend: for a
``GroupResult`` backed by Redis, ``.get()`` in the caller's thread then never
completes. Rebuilding the same ids against the caller's thread fixes that, at the
cost of a few object allocations.
"""

from __future__ import annotations

from typing import TypeVar

from celery import Celery
from celery.result import AsyncResult, EagerResult, GroupResult, ResultBase, ResultSet

__all__ = ["rebind"]

R = TypeVar("R")


def rebind(result: R, app: Celery) -> R:
    """Return ``result`` rebuilt against ``app``'s backend for the calling thread.

    Eager results (they hold their value) and anything that is not a Celery
    result (a zero-argument dispatcher may return anything) come back unchanged.
    Runs in the caller's thread; raises nothing of its own.
    """
    if not isinstance(result, ResultBase) or isinstance(result, EagerResult):
        return result
    return _rebuild(result, app)  # type: ignore[return-value]


def _rebuild(result: ResultBase, app: Celery) -> ResultBase:
    parent = result.parent
    new_parent = _rebuild(parent, app) if isinstance(parent, ResultBase) else None
    if isinstance(result, GroupResult):
        children = [_rebuild(child, app) for child in result.results or ()]
        return app.GroupResult(result.id, children, parent=new_parent)  # type: ignore[arg-type]
    if isinstance(result, AsyncResult):
        # Never read ``result.name``: it is a backend query, not an attribute.
        return app.AsyncResult(result.id, parent=new_parent)
    if isinstance(result, ResultSet):
        members = [_rebuild(child, app) for child in result.results or ()]
        return app.ResultSet(members)  # type: ignore[arg-type]
    return result
