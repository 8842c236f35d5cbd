"""aceleryctl.tracing with the real OpenTelemetry SDK: what a stored dispatch keeps
of its caller's trace, and how an attempt makes it current again."""

from __future__ import annotations

from typing import Any

import pytest

from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.tracing import capture, run_within

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402


@pytest.fixture
def tracer() -> Any:
    return sdk_trace.TracerProvider().get_tracer("tests")


def current_ids() -> tuple[int, int]:
    context = trace.get_current_span().get_span_context()
    return context.trace_id, context.span_id


def test_nothing_is_captured_without_a_span() -> None:
    assert capture() is None


def test_the_captured_trace_is_current_again_later(tracer: Any) -> None:
    with tracer.start_as_current_span("request") as span:
        carrier = capture()
    assert carrier is not None
    assert set(carrier) >= {"traceparent"}
    assert current_ids()[0] == 0  # nothing current outside
    seen = run_within(carrier, current_ids)
    assert seen == (span.get_span_context().trace_id, span.get_span_context().span_id)
    assert current_ids()[0] == 0  # restored


def test_a_dispatch_keeps_its_trace_through_its_stored_form(tracer: Any) -> None:
    with tracer.start_as_current_span("request") as span:
        carrier = capture()
    dispatch = Dispatch(
        DispatchKind.TASK, "t", "id-1", (1,), {}, {"task_id": "id-1"}, 2.0, trace_context=carrier
    )
    content_type, encoding, payload = dispatch.dumps("json")
    loaded = Dispatch.loads(payload, content_type, encoding)
    assert loaded.trace_context == carrier
    attempt = Attempt(loaded, 10.0, 0.0)
    assert attempt.run(current_ids)[0] == span.get_span_context().trace_id
    plain = Attempt(Dispatch(DispatchKind.TASK, "t", "id-2", (), {}, {}, 2.0), 10.0, 0.0)
    assert plain.run(current_ids)[0] == 0
