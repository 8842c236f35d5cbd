"""The Django Tasks backend keeps the caller's trace: ``aenqueue`` inside a request's
span publishes under it, with the real ``opentelemetry-instrumentation-celery``.

The producer span ``apply_async/<runner>`` is a child of the request's span; its
context goes into the message's headers, from which the worker's instrumentation
continues the trace (``tests/integration/tracing`` proves that worker side for the
controller, through which the backend publishes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests._support.waiting import wait_until

from . import functions

pytest.importorskip("opentelemetry.instrumentation.celery")
from tests._support.otel import InMemorySpanExporter, celery_instrumented, producer_spans

pytestmark = pytest.mark.usefixtures("tasks_controller")


@pytest.fixture
def traced() -> Iterator[tuple[InMemorySpanExporter, Any]]:
    with celery_instrumented() as instrumented:
        yield instrumented


@pytest.mark.parametrize("call", ["aenqueue", "enqueue"])
async def test_a_backend_enqueue_is_a_child_of_the_callers_span(
    traced: tuple[InMemorySpanExporter, Any], call: str
) -> None:
    import asyncio

    exporter, tracer = traced
    with tracer.start_as_current_span("request") as request:
        if call == "aenqueue":
            result = await functions.add.aenqueue(2, 3)
        else:
            result = await asyncio.to_thread(functions.add.enqueue, 2, 3)

    def producer() -> Any:
        return next(iter(producer_spans(exporter, result.id)), None)

    span = wait_until(producer, timeout=30.0, message="the producer span")
    assert span.parent is not None
    assert span.parent.span_id == request.context.span_id
    assert span.context.trace_id == request.context.trace_id
