"""Trace continuity with the real ``opentelemetry-instrumentation-celery``, both sides.

The test process is instrumented with an in-memory exporter, a real prefork worker
with an exporter writing to a file (``trace_app``). For each way of dispatching,
the producer span ``apply_async/<task>`` must be a child of the caller's span (the
request), and the worker's ``run/<task>`` span a child of that producer span, in
the same trace.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import chain

from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until
from tests._support.worker import CeleryWorker

from . import trace_app

pytest.importorskip("opentelemetry.instrumentation.celery")
from aceleryctl import AsyncCeleryController
from tests._support.otel import InMemorySpanExporter, celery_instrumented, producer_spans

REPO_ROOT = Path(__file__).resolve().parents[3]
WAIT = 30.0


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans") / "worker-spans.jsonl"


@pytest.fixture(scope="module")
def trace_worker(redis_server: RedisServer, spans_file: Path) -> Iterator[CeleryWorker]:
    trace_app.app.conf.broker_url = redis_server.url(0)
    env = {trace_app.BROKER_ENV: redis_server.url(0), trace_app.SPANS_ENV: str(spans_file)}
    worker = CeleryWorker.start(
        app="tests.integration.tracing.trace_app",
        name=f"tracing-{os.getpid()}",
        queues=[trace_app.QUEUE],
        env=env,
        cwd=REPO_ROOT,
    )
    with worker.scoped():
        yield worker


@pytest.fixture
def exporter(trace_worker: CeleryWorker) -> Iterator[tuple[InMemorySpanExporter, Any]]:
    with celery_instrumented() as traced:
        yield traced


@pytest.fixture
def sync_ctl() -> Iterator[AsyncCeleryController]:
    """A controller on the tracing app for a test that uses its sync facade."""
    ctl = AsyncCeleryController(trace_app.app, dispatch_timeout=5.0)
    try:
        yield ctl
    finally:
        ctl.sync.close(10)


def worker_spans(path: Path) -> list[dict[str, Any]]:
    """The spans the worker has finished writing: a read can overlap a worker's write
    and end inside a line, so only newline-terminated lines count."""
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def run_span(path: Path, task_id: str) -> dict[str, Any]:
    """The worker's ``run/...`` span of ``task_id``, waited for (bounded)."""

    def found() -> dict[str, Any] | None:
        for span in worker_spans(path):
            attributes = span["attributes"]
            if span["name"].startswith("run/") and task_id in attributes.values():
                return span
        return None

    wait_until(lambda: found() is not None, timeout=WAIT, message=f"run span of {task_id}")
    span = found()
    assert span is not None
    return span


def producer_span(exporter: InMemorySpanExporter, task_id: str) -> Any:
    """The ``apply_async/...`` span of ``task_id``, waited for (an on-commit publish
    ends on a publishing thread after the call returned)."""

    def found() -> list[Any]:
        return producer_spans(exporter, task_id)

    wait_until(lambda: found() or None, timeout=WAIT, message=f"producer span of {task_id}")
    [span] = found()
    return span


def assert_continuous(
    exporter: InMemorySpanExporter, spans_file: Path, request: Any, task_id: str
) -> None:
    producer = producer_span(exporter, task_id)
    assert producer.parent is not None
    assert producer.parent.span_id == request.context.span_id, "producer not under the request"
    assert producer.context.trace_id == request.context.trace_id
    run = run_span(spans_file, task_id)
    assert run["trace_id"] == format(request.context.trace_id, "032x")
    assert run["parent_span_id"] == format(producer.context.span_id, "016x")


@pytest.mark.parametrize("direct", [True, False], ids=["direct path", "stock path"])
async def test_a_dispatch_continues_the_callers_trace(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path, direct: bool
) -> None:
    memory, tracer = exporter
    async with AsyncCeleryController(
        trace_app.app, direct_publish=direct, dispatch_timeout=5.0
    ) as ctl:
        with tracer.start_as_current_span("request") as request:
            result = await ctl.delay(trace_app.add, 1, 2)
        assert_continuous(memory, spans_file, request, result.id)
        path = producer_span(memory, result.id).attributes
        assert path.get("celery.action") == "apply_async"


