"""Instrumenting a controller: the listeners ``ACELERYCTL["METRICS"]`` names.

``"prometheus"`` adds :class:`~aceleryctl.metrics.prometheus.PrometheusMetrics`
(``prometheus_client``'s global registry), ``"opentelemetry"`` adds
:class:`~aceleryctl.metrics.otel.OpenTelemetryMetrics` (the global meter
provider). Each needs its library: a missing one raises ``ImportError`` saying
what to install.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aceleryctl.metrics.gauges import GaugeSampler, broker_system, read_outbox

__all__ = ["EXPORTERS", "instrument", "sampler_for"]

#: The names ``ACELERYCTL["METRICS"]`` accepts, and the package each needs.
EXPORTERS: Final = {"prometheus": "prometheus-client", "opentelemetry": "opentelemetry-api"}


def sampler_for(controller: Any) -> GaugeSampler:
    """The gauges of ``controller``: its statistics, and the outbox's depth when the
    outbox is on (read from its database, cached)."""
    outbox = None
    try:
        from aceleryctl.outbox.config import outbox_settings

        if outbox_settings().enabled:
            outbox = read_outbox
    except Exception:  # Django not configured: no outbox
        outbox = None
    return GaugeSampler(controller.statistics, outbox)


def instrument(controller: Any, exporters: Iterable[str]) -> list[Any]:
    """Add one metrics listener per name in ``exporters`` to ``controller``; return them.

    Raises:
        ValueError: a name is not one of :data:`EXPORTERS`.
        ImportError: the exporter's library is not installed.
    """
    names = list(exporters)
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(
                f"unknown metrics exporter {name!r}; use {' or '.join(map(repr, EXPORTERS))}"
            )
    sampler = sampler_for(controller) if names else None
    added: list[Any] = []
    for name in names:
        assert sampler is not None
        try:
            listener = _make(name, sampler, controller)
        except ImportError as exc:
            raise ImportError(
                f"ACELERYCTL['METRICS'] names {name!r}, which needs {EXPORTERS[name]}: "
                f"pip install 'aceleryctl[{name}]' ({exc})"
            ) from exc
        controller.add_listener(listener)
        added.append(listener)
    return added


def _make(name: str, sampler: GaugeSampler, controller: Any) -> Any:
    if name == "prometheus":
        from aceleryctl.metrics.prometheus import PrometheusMetrics

        return PrometheusMetrics(sampler)
    from aceleryctl.metrics.otel import OpenTelemetryMetrics

    return OpenTelemetryMetrics(sampler, system=broker_system(controller.app.conf.broker_url))
