"""The OpenTelemetry instruments of one meter provider, made once and shared.

Instruments are registered once per meter provider, so instrumenting a rebuilt
controller (the default one after a settings change) or several controllers
never registers an instrument twice: every :class:`~aceleryctl.metrics.otel.
OpenTelemetryMetrics` of a provider counts into the same instruments, and the
observable gauges sum over every live controller's sampler (the breaker state then
counts controllers per state). Callbacks run in the SDK reader's thread.

Per-dispatch counts are kept in local tables (:class:`Tally`) and reported through
observable counters when the reader collects: the SDK's ``Counter.add`` cleans and
hashes the attributes on every call (several microseconds), a table increment
costs a fraction of one. The duration histogram has no observable form; it is
recorded once per publish operation (:meth:`Instruments.settle`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from aceleryctl.metrics.catalogue import DURATION_BUCKETS, METRICS
from aceleryctl.metrics.gauges import STATES, GaugeSampler, state_label
from aceleryctl.metrics.live import DROP_REASONS, emitter_totals, live_counters
from aceleryctl.metrics.operations import RecentOperations

__all__ = ["Instruments", "SentKey", "Tally", "instruments_for"]

_SPECS: Final = {spec.key: spec for spec in METRICS}
#: What a settled dispatch is counted under: system, task, queue, path, outcome, error.
SentKey = tuple[str, str, str, str, str, str | None]
#: A publish operation as its dispatches' events tell it: their shared
#: ``started_at`` and ``finished_at`` clock readings (:mod:`.operations`).
Operation = tuple[float, float]

K = TypeVar("K", bound=Hashable)


class Tally(Generic[K]):
    """Counts by key, reported as an observable counter's observations.

    Args:
        attributes: the attributes a key is reported under (called once per key).

    Thread-safety: :meth:`add` from any thread; :meth:`observe` on the reader's.
    """

    def __init__(self, attributes: Callable[[K], Mapping[str, str]]) -> None:
        self._make = attributes
        self._lock = threading.Lock()
        self._counts: dict[K, int] = {}
        self._attributes: dict[K, Mapping[str, str]] = {}

    def add(self, key: K) -> None:
        """Count one under ``key``."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def attributes(self, key: K) -> Mapping[str, str]:
        """The attributes of ``key``, made once."""
        found = self._attributes.get(key)
        if found is None:
            found = self._attributes[key] = self._make(key)
        return found

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The totals so far, one observation per key (cumulative)."""
        with self._lock:
            totals = list(self._counts.items())
        return [Observation(count, self.attributes(key)) for key, count in totals]


class Instruments:
    """One provider's instruments (module docstring). Thread-safe."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        from aceleryctl import __version__

        meter = metrics.get_meter("aceleryctl", __version__, meter_provider=meter_provider)
        self._meter = meter
        self.samplers: weakref.WeakSet[GaugeSampler] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._operations = RecentOperations()
        self._timed: dict[SentKey, Mapping[str, str]] = {}
        self.sent: Tally[SentKey] = Tally(_sent_attributes)
        self.deadline: Tally[str] = Tally(lambda name: {"aceleryctl.task.name": name})
        self.on_commit: Tally[str] = Tally(lambda outcome: {"aceleryctl.outcome": outcome})
        self.saturated = self._counter("saturated")
        self.transitions = self._counter("transitions")
        duration = _SPECS["duration"]
        self.duration = meter.create_histogram(
            duration.otel,
            unit=duration.unit,
            description=duration.help,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._observe("dispatches", "counter", self.sent.observe)
        self._observe("deadline", "counter", self.deadline.observe)
        self._observe("on_commit", "counter", self.on_commit.observe)
        for key in ("threads", "running", "waiting"):
            self._observe(key, "gauge", self._pool_reader(key))
        self._observe("breaker_state", "gauge", self._observe_state)
        self._observe("outbox_pending", "gauge", self._outbox_reader("pending", sum))
        self._observe("outbox_dead", "gauge", self._outbox_reader("dead", sum))
        self._observe("outbox_age", "gauge", self._outbox_reader("oldest_age", max))
        self._observe("ws_open", "gauge", _one(lambda: live_counters.open))
        self._observe("ws_accepted", "counter", _one(lambda: live_counters.accepted_total))
        self._observe("ws_closes", "counter", _observe_closes)
        self._observe("ws_subscriptions", "gauge", _one(live_counters.subscriptions))
        self._observe("events_sent", "counter", _one(lambda: emitter_totals()["sent"]))
        self._observe("events_dropped", "counter", _observe_dropped)

    def settle(self, key: SentKey, operation: Operation | None) -> Mapping[str, str] | None:
        """Count one settled dispatch under ``key``; return the attributes to record
        its publish's duration under, or ``None`` when there is nothing to record:
        the publish never started (``operation`` is ``None``), or another dispatch
        of the same publish operation (a pipelined batch, one confirm round) has
        recorded it already. OpenTelemetry's messaging conventions measure
        ``messaging.client.operation.duration`` per operation, and one record
        costs as much as the rest of the listener."""
        self.sent.add(key)
        if operation is None or not self._operations.first(key, *operation):
            return None
        found = self._timed.get(key)
        if found is None:
            found = self._timed[key] = _timed_attributes(key)
        return found

    def _counter(self, key: str) -> Any:
        spec = _SPECS[key]
        return self._meter.create_counter(spec.otel, unit=spec.unit, description=spec.help)

    def _observe(self, key: str, kind: str, callback: Any) -> None:
        spec = _SPECS[key]
        create = (
            self._meter.create_observable_gauge
            if kind == "gauge"
            else self._meter.create_observable_counter
        )
        create(spec.otel, callbacks=[callback], unit=spec.unit, description=spec.help)

    def _pool_reader(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            total = sum(int(getattr(s.statistics().pool, field)) for s in list(self.samplers))
            return [Observation(total)]

        return observe

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        current = [state_label(s.statistics().breaker.state) for s in list(self.samplers)]
        return [
            Observation(current.count(state), {"aceleryctl.breaker.state": state})
            for state in STATES
        ]

    def _outbox_reader(self, field: str, combine: Any) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            samples = [o for s in list(self.samplers) if (o := s.outbox()) is not None]
            if not samples:
                return []
            return [Observation(combine(getattr(o, field) for o in samples))]

        return observe


def _sent_attributes(key: SentKey) -> dict[str, str]:
    system, name, queue, path, outcome, error_type = key
    found = {
        "messaging.system": system,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": queue,
        "aceleryctl.task.name": name,
        "aceleryctl.path": path,
        "aceleryctl.outcome": outcome,
    }
    if error_type is not None:
        found["error.type"] = error_type
    return found


def _timed_attributes(key: SentKey) -> dict[str, str]:
    """The duration histogram's attributes: the counter's but ``aceleryctl.outcome``
    (``error.type`` marks a failed operation, as the conventions do; every
    attribute costs the SDK about a microsecond per record, and a histogram series
    a set of buckets in the backend)."""
    found = _sent_attributes(key)
    del found["aceleryctl.outcome"]
    return found


def _one(read: Any) -> Any:
    return lambda options: [Observation(read())]


def _observe_closes(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(count, {"aceleryctl.websocket.close_code": code})
        for code, count in dict(live_counters.closes).items()
    ]


def _observe_dropped(options: CallbackOptions) -> Iterable[Observation]:
    totals = emitter_totals()
    return [
        Observation(totals[reason], {"aceleryctl.events.reason": reason}) for reason in DROP_REASONS
    ]


_made: dict[int, tuple[Any, Instruments]] = {}
_made_lock = threading.Lock()


def instruments_for(meter_provider: MeterProvider | None) -> Instruments:
    """The instruments of ``meter_provider`` (``None``: the global one), made once."""
    provider: Any = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _made_lock:
        found = _made.get(id(provider))
        if found is None or found[0] is not provider:
            found = (provider, Instruments(meter_provider))
            _made[id(provider)] = found
        return found[1]
