"""Values sampled rather than counted: the pool, the breaker and the outbox.

Read when an exporter collects (a Prometheus scrape, an OpenTelemetry reader's
cycle), on the collecting thread, never on a dispatch's. The outbox's depth is a
database query: it is cached for :data:`OUTBOX_CACHE` seconds, and a query that
fails leaves the outbox gauges out of that collection (logged once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from aceleryctl._once import OnceLog
from aceleryctl.breaker import BreakerState
from aceleryctl.dispatch.statistics import ControllerStatistics

__all__ = [
    "OUTBOX_CACHE",
    "STATES",
    "GaugeSampler",
    "OutboxSample",
    "broker_system",
    "read_outbox",
    "state_label",
]

#: Seconds an outbox depth reading is reused.
OUTBOX_CACHE: Final = 5.0
#: The breaker states a ``state`` label takes (forced states read as open/closed).
STATES: Final = ("closed", "open", "half_open")
_AS_LABEL: Final = {
    BreakerState.CLOSED: "closed",
    BreakerState.FORCED_CLOSED: "closed",
    BreakerState.OPEN: "open",
    BreakerState.FORCED_OPEN: "open",
    BreakerState.HALF_OPEN: "half_open",
}
_warn: Final = OnceLog(logging.getLogger("aceleryctl.metrics"))


@dataclass(frozen=True, slots=True)
class OutboxSample:
    """The outbox's depth at one reading: rows pending and dead-lettered, and the
    oldest pending row's age in seconds (0.0 when none is pending)."""

    pending: int
    dead: int
    oldest_age: float


def state_label(state: BreakerState) -> str:
    """The ``state`` label of ``state``: ``closed``, ``open`` or ``half_open``."""
    return _AS_LABEL[state]


class GaugeSampler:
    """Samples one controller's gauges. Thread-safe.

    Args:
        statistics: returns the controller's statistics snapshot.
        outbox: reads the outbox's depth (``None``: no outbox); may block on the
            database, so it is called only from :meth:`outbox`, with caching.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        statistics: Callable[[], ControllerStatistics],
        outbox: Callable[[], OutboxSample] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._statistics = statistics
        self._outbox = outbox
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, OutboxSample | None] | None = None

    def statistics(self) -> ControllerStatistics:
        """The controller's snapshot now."""
        return self._statistics()

    def outbox(self) -> OutboxSample | None:
        """The outbox's depth, at most :data:`OUTBOX_CACHE` seconds old; ``None``
        without an outbox or when the database could not be read."""
        if self._outbox is None:
            return None
        now = self._clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < OUTBOX_CACHE:
                return self._cached[1]
        try:
            sample: OutboxSample | None = self._outbox()
        except Exception as exc:
            _warn.warning(
                "outbox", "aceleryctl could not read the outbox depth for metrics: %s", exc
            )
            sample = None
        with self._lock:
            self._cached = (now, sample)
        return sample


def read_outbox() -> OutboxSample:
    """The outbox's depth from its database (on the calling thread).

    Raises:
        django.db.Error: the table cannot be read.
    """
    from aceleryctl.outbox.config import outbox_settings
    from aceleryctl.outbox.store import count_pending

    summary = count_pending(outbox_settings().database)
    oldest = summary["oldest_pending"]
    age = 0.0 if oldest is None else max((datetime.now(UTC) - oldest).total_seconds(), 0.0)
    return OutboxSample(int(summary["pending"]), int(summary["dead"]), age)


def broker_system(broker_url: object) -> str:
    """``messaging.system`` of a broker URL: ``redis``, ``rabbitmq``, ``aws_sqs``, or
    the URL's scheme (``memory``...)."""
    scheme = str(broker_url or "").split("://", 1)[0].split("+")[0].lower()
    return _SYSTEMS.get(scheme, scheme or "unknown")


_SYSTEMS: Final = {
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
    "librabbitmq": "rabbitmq",
    "sqs": "aws_sqs",
}
