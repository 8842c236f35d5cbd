"""Prometheus metrics of the dispatch path (``pip install prometheus-client``).

:class:`PrometheusMetrics` is a dispatch listener: counters are counted as
dispatches settle (a dictionary lookup and an increment per dispatch, on the
settling thread), the publish duration histogram once per publish operation
(:mod:`.operations`); gauges are read at scrape time
from every controller instrumented in the process (:mod:`.gauges`). The metric
families are made once per registry, so instrumenting a rebuilt controller (the
default one, after a settings change) or several controllers is safe: counters
add up, gauges sum over the live controllers (``aceleryctl_breaker_state`` then
counts controllers per state).

Several server processes: with ``prometheus_client``'s multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the first import) counters and
histograms aggregate through its files; gauges are then ``livesum`` gauges
refreshed at most once a second as dispatches settle (and at once on pool and
breaker changes), and the outbox gauges are left out (a database read on a
dispatch's thread is not worth it: read them from the relay's process or
``manage.py aceleryctl_health``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aceleryctl.breaker import StateChange
from aceleryctl.dispatch.listener import DispatchEvent, PoolChange
from aceleryctl.metrics.catalogue import DURATION_BUCKETS, METRICS, MetricSpec, task_label
from aceleryctl.metrics.gauges import STATES, GaugeSampler, state_label
from aceleryctl.metrics.operations import RecentOperations

__all__ = ["PrometheusMetrics", "register_live"]

_SPECS: Final = {spec.key: spec for spec in METRICS}
#: Seconds between two gauge refreshes in multiprocess mode.
REFRESH_EVERY: Final = 1.0


def multiprocess_mode() -> bool:
    """Whether ``prometheus_client`` runs in its multiprocess mode."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class _Families:
    """The metric objects of one registry, and the samplers its gauges read."""

    def __init__(self, registry: CollectorRegistry, multiprocess: bool) -> None:
        def counter(key: str) -> Counter:
            spec = _SPECS[key]
            return Counter(spec.prometheus, spec.help, spec.labels, registry=registry)

        self.multiprocess = multiprocess
        self.dispatches = counter("dispatches")
        self.deadline = counter("deadline")
        self.on_commit = counter("on_commit")
        self.saturated = counter("saturated")
        self.transitions = counter("transitions")
        duration = _SPECS["duration"]
        self.duration = Histogram(
            duration.prometheus,
            duration.help,
            duration.labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.samplers: weakref.WeakSet[GaugeSampler] = weakref.WeakSet()
        self.gauges = {key: self._gauge(_SPECS[key], registry) for key in _GAUGES}
        if not multiprocess:
            self._read_at_scrape()
            register_live(registry)

    def _gauge(self, spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
        if self.multiprocess:
            return Gauge(
                spec.prometheus,
                spec.help,
                spec.labels,
                registry=registry,
                multiprocess_mode="livesum",
            )
        return Gauge(spec.prometheus, spec.help, spec.labels, registry=registry)

    def _read_at_scrape(self) -> None:
        gauges = self.gauges
        for key in ("threads", "running", "waiting"):
            gauges[key].set_function(functools.partial(self.pool_sum, key))
        for state in STATES:
            child = gauges["breaker_state"].labels(state=state)
            child.set_function(functools.partial(self.state_count, state))
        gauges["outbox_pending"].set_function(lambda: self.outbox_sum("pending"))
        gauges["outbox_dead"].set_function(lambda: self.outbox_sum("dead"))
        gauges["outbox_age"].set_function(lambda: self.outbox_sum("oldest_age", max))

    def pool_sum(self, field: str) -> int:
        return sum(int(getattr(s.statistics().pool, field)) for s in list(self.samplers))

    def state_count(self, state: str) -> int:
        return sum(state_label(s.statistics().breaker.state) == state for s in list(self.samplers))

    def outbox_sum(self, field: str, combine: Any = sum) -> float:
        values = [getattr(o, field) for s in list(self.samplers) if (o := s.outbox()) is not None]
        return float(combine(values)) if values else 0.0

    def refresh(self) -> None:
        """Set the multiprocess gauges from the samplers (pool and breaker only)."""
        gauges = self.gauges
        for key in ("threads", "running", "waiting"):
            gauges[key].set(self.pool_sum(key))
        for state in STATES:
            gauges["breaker_state"].labels(state=state).set(self.state_count(state))


class _LiveCollector(Collector):
    """The websocket and event-emitter figures, read at scrape time
    (:mod:`aceleryctl.metrics.live`; single-process mode only)."""

    def collect(self) -> Any:
        from aceleryctl.metrics.live import DROP_REASONS, emitter_totals, live_counters

        def spec(key: str) -> MetricSpec:
            return _SPECS[key]

        yield GaugeMetricFamily(
            spec("ws_open").prometheus, spec("ws_open").help, value=live_counters.open
        )
        yield CounterMetricFamily(
            spec("ws_accepted").prometheus,
            spec("ws_accepted").help,
            value=live_counters.accepted_total,
        )
        closes = CounterMetricFamily(
            spec("ws_closes").prometheus, spec("ws_closes").help, labels=["code"]
        )
        for code, count in sorted(dict(live_counters.closes).items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield GaugeMetricFamily(
            spec("ws_subscriptions").prometheus,
            spec("ws_subscriptions").help,
            value=live_counters.subscriptions(),
        )
        totals = emitter_totals()
        yield CounterMetricFamily(
            spec("events_sent").prometheus, spec("events_sent").help, value=totals["sent"]
        )
        dropped = CounterMetricFamily(
            spec("events_dropped").prometheus, spec("events_dropped").help, labels=["reason"]
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], totals[reason])
        yield dropped


_live_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_live_lock = threading.Lock()


def register_live(registry: CollectorRegistry | None = None) -> None:
    """Export the websocket and event-emitter figures (:mod:`aceleryctl.metrics.live`)
    from ``registry`` (default: the global one), read at each scrape; once per
    registry. For a process that dispatches nothing, such as a worker's pool process
    (:class:`PrometheusMetrics` registers them itself)."""
    target = registry if registry is not None else REGISTRY
    with _live_lock:
        if target in _live_registered:
            return
        _live_registered.add(target)
    target.register(_LiveCollector())


_GAUGES: Final = (
    "threads",
    "running",
    "waiting",
    "breaker_state",
    "outbox_pending",
    "outbox_dead",
    "outbox_age",
)
_families: dict[int, tuple[CollectorRegistry, _Families]] = {}
_families_lock = threading.Lock()


def _families_for(registry: CollectorRegistry) -> _Families:
    with _families_lock:
        found = _families.get(id(registry))
        if found is None or found[0] is not registry:
            found = (registry, _Families(registry, multiprocess_mode()))
            _families[id(registry)] = found
        return found[1]


class PrometheusMetrics:
    """Counts a controller's dispatches into Prometheus metrics (module docstring).

    Add it with ``controller.add_listener(PrometheusMetrics(sampler))``, or set
    ``ACELERYCTL["METRICS"] = ["prometheus"]`` for the default controller.

    Args:
        sampler: the controller's gauges (pool, breaker, outbox).
        registry: where the metrics are registered; default ``prometheus_client``'s
            global registry.
        clock: monotonic seconds (the multiprocess refresh's).
    """

    def __init__(
        self,
        sampler: GaugeSampler,
        *,
        registry: CollectorRegistry | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self._families = families = _families_for(registry if registry is not None else REGISTRY)
        families.samplers.add(sampler)
        self._sampler = sampler  # the WeakSet holds it only while this listener lives
        self._clock = clock
        self._next_refresh = 0.0
        self._counts: dict[tuple[str, str, str, str], Any] = {}
        self._durations: dict[tuple[str, str, str], Any] = {}
        self._operations = RecentOperations()
        if families.multiprocess:
            families.refresh()

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Count ``event`` (any thread; a few dictionary lookups and increments)."""
        families = self._families
        name, outcome, path = task_label(event), event.outcome.value, event.path or ""
        key = (name, event.queue or "", path, outcome)
        child = self._counts.get(key)
        if child is None:
            child = self._counts[key] = families.dispatches.labels(*key)
        child.inc()
        started, finished = event.started_at, event.finished_at
        timed = (name, path, outcome)
        if started is not None and self._operations.first(timed, started, finished):
            histogram = self._durations.get(timed)
            if histogram is None:
                histogram = self._durations[timed] = families.duration.labels(*timed)
            histogram.observe(max(finished - started, 0.0))
        if event.error_type == "DispatchTimeout":
            families.deadline.labels(name).inc()
        if event.on_commit:
            families.on_commit.labels(outcome).inc()
        if families.multiprocess and self._clock() >= self._next_refresh:
            self._next_refresh = self._clock() + REFRESH_EVERY
            families.refresh()

    def pool_changed(self, change: PoolChange) -> None:
        """Count a saturation; refresh the gauges in multiprocess mode."""
        if change is PoolChange.SATURATED:
            self._families.saturated.inc()
        if self._families.multiprocess:
            self._families.refresh()

    def breaker_changed(self, change: StateChange) -> None:
        """Count a breaker transition; refresh the gauges in multiprocess mode."""
        self._families.transitions.labels(state_label(change.old), state_label(change.new)).inc()
        if self._families.multiprocess:
            self._families.refresh()