async def test_concurrent_calls_batched_together_keep_their_own_traces(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path
) -> None:
    memory, tracer = exporter

    async def one(ctl: AsyncCeleryController, i: int) -> tuple[Any, str]:
        with tracer.start_as_current_span(f"request-{i}") as request:
            result = await ctl.delay(trace_app.add, i, i)
        return request, result.id

    async with AsyncCeleryController(trace_app.app, dispatch_timeout=5.0) as ctl:
        calls = await asyncio.gather(*(one(ctl, i) for i in range(20)))
        stats = ctl.statistics()
        assert stats.dispatched == 20
        for request, task_id in calls:
            assert_continuous(memory, spans_file, request, task_id)


async def test_a_chain_stays_in_one_trace(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path
) -> None:
    memory, tracer = exporter
    async with AsyncCeleryController(trace_app.app, dispatch_timeout=5.0) as ctl:
        with tracer.start_as_current_span("request") as request:
            last = await ctl.delay(chain(trace_app.add.s(2, 3), trace_app.double.s()))
        first_id = last.parent.id
        assert_continuous(memory, spans_file, request, first_id)
        second = run_span(spans_file, last.id)  # published by the worker, same trace
        assert second["trace_id"] == format(request.context.trace_id, "032x")


def test_the_sync_facade_continues_the_callers_trace(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path, sync_ctl: AsyncCeleryController
) -> None:
    memory, tracer = exporter
    with tracer.start_as_current_span("request") as request:
        result = sync_ctl.sync.delay(trace_app.add, 4, 5)
    assert_continuous(memory, spans_file, request, result.id)


@pytest.mark.django_db(transaction=True)
def test_an_on_commit_dispatch_continues_the_committing_callers_trace(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path, sync_ctl: AsyncCeleryController
) -> None:
    from django.db import transaction

    memory, tracer = exporter
    with tracer.start_as_current_span("request") as request, transaction.atomic():
        result = sync_ctl.sync.delay_on_commit(trace_app.add, 6, 7)
    assert_continuous(memory, spans_file, request, result.id)


@pytest.mark.django_db(transaction=True)
def test_a_dispatch_stored_in_the_outbox_is_relayed_inside_the_callers_trace(
    exporter: tuple[InMemorySpanExporter, Any], spans_file: Path
) -> None:
    """Stored while the broker is away, published later by a relay on another
    controller, yet the producer and the worker's spans join the caller's trace."""
    from datetime import timedelta

    from celery import Celery
    from django.test import override_settings
    from django.utils import timezone

    from aceleryctl.outbox.relay import Relay

    memory, tracer = exporter
    away = Celery("tracing-away", broker="redis://127.0.0.1:1/0", set_as_current=False)
    away.conf.broker_transport_options = {"socket_timeout": 1, "socket_connect_timeout": 1}
    stored_add = away.task(name="tracing.add", shared=False)(trace_app.add.run)
    outbox = {"LOG_FILE": None, "OUTBOX": {"ENABLED": True, "RELAY": "command"}}
    with override_settings(ACELERYCTL=outbox):  # the setting's change resets its cache
        caller = AsyncCeleryController(away, dispatch_timeout=2.0)
        relaying = AsyncCeleryController(trace_app.app, dispatch_timeout=5.0)
        try:
            with tracer.start_as_current_span("request") as request:
                result = caller.sync.apply_async(stored_add, (8, 9), durable=True)
            assert result.deferred
            # The stored row waits out a retry back-off: a relay an hour ahead claims it now.
            later = timezone.now() + timedelta(hours=1)
            round_ = Relay(relaying, now=lambda: later).run_once()
            assert round_.published == 1
            assert_continuous(memory, spans_file, request, result.id)
        finally:
            caller.sync.close(10)
            relaying.sync.close(10)
