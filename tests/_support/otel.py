"""The real ``opentelemetry-instrumentation-celery`` in this process, its spans in memory.

Imports OpenTelemetry at once: a test module calls
``pytest.importorskip("opentelemetry.instrumentation.celery")`` before importing this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["InMemorySpanExporter", "celery_instrumented", "producer_spans"]


@contextlib.contextmanager
def celery_instrumented() -> Iterator[tuple[InMemorySpanExporter, Any]]:
    """Celery instrumented for the block: the exporter that keeps every finished span,
    and a tracer of the same provider (for the caller's own spans)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter, provider.get_tracer("tests")
    finally:
        instrumentor.uninstrument()


def producer_spans(exporter: InMemorySpanExporter, task_id: str) -> list[Any]:
    """The finished ``apply_async/...`` spans that published ``task_id``."""
    return [
        s
        for s in exporter.get_finished_spans()
        if s.name.startswith("apply_async/")
        and (s.attributes or {}).get("messaging.message.id") == task_id
    ]
