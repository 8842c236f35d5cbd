"""Rebuild Celery result objects in the caller's thread.

Celery keeps a result backend per thread (``app.backend`` is thread-local), and a
result object holds the backend of the thread that built it. A result built on a
publishing thread therefore waits on that thread's backend: for a
``GroupResult`` backed by Redis, ``.get()`` in the caller's thread then never
completes. Rebuilding the same ids against the caller's thread fixes that, at the
cost of a few object allocations.

A group is rebuilt as :class:`AnyThreadGroupResult`, because the same mismatch
recurs when the caller hands the group to another thread (``await
asyncio.to_thread(group_result.get)``): a ``GroupResult`` joins through
``app.backend``, the *waiting* thread's backend, while its members were
registered, when the group was built, with the *building* thread's; the
members' states then never reach the join and ``get()`` times out. An
:class:`AnyThreadGroupResult` waited on from another thread rebuilds itself
for that thread first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from celery import Celery
from celery.result import AsyncResult, EagerResult, GroupResult, ResultBase, ResultSet

__all__ = ["AnyThreadGroupResult", "rebind"]

R = TypeVar("R")


class AnyThreadGroupResult(GroupResult):
    """A ``GroupResult`` whose native join works from any thread.

    On the thread that built it, it is a plain ``GroupResult``. On any other
    thread, ``iter_native`` (and so ``get()`` and ``join_native()``) waits
    through a copy rebuilt for that thread: same group id, same member ids,
    the waiting thread's result backend. Raises what ``GroupResult`` raises.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built_on = threading.get_ident()

    def iter_native(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """``GroupResult.iter_native``, through a copy for this thread if needed."""
        if threading.get_ident() == self._built_on:
            members: Iterator[tuple[str, Any]] = super().iter_native(*args, **kwargs)
            return members
        copy = _rebuild(self, self.app)
        assert isinstance(copy, AnyThreadGroupResult)
        return copy.iter_native(*args, **kwargs)


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
        return AnyThreadGroupResult(result.id, children, parent=new_parent, app=app)
    if isinstance(result, AsyncResult):
        # Never read ``result.name``: it is a backend query, not an attribute.
        return app.AsyncResult(result.id, parent=new_parent)
    if isinstance(result, ResultSet):
        members = [_rebuild(child, app) for child in result.results or ()]
        return app.ResultSet(members)  # type: ignore[arg-type]
    return result
