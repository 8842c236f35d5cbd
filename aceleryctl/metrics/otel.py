"""OpenTelemetry metrics of the dispatch path (``pip install opentelemetry-api``; an
SDK and an exporter make them go somewhere).

:class:`OpenTelemetryMetrics` is a dispatch listener over the OpenTelemetry
metrics API. Instruments follow the messaging semantic conventions where they
apply: ``messaging.client.sent.messages`` (every settled dispatch, with
``error.type`` when it failed) and ``messaging.client.operation.duration`` in
seconds, with ``messaging.system``, ``messaging.operation.name`` (``send``),
``messaging.operation.type`` (``send``) and ``messaging.destination.name`` (the
queue); aceleryctl's own facts are ``aceleryctl.*`` attributes and instruments
(:mod:`.catalogue`). The instruments are made once per meter provider
(:mod:`.otel_instruments`).

The per-dispatch counts are kept in local tables and reported through
observable counters when the reader collects: an SDK ``Counter.add`` costs
several microseconds (it cleans and hashes the attributes on every call), a
table increment a fraction of one. The duration histogram has no observable
form; it is recorded once per publish operation, as the messaging conventions
define the metric: the dispatches the controller pipelines to the broker in one
write (one confirm round on RabbitMQ) are one ``send`` operation, one record
(:mod:`.operations`). Prometheus's ``aceleryctl_publish_duration_seconds`` is
observed the same way.
"""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider

from aceleryctl.breaker import StateChange
from aceleryctl.dispatch.listener import DispatchEvent, PoolChange
from aceleryctl.metrics.catalogue import task_label
from aceleryctl.metrics.gauges import GaugeSampler, state_label
from aceleryctl.metrics.otel_instruments import instruments_for

__all__ = ["OpenTelemetryMetrics"]


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
        self._instruments = instruments = instruments_for(meter_provider)
        instruments.samplers.add(sampler)
        self._sampler = sampler  # the instruments hold it only while this listener lives
        self._system = system

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Count ``event`` (any thread)."""
        instruments = self._instruments
        name, outcome = task_label(event), event.outcome.value
        key = (self._system, name, event.queue or "", event.path or "", outcome, event.error_type)
        started, finished = event.started_at, event.finished_at
        if started is None:
            instruments.settle(key, None)
        elif (attributes := instruments.settle(key, (started, finished))) is not None:
            instruments.duration.record(max(finished - started, 0.0), attributes)
        if event.error_type == "DispatchTimeout":
            instruments.deadline.add(name)
        if event.on_commit:
            instruments.on_commit.add(outcome)

    def pool_changed(self, change: PoolChange) -> None:
        """Count a saturation."""
        if change is PoolChange.SATURATED:
            self._instruments.saturated.add(1)

    def breaker_changed(self, change: StateChange) -> None:
        """Count a breaker transition."""
        self._instruments.transitions.add(
            1,
            {
                "aceleryctl.breaker.from_state": state_label(change.old),
                "aceleryctl.breaker.to_state": state_label(change.new),
            },
        )
