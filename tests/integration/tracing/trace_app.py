"""The Celery app of the tracing tests, as the worker imports it.

In the worker (``ACELERYCTL_TEST_SPANS`` names a file), each pool process sets up an
OpenTelemetry tracer provider whose exporter appends every finished span to that
file as one JSON line, and instruments Celery with the real
``opentelemetry-instrumentation-celery``; the test reads the file. The test process
instruments itself with an in-memory exporter (see ``test_traces.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

SPANS_ENV = "ACELERYCTL_TEST_SPANS"
BROKER_ENV = "ACELERYCTL_TEST_BROKER_URL"
QUEUE = "tracing"

app = Celery("aceleryctl_tracing", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"),
    task_default_queue=QUEUE,
    task_serializer="json",
    broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
)


@app.task(name="tracing.add", shared=False)
def add(a: int, b: int) -> int:
    """A traced task."""
    return a + b


@app.task(name="tracing.double", shared=False)
def double(value: int) -> int:
    """The second step of a traced chain."""
    return 2 * value


def span_record(span: Any) -> dict[str, Any]:
    """What the tests compare of a finished span."""
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_span_id": None if parent is None else format(parent.span_id, "016x"),
        "attributes": {k: v for k, v in (span.attributes or {}).items() if isinstance(v, str)},
    }


class _FileExporter:
    """Appends finished spans to a file, one JSON line each (any process may write)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(span_record(span)) + "\n" for span in spans).encode()
        # One append-mode write(2) per batch: lines of two pool processes never interleave.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@worker_process_init.connect
def _instrument_pool_process(**_: Any) -> None:
    path = os.environ.get(SPANS_ENV)
    if not path:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_FileExporter(path)))  # type: ignore[arg-type]
    CeleryInstrumentor().instrument(tracer_provider=provider)
