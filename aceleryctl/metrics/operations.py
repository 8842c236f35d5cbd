"""Publish operations as the metrics listeners time them: once each.

A publishing thread writes the dispatches it took together in one wire
operation (one pipelined write on Redis, one confirm round on RabbitMQ), and
their events carry the same ``started_at`` and ``finished_at`` readings
(:class:`~aceleryctl.dispatch.listener.DispatchEvent`). The duration histograms
observe each operation once, under each set of labels its dispatches have, as
OpenTelemetry's messaging conventions define ``messaging.client.operation.duration``;
counting stays per dispatch. Observing once per operation is also what keeps the
histograms cheap: a batch's later events cost a set lookup instead of an
observation (several microseconds in OpenTelemetry's SDK, two memory-mapped writes
in ``prometheus_client``'s multiprocess mode).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Final

__all__ = ["RECENT_OPERATIONS", "RecentOperations"]

#: Operations remembered per listener. A batch's events may interleave with a few
#: other batches' (each caller resumes on its own loop turn); far fewer than this.
RECENT_OPERATIONS: Final = 256


class RecentOperations:
    """Which (labels, started, finished) operations were observed lately.

    Thread-safety: :meth:`first` from any thread (a lock around a dictionary).
    """

    __slots__ = ("_lock", "_seen", "_size")

    def __init__(self, size: int = RECENT_OPERATIONS) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        self._lock = threading.Lock()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()  # O(1) oldest-first eviction
        self._size = size

    def first(self, labels: Hashable, started: float, finished: float) -> bool:
        """Whether this is the first event of its operation under ``labels``
        (remembered from now on; the oldest remembered one is forgotten)."""
        key = (labels, started, finished)
        seen = self._seen
        with self._lock:
            if key in seen:
                return False
            seen[key] = None
            if len(seen) > self._size:
                seen.popitem(last=False)
        return True
