"""Carrying a caller's trace across the outbox, with OpenTelemetry when installed.

A dispatch published now runs Celery's publish signals in its caller's context,
so tracing instrumentation sees the caller's span. A dispatch stored in the
outbox is published later by a relay, where that span is long gone: its W3C
trace context (``traceparent``, ``tracestate``) is stored with it
(:func:`capture`, when the dispatch is written) and made current again while the
relay publishes it (:func:`run_within`), so the producer span and the worker's
run span stay in the caller's trace. Without ``opentelemetry-api`` installed, or
without a valid span, nothing is captured and nothing is imported.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["capture", "run_within"]

T = TypeVar("T")


@functools.cache
def _installed() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def capture() -> dict[str, str] | None:
    """The calling context's trace as W3C headers, or ``None`` (no OpenTelemetry,
    or no valid span current). Runs on the calling thread; a few microseconds."""
    if not _installed():
        return None
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def run_within(carrier: Mapping[str, str], fn: Callable[..., T], /, *args: Any) -> T:
    """Call ``fn(*args)`` with the trace of ``carrier`` current (as its parent), then
    restore the thread's own context. Without OpenTelemetry, just calls ``fn``."""
    if not _installed():
        return fn(*args)
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(dict(carrier)))
    try:
        return fn(*args)
    finally:
        context.detach(token)
