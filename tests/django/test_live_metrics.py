"""Websocket and event-emitter metrics, read through prometheus_client and the
OpenTelemetry SDK, as the consumer counts real connections (Channels'
WebsocketCommunicator, the in-memory layer) and a real emitter drops events."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from aceleryctl.consumers import TaskEventsConsumer
from aceleryctl.metrics.live import emitter_totals, live_counters
from aceleryctl.tokens import make_subscription_token

prometheus_client = pytest.importorskip("prometheus_client")

TASK = "5d0c6c43-5cb8-4a1e-9d0f-7a1f5b1f4e77"
SESSION = "metrics-session"
LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
PATH = "/ws/aceleryctl/tasks/"


@pytest.fixture(autouse=True)
def in_memory_layer() -> Iterator[None]:
    with override_settings(CHANNEL_LAYERS=LAYERS):
        yield


def app() -> Any:
    inner = TaskEventsConsumer.as_asgi(snapshot_source=lambda task_id: None)

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope, user=None, session=SimpleNamespace(session_key=SESSION))
        await inner(scope, receive, send)

    return wrapped


def connect(origin: bytes = b"http://testserver") -> WebsocketCommunicator:
    return WebsocketCommunicator(app(), PATH, headers=[(b"origin", origin)])


async def test_connections_subscriptions_and_closes_are_counted() -> None:
    from aceleryctl.metrics.prometheus import _LiveCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(_LiveCollector())
    get = registry.get_sample_value
    opened = get("aceleryctl_websocket_accepted_total") or 0.0
    forbidden = get("aceleryctl_websocket_closes_total", {"code": "4403"}) or 0.0
    missing = get("aceleryctl_websocket_closes_total", {"code": "4401"}) or 0.0

    good = connect()
    assert (await good.connect(timeout=5))[0]
    token = make_subscription_token(TASK, session_key=SESSION)
    await good.send_json_to({"type": "subscribe", "task_id": TASK, "token": token})
    assert (await good.receive_json_from(timeout=5))["type"] in ("snapshot", "subscribed")
    assert get("aceleryctl_websocket_connections") == live_counters.open >= 1
    assert get("aceleryctl_websocket_subscriptions") >= 1
    assert get("aceleryctl_websocket_accepted_total") == opened + 1

    foreign = connect(b"https://evil.example")
    await foreign.connect(timeout=5)
    assert (await foreign.receive_output(timeout=5))["code"] == 4403
    assert get("aceleryctl_websocket_closes_total", {"code": "4403"}) == forbidden + 1

    tokenless = connect()
    assert (await tokenless.connect(timeout=5))[0]
    await tokenless.send_json_to({"type": "subscribe", "task_id": TASK})
    for _ in range(3):
        if (await tokenless.receive_output(timeout=5))["type"] == "websocket.close":
            break
    assert get("aceleryctl_websocket_closes_total", {"code": "4401"}) == missing + 1

    before = live_counters.open
    await good.disconnect(timeout=5)
    await good.wait(timeout=5)
    await tokenless.disconnect(timeout=5)
    assert live_counters.open == before - 2
    assert get("aceleryctl_websocket_connections") == live_counters.open


def test_emitter_drops_are_read_from_live_emitters() -> None:
    from aceleryctl.events import Phase, TaskEvent, order_key
    from aceleryctl.worker.emitter import Emitter

    base = emitter_totals()
    emitter = Emitter(lambda: None, max_queue=1)  # no channel layer: dropped_no_layer
    try:
        event = TaskEvent(
            type="task.started",
            task_id=TASK,
            task_name="m",
            state="STARTED",
            timestamp=1.0,
            order=order_key(0, Phase.STARTED),
        )
        emitter.emit(event)
        assert emitter.flush(5.0)
        totals = emitter_totals()
        dropped = sum(totals[k] - base[k] for k in totals if k != "sent")
        assert dropped == 1
        registry = prometheus_client.CollectorRegistry()
        from aceleryctl.metrics.prometheus import _LiveCollector

        registry.register(_LiveCollector())
        reasons = {
            reason: registry.get_sample_value("aceleryctl_events_dropped_total", {"reason": reason})
            for reason in ("dropped_no_layer", "dropped_full")
        }
        assert sum(v or 0.0 for v in reasons.values()) >= 1
    finally:
        emitter.close(5.0)


def test_opentelemetry_reads_the_same_figures() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from aceleryctl.metrics.otel_instruments import instruments_for

    reader = InMemoryMetricReader()
    instruments_for(sdk.MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    assert data is not None
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {
        "aceleryctl.websocket.connections",
        "aceleryctl.websocket.accepted",
        "aceleryctl.websocket.subscriptions",
        "aceleryctl.events.sent",
        "aceleryctl.events.dropped",
    } <= names
