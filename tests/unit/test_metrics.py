"""Metrics through the real client libraries: prometheus_client's registry and
exposition, OpenTelemetry's SDK with an in-memory reader, fed by a real controller
(kombu's memory transport) and by hand-made events for the rarer outcomes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController, CircuitBreaker
from aceleryctl.breaker import BreakerState, StateChange
from aceleryctl.dispatch.listener import DispatchEvent, DispatchOutcome, PoolChange
from aceleryctl.metrics.catalogue import METRICS, task_label
from aceleryctl.metrics.gauges import GaugeSampler, OutboxSample, broker_system
from aceleryctl.metrics.install import instrument
from aceleryctl.metrics.operations import RecentOperations

prometheus_client = pytest.importorskip("prometheus_client")
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from aceleryctl.metrics.otel import OpenTelemetryMetrics  # noqa: E402
from aceleryctl.metrics.prometheus import PrometheusMetrics  # noqa: E402

WAIT = 10.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app() -> Celery:
    app = Celery("metrics", broker="memory://", set_as_current=False)

    @app.task(name="metrics.add", shared=False)
    def add(a: int, b: int) -> int:
        return a + b

    return app


@pytest.fixture
def ctl(app: Celery) -> Iterator[AsyncCeleryController]:
    controller = AsyncCeleryController(app, breaker=CircuitBreaker(failure_threshold=1))
    yield controller
    controller.sync.close(WAIT)


def event(**overrides: Any) -> DispatchEvent:
    fields: dict[str, Any] = {
        "task_name": "metrics.add",
        "task_id": "id-1",
        "method": "delay",
        "kind": "task",
        "queue": "celery",
        "path": "redis",
        "outcome": DispatchOutcome.SENT,
        "error_type": None,
        "correlation_id": None,
        "queued_at": 1.0,
        "started_at": 1.001,
        "finished_at": 1.004,
    }
    fields.update(overrides)
    return DispatchEvent(**fields)


def test_the_catalogue_names_each_metric_once() -> None:
    for attribute in ("key", "prometheus", "otel"):
        names = [getattr(spec, attribute) for spec in METRICS]
        assert len(names) == len(set(names)), attribute
    assert task_label(event(kind="canvas", task_name="group((add(1, 1),))")) == "<canvas>"
    assert task_label(event(kind="callable", task_name="proj.send")) == "<callable>"
    assert task_label(event(kind="signature")) == "metrics.add"
    assert broker_system("amqp://guest@h//") == "rabbitmq"
    assert broker_system("rediss://h") == "redis"
    assert broker_system("") == "unknown"


def test_prometheus_counts_a_real_controllers_dispatches(ctl: AsyncCeleryController) -> None:
    registry = prometheus_client.CollectorRegistry()
    ctl.add_listener(PrometheusMetrics(GaugeSampler(ctl.statistics), registry=registry))
    for i in range(3):
        ctl.sync.delay(ctl.app.tasks["metrics.add"], i, i)
    # The stock path does not report the queue Celery's router picks: no queue label value.
    labels = {"name": "metrics.add", "queue_name": "", "path": "stock", "outcome": "sent"}
    assert registry.get_sample_value("aceleryctl_dispatches_total", labels) == 3.0
    timed = {"name": "metrics.add", "path": "stock", "outcome": "sent"}
    assert registry.get_sample_value("aceleryctl_publish_duration_seconds_count", timed) == 3.0
    # Gauges are read at scrape time from the controller itself.
    assert registry.get_sample_value("aceleryctl_pool_threads") == 1.0
    assert registry.get_sample_value("aceleryctl_pool_running") == 0.0
    assert registry.get_sample_value("aceleryctl_breaker_state", {"state": "closed"}) == 1.0
    assert registry.get_sample_value("aceleryctl_breaker_state", {"state": "open"}) == 0.0
    ctl.breaker.force_open()
    assert registry.get_sample_value("aceleryctl_breaker_state", {"state": "open"}) == 1.0
    transition = {"from_state": "closed", "to_state": "open"}
    assert registry.get_sample_value("aceleryctl_breaker_transitions_total", transition) == 1.0
    text = prometheus_client.generate_latest(registry).decode()
    assert "# HELP aceleryctl_dispatches_total Dispatches settled" in text


def test_prometheus_counts_the_rarer_outcomes() -> None:
    registry = prometheus_client.CollectorRegistry()
    outbox = OutboxSample(pending=4, dead=1, oldest_age=12.5)
    sampler = GaugeSampler(_stats_of_a_fresh_controller, lambda: outbox)
    metrics = PrometheusMetrics(sampler, registry=registry)
    metrics.dispatch_settled(
        event(outcome=DispatchOutcome.UNKNOWN, error_type="DispatchTimeout", on_commit=True)
    )
    metrics.dispatch_settled(event(outcome=DispatchOutcome.STORED, started_at=None, path=None))
    metrics.pool_changed(PoolChange.SATURATED)
    get = registry.get_sample_value
    assert get("aceleryctl_dispatch_deadline_exceeded_total", {"name": "metrics.add"}) == 1.0
    assert get("aceleryctl_on_commit_dispatches_total", {"outcome": "unknown"}) == 1.0
    stored = {"name": "metrics.add", "queue_name": "celery", "path": "", "outcome": "stored"}
    assert get("aceleryctl_dispatches_total", stored) == 1.0
    assert get("aceleryctl_publish_duration_seconds_count", {**_timed("stored")}) is None
    assert get("aceleryctl_pool_saturated_total") == 1.0
    assert get("aceleryctl_outbox_pending") == 4.0
    assert get("aceleryctl_outbox_dead_lettered") == 1.0
    assert get("aceleryctl_outbox_oldest_pending_age_seconds") == 12.5


def _timed(outcome: str) -> dict[str, str]:
    return {"name": "metrics.add", "path": "", "outcome": outcome}


def _stats_of_a_fresh_controller() -> Any:
    controller = AsyncCeleryController(Celery("fresh", broker="memory://", set_as_current=False))
    try:
        return controller.statistics()
    finally:
        controller.sync.close(WAIT)


def test_a_rebuilt_controller_reuses_the_registrys_metrics(app: Celery) -> None:
    registry = prometheus_client.CollectorRegistry()
    first = AsyncCeleryController(app)
    second = AsyncCeleryController(app)
    try:
        for controller in (first, second):
            sampler = GaugeSampler(controller.statistics)
            controller.add_listener(PrometheusMetrics(sampler, registry=registry))
            controller.sync.delay(app.tasks["metrics.add"], 1, 1)
        labels = {"name": "metrics.add", "queue_name": "", "path": "stock", "outcome": "sent"}
        assert registry.get_sample_value("aceleryctl_dispatches_total", labels) == 2.0
        assert registry.get_sample_value("aceleryctl_pool_threads") == 2.0  # summed
    finally:
        first.sync.close(WAIT)
        second.sync.close(WAIT)


def test_opentelemetry_records_messaging_metrics(ctl: AsyncCeleryController) -> None:
    reader = InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    sampler = GaugeSampler(ctl.statistics)
    listener = OpenTelemetryMetrics(sampler, system="redis", meter_provider=provider)
    ctl.add_listener(listener)
    ctl.sync.apply_async(ctl.app.tasks["metrics.add"], (1, 2), queue="celery")
    listener.dispatch_settled(
        event(outcome=DispatchOutcome.NOT_SENT, error_type="BrokerError", started_at=None)
    )
    listener.breaker_changed(StateChange("b", BreakerState.CLOSED, BreakerState.OPEN, "x", 1.0))
    points = _points(reader)
    sent = points["messaging.client.sent.messages"]
    ok = next(p for p in sent if "error.type" not in p.attributes)
    assert ok.value == 1
    assert ok.attributes["messaging.system"] == "redis"
    assert ok.attributes["messaging.destination.name"] == "celery"
    assert ok.attributes["messaging.operation.type"] == "send"
    assert ok.attributes["aceleryctl.task.name"] == "metrics.add"
    failed = next(p for p in sent if p.attributes.get("error.type") == "BrokerError")
    assert failed.attributes["aceleryctl.outcome"] == "not_sent"
    [duration] = points["messaging.client.operation.duration"]
    assert duration.count == 1
    assert 0.0 < duration.sum < WAIT
    assert [p.value for p in points["aceleryctl.pool.threads"]] == [1]
    states = {
        p.attributes["aceleryctl.breaker.state"]: p.value
        for p in points["aceleryctl.breaker.state"]
    }
    assert states == {"closed": 1, "open": 0, "half_open": 0}
    [moved] = points["aceleryctl.breaker.transitions"]
    assert dict(moved.attributes) == {
        "aceleryctl.breaker.from_state": "closed",
        "aceleryctl.breaker.to_state": "open",
    }
    assert "aceleryctl.outbox.pending" not in points  # no outbox: nothing observed


def test_prometheus_times_each_publish_operation_once() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(GaugeSampler(_stats_of_a_fresh_controller), registry=registry)
    for task_id in ("a", "b", "c"):  # one batch: the same publish readings
        metrics.dispatch_settled(event(task_id=task_id))
    metrics.dispatch_settled(event(task_id="d", started_at=2.0, finished_at=2.5))
    get = registry.get_sample_value
    sent = {"name": "metrics.add", "queue_name": "celery", "path": "redis", "outcome": "sent"}
    assert get("aceleryctl_dispatches_total", sent) == 4.0
    timed = {"name": "metrics.add", "path": "redis", "outcome": "sent"}
    assert get("aceleryctl_publish_duration_seconds_count", timed) == 2.0
    assert get("aceleryctl_publish_duration_seconds_sum", timed) == pytest.approx(0.503)


def test_recent_operations_remember_a_bounded_number() -> None:
    recent = RecentOperations(size=2)
    assert recent.first("x", 1.0, 2.0)
    assert not recent.first("x", 1.0, 2.0)
    assert recent.first("y", 1.0, 2.0)  # other labels: observed again
    assert recent.first("x", 3.0, 4.0)  # evicts the oldest, ("x", 1.0, 2.0)
    assert recent.first("x", 1.0, 2.0)
    with pytest.raises(ValueError, match="at least 1"):
        RecentOperations(size=0)


def test_opentelemetry_times_each_publish_operation_once() -> None:
    """A pipelined batch is one send operation: its dispatches are each counted,
    its duration recorded once; another operation, or the same seconds under
    other attributes, records again. Deadlines and on-commit outcomes are counted."""
    reader = InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    listener = OpenTelemetryMetrics(
        GaugeSampler(_stats_of_a_fresh_controller), meter_provider=provider
    )
    for task_id in ("a", "b", "c"):  # one batch: the same publish readings
        listener.dispatch_settled(event(task_id=task_id))
    listener.dispatch_settled(event(task_id="d", started_at=2.0, finished_at=2.5))
    listener.dispatch_settled(event(task_id="e", queue="other"))  # the batch, another queue
    listener.dispatch_settled(
        event(
            task_id="f",
            outcome=DispatchOutcome.UNKNOWN,
            error_type="DispatchTimeout",
            on_commit=True,
            started_at=3.0,
            finished_at=5.0,
        )
    )
    points = _points(reader)
    counted = {
        (p.attributes["messaging.destination.name"], p.attributes["aceleryctl.outcome"]): p.value
        for p in points["messaging.client.sent.messages"]
    }
    assert counted == {("celery", "sent"): 4, ("other", "sent"): 1, ("celery", "unknown"): 1}
    timed = {
        (p.attributes["messaging.destination.name"], p.attributes.get("error.type")): (
            p.count,
            round(p.sum, 6),
        )
        for p in points["messaging.client.operation.duration"]
    }
    assert timed == {
        ("celery", None): (2, 0.503),  # the batch's 3 ms once, and d's 0.5 s
        ("other", None): (1, 0.003),
        ("celery", "DispatchTimeout"): (1, 2.0),
    }
    assert not any(
        "aceleryctl.outcome" in p.attributes for p in points["messaging.client.operation.duration"]
    )
    [deadline] = points["aceleryctl.dispatch.deadline_exceeded"]
    assert (deadline.value, dict(deadline.attributes)) == (
        1,
        {"aceleryctl.task.name": "metrics.add"},
    )
    [committed] = points["aceleryctl.on_commit.dispatches"]
    assert (committed.value, dict(committed.attributes)) == (1, {"aceleryctl.outcome": "unknown"})


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.data.data_points:
                    found[metric.name] = list(metric.data.data_points)
    return found


def test_instrument_names_what_to_install(ctl: AsyncCeleryController) -> None:
    with pytest.raises(ValueError, match="unknown metrics exporter 'statsd'"):
        instrument(ctl, ["statsd"])
    assert instrument(ctl, []) == []


def test_prometheus_multiprocess_mode_adds_up_processes(tmp_path: Path) -> None:
    """Two processes count with PROMETHEUS_MULTIPROC_DIR set; a third collects both."""
    script = textwrap.dedent(
        """
        import sys
        from celery import Celery
        from aceleryctl import AsyncCeleryController
        from aceleryctl.metrics.gauges import GaugeSampler
        from aceleryctl.metrics.prometheus import PrometheusMetrics

        app = Celery("mp", broker="memory://", set_as_current=False)

        @app.task(name="mp.add", shared=False)
        def add(a, b):
            return a + b

        controller = AsyncCeleryController(app)
        controller.add_listener(PrometheusMetrics(GaugeSampler(controller.statistics)))
        for i in range(int(sys.argv[1])):
            controller.sync.delay(add, i, i)
        controller.sync.close(10)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for count in ("2", "3"):
        subprocess.run(
            [sys.executable, "-c", script, count], env=env, check=True, timeout=120, cwd=ROOT
        )
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"name": "mp.add", "queue_name": "", "path": "stock", "outcome": "sent"}
    assert registry.get_sample_value("aceleryctl_dispatches_total", labels) == 5.0
