"""Awaiting Celery results on the event loop, without holding a thread.

:func:`aread_meta` reads a task's stored meta (``GET`` with ``redis.asyncio`` on
the Redis result backend, the backend's own read in a thread elsewhere).
"""

from __future__ import annotations

from aceleryctl.awaiting.clients import aclose_endpoints
from aceleryctl.awaiting.meta import aread_meta

__all__ = ["aclose_endpoints", "aread_meta"]
