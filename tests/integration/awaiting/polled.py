"""A Redis result backend that ``aget`` must poll: it overrides how it reads.

The test process reads results through it; the workers store them with Celery's
plain Redis backend at the same keys. Overriding ``get`` makes
``aceleryctl.compat.celery_results.async_redis_pool_kwargs`` refuse it, so the
awaiting side takes its polling path against a real worker.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.backends.redis import RedisBackend

__all__ = ["PolledRedisBackend", "reader_threads"]

#: The names of the threads that read through this backend (the polling path's).
reader_threads: set[str] = set()


class PolledRedisBackend(RedisBackend):
    """Celery's Redis backend, noting which thread reads."""

    def get(self, key: Any) -> Any:
        reader_threads.add(threading.current_thread().name)
        return super().get(key)
