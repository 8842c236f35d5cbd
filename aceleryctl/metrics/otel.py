"""OpenTelemetry metrics of the dispatch path (``pip install opentelemetry-api``; an
SDK and an exporter make them go somewhere).

:class:`OpenTelemetryMetrics` is a dispatch listener over the OpenTelemetry
metrics API. Instruments follow the messaging semantic conventions where they
apply: ``messaging.client.sent.messages`` (every settled dispatch, with
``error.type`` when it failed) and ``messaging.client.operation.duration`` in
seconds, with ``messaging.system``, ``messaging.operation.name`` (``send``),
``messaging.operation.type`` (``send``) and ``messaging.destination.name`` (the
queue); aceleryctl's own facts are ``aceleryctl.*`` attributes and instruments
(:mod:`.catalogue`). Gauges are observable instruments read in the SDK reader's
thread (:mod:`.gauges`).

The per-dispatch count is kept in a local table and reported through an
observable counter when the reader collects: an SDK ``Counter.add`` costs
several microseconds (it hashes the attributes on every call), a table
increment a fraction of one. The duration histogram has no such form in the
API and is recorded per dispatch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from aceleryctl.breaker import StateChange
from aceleryctl.dispatch.listener import DispatchEvent, PoolChange
from aceleryctl.metrics.catalogue import DURATION_BUCKETS, METRICS, task_label
from aceleryctl.metrics.gauges import STATES, GaugeSampler, state_label

__all__ = ["OpenTelemetryMetrics"]

_SPECS: Final = {spec.key: spec for spec in METRICS}


class OpenTelemetryMetrics:
    """Counts a controller's dispatches into OpenTelemetry instruments (module docstring).

    Args:
        sampler: the controller's gauges (pool, breaker, outbox).
        system: ``messaging.system`` (:func:`aceleryctl.metrics.gauges.broker_system`).
        meter_provider: default: the global one (``opentelemetry.metrics``).
    """

    def __init__(
        self,
        sampler: GaugeSampler,
        *,
        system: str = "redis",
        meter_provider: MeterProvider | None = None,
    ) -> None:
        from aceleryctl import __version__

        meter = metrics.get_meter("aceleryctl", __version__, meter_provider=meter_provider)

        def counter(key: str) -> Any:
            spec = _SPECS[key]
            return meter.create_counter(spec.otel, unit=spec.unit, description=spec.help)

        def gauge(key: str, callback: Any) -> None:
            spec = _SPECS[key]
            meter.create_observable_gauge(
                spec.otel, callbacks=[callback], unit=spec.unit, description=spec.help
            )

        self._sampler = sampler
        self._system = system
        self._lock = threading.Lock()
        self._sent: dict[tuple[str, str, str, str, str | None], int] = {}
        sent = _SPECS["dispatches"]
        meter.create_observable_counter(
            sent.otel, callbacks=[self._observe_sent], unit=sent.unit, description=sent.help
        )
        self._deadline = counter("deadline")
        self._on_commit = counter("on_commit")
        self._saturated = counter("saturated")
        self._transitions = counter("transitions")
        duration = _SPECS["duration"]
        self._duration = meter.create_histogram(
            duration.otel,
            unit=duration.unit,
            description=duration.help,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._attributes: dict[tuple[str, str, str, str, str | None], dict[str, str]] = {}
        for key in ("threads", "running", "waiting"):
            gauge(key, self._pool_reader(key))
        gauge("breaker_state", self._observe_state)
        gauge("outbox_pending", self._outbox_reader("pending"))
        gauge("outbox_dead", self._outbox_reader("dead"))
        gauge("outbox_age", self._outbox_reader("oldest_age"))

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Count ``event`` (any thread)."""
        name, outcome, path = task_label(event), event.outcome.value, event.path or ""
        key = (name, event.queue or "", path, outcome, event.error_type)
        with self._lock:
            self._sent[key] = self._sent.get(key, 0) + 1
        duration = event.duration
        if duration is not None:
            self._duration.record(duration, self._attributes_for(key))
        if event.error_type == "DispatchTimeout":
            self._deadline.add(1, {"aceleryctl.task.name": name})
        if event.on_commit:
            self._on_commit.add(1, {"aceleryctl.outcome": outcome})

    def pool_changed(self, change: PoolChange) -> None:
        """Count a saturation."""
        if change is PoolChange.SATURATED:
            self._saturated.add(1)

    def breaker_changed(self, change: StateChange) -> None:
        """Count a breaker transition."""
        self._transitions.add(
            1,
            {
                "aceleryctl.breaker.from_state": state_label(change.old),
                "aceleryctl.breaker.to_state": state_label(change.new),
            },
        )

    def _attributes_for(self, key: tuple[str, str, str, str, str | None]) -> dict[str, str]:
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = self._attributes_of(*key)
        return attributes

    def _observe_sent(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = list(self._sent.items())
        return [Observation(count, self._attributes_for(key)) for key, count in totals]

    def _attributes_of(
        self, name: str, queue: str, path: str, outcome: str, error_type: str | None
    ) -> dict[str, str]:
        attributes = {
            "messaging.system": self._system,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "aceleryctl.task.name": name,
            "aceleryctl.path": path,
            "aceleryctl.outcome": outcome,
        }
        if error_type is not None:
            attributes["error.type"] = error_type
        return attributes

    def _pool_reader(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(getattr(self._sampler.statistics().pool, field)))]

        return observe

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        current = state_label(self._sampler.statistics().breaker.state)
        return [
            Observation(int(state == current), {"aceleryctl.breaker.state": state})
            for state in STATES
        ]

    def _outbox_reader(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            sample = self._sampler.outbox()
            return [] if sample is None else [Observation(getattr(sample, field))]

        return observe
