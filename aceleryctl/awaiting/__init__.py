"""Awaiting Celery results on the event loop, without holding a thread.

* :func:`aget`: ``await aget(result)`` returns what ``result.get()`` would, for
  a task, chain, chord or group result;
* :func:`aread_meta`: a task's stored meta (``GET`` with ``redis.asyncio`` on
  the Redis result backend, the backend's own read in a thread elsewhere);
* :func:`aclose_endpoints`: close the running loop's Redis connections.

See ``docs/results.md``.
"""

from __future__ import annotations

from aceleryctl.awaiting.aget import aget
from aceleryctl.awaiting.clients import aclose_endpoints
from aceleryctl.awaiting.meta import aread_meta

__all__ = ["aclose_endpoints", "aget", "aread_meta"]
