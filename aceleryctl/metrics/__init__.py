"""Metrics of the dispatch path for Prometheus and OpenTelemetry (optional extras).

:mod:`.catalogue` names every metric once (both exporters and the docs read it);
:mod:`.prometheus` and :mod:`.otel` are dispatch listeners that count into
``prometheus_client`` and the OpenTelemetry metrics API; :mod:`.gauges` reads the
values sampled rather than counted (pool, breaker, outbox). Switch them on with
``ACELERYCTL["METRICS"]`` or add a listener to a controller yourself.
"""
