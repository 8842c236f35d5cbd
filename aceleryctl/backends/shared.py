"""What every instance of one configured backend shares within a process.

Django keeps task backends in an ``asgiref`` ``Local`` that is not thread-critical
(a context variable): a backend first looked up inside a request's task (its own
``contextvars`` context) belongs to that request alone, and the next request makes
another instance; in a sync server, each thread makes its own. State that must
outlive one request is therefore kept here, once per process for each alias and
configuration: the recent enqueues (a ``PENDING`` id is known only to the process
that enqueued it, and ``get_result`` is usually called from another request than
``enqueue``), the per-task plans and the set of validated tasks.

Thread-safe: states are made under a lock; their contents are single dict and set
operations under the GIL.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aceleryctl.backends.results import RecentEnqueues

__all__ = ["BackendState", "state_for"]

#: Configurations whose state is kept, at most (tests override TASKS many times);
#: the least recently made is forgotten first.
_MAX_STATES = 64

_lock = threading.Lock()
_states: OrderedDict[tuple[str, Any], BackendState] = OrderedDict()


@dataclass(eq=False)
class BackendState:
    """The recent enqueues, plans (by task identity) and validated tasks of one
    configured backend."""

    recent: RecentEnqueues = field(default_factory=RecentEnqueues)
    plans: dict[int, Any] = field(default_factory=dict)
    valid: set[Any] = field(default_factory=set)


def state_for(alias: str, params: Any) -> BackendState:
    """The state every backend configured as ``TASKS[alias] == params`` shares."""
    key = (alias, _fingerprint(params))
    with _lock:
        state = _states.get(key)
        if state is None:
            state = _states[key] = BackendState()
            if len(_states) > _MAX_STATES:
                _states.popitem(last=False)
        return state


def _fingerprint(value: Any) -> Any:
    # Equal settings give equal keys; an object (a CONTROLLER instance) counts by
    # identity, so that two controllers never share a backend's state.
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _fingerprint(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("seq", tuple(_fingerprint(v) for v in value))
    return ("object", id(value))
