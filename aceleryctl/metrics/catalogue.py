"""Every metric aceleryctl exports: name, kind, unit, labels, meaning.

Prometheus names follow celery-exporter's conventions (``name`` and
``queue_name`` labels, ``_total`` counters, seconds); OpenTelemetry's follow the
messaging semantic conventions where one applies (``messaging.client.*``,
``messaging.system``, ``messaging.destination.name``, ``error.type``) and an
``aceleryctl.`` prefix where none does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aceleryctl.dispatch.listener import DispatchEvent

__all__ = ["DURATION_BUCKETS", "METRICS", "MetricSpec", "task_label"]

#: Histogram buckets for one publish, in seconds: 0.25 ms to 10 s.
DURATION_BUCKETS: Final = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as both exporters name it.

    Attributes:
        key: the catalogue's own short name.
        prometheus: the Prometheus metric name (counters without ``_total``, which
            ``prometheus_client`` appends).
        otel: the OpenTelemetry instrument name.
        kind: ``counter``, ``histogram`` or ``gauge``.
        unit: UCUM unit for OpenTelemetry (``s``, ``{message}``...).
        labels: Prometheus label names (OpenTelemetry attributes are documented
            with :data:`METRICS`' docs table).
        help: what it counts.
    """

    key: str
    prometheus: str
    otel: str
    kind: str
    unit: str
    labels: tuple[str, ...]
    help: str


METRICS: Final = (
    MetricSpec(
        "dispatches", "aceleryctl_dispatches", "messaging.client.sent.messages", "counter",
        "{message}", ("name", "queue_name", "path", "outcome"),
        "Dispatches settled, by task, queue, wire and outcome (sent, not_sent, unknown, "
        "stored, dead_lettered).",
    ),
    MetricSpec(
        "duration", "aceleryctl_publish_duration_seconds",
        "messaging.client.operation.duration", "histogram", "s", ("name", "path", "outcome"),
        "Seconds one publish operation took on its publishing thread: the dispatches "
        "published together in one write (one confirm round) are one operation, observed "
        "once per label set.",
    ),
    MetricSpec(
        "deadline", "aceleryctl_dispatch_deadline_exceeded",
        "aceleryctl.dispatch.deadline_exceeded", "counter", "{dispatch}", ("name",),
        "Calls whose deadline passed during the publish (DispatchTimeout: outcome unknown).",
    ),
    MetricSpec(
        "on_commit", "aceleryctl_on_commit_dispatches", "aceleryctl.on_commit.dispatches",
        "counter", "{dispatch}", ("outcome",),
        "Dispatches published after a transaction committed, by outcome; not_sent and "
        "unknown without the outbox are work lost after the commit.",
    ),
    MetricSpec(
        "saturated", "aceleryctl_pool_saturated", "aceleryctl.pool.saturated", "counter",
        "{dispatch}", (), "Calls refused because no publishing thread was free in time.",
    ),
    MetricSpec(
        "threads", "aceleryctl_pool_threads", "aceleryctl.pool.threads", "gauge", "{thread}",
        (), "Publishing threads started.",
    ),
    MetricSpec(
        "running", "aceleryctl_pool_running", "aceleryctl.pool.running", "gauge", "{dispatch}",
        (), "Publishes running on a publishing thread now.",
    ),
    MetricSpec(
        "waiting", "aceleryctl_pool_waiting", "aceleryctl.pool.waiting", "gauge", "{dispatch}",
        (), "Dispatches waiting for a publishing thread now.",
    ),
    MetricSpec(
        "breaker_state", "aceleryctl_breaker_state", "aceleryctl.breaker.state", "gauge", "1",
        ("state",), "1 for the circuit breaker's current state, 0 for the others.",
    ),
    MetricSpec(
        "transitions", "aceleryctl_breaker_transitions", "aceleryctl.breaker.transitions",
        "counter", "{transition}", ("from_state", "to_state"),
        "Circuit breaker state changes.",
    ),
    MetricSpec(
        "ws_open", "aceleryctl_websocket_connections", "aceleryctl.websocket.connections",
        "gauge", "{connection}", (), "Websockets open now on the live-status consumer.",
    ),
    MetricSpec(
        "ws_accepted", "aceleryctl_websocket_accepted", "aceleryctl.websocket.accepted",
        "counter", "{connection}", (), "Websockets accepted by the live-status consumer.",
    ),
    MetricSpec(
        "ws_closes", "aceleryctl_websocket_closes", "aceleryctl.websocket.closes", "counter",
        "{connection}", ("code",),
        "Websockets the consumer closed or refused, by close code (4400 malformed frames, "
        "4401 no token, 4403 a bad token or a foreign origin, 4413 a frame too large, 4419 "
        "an expired token, 1013 fell behind or no layer, 1011 no channel layer).",
    ),
    MetricSpec(
        "ws_subscriptions", "aceleryctl_websocket_subscriptions",
        "aceleryctl.websocket.subscriptions", "gauge", "{task}", (),
        "Tasks followed now over every open websocket.",
    ),
    MetricSpec(
        "events_sent", "aceleryctl_events_sent", "aceleryctl.events.sent", "counter",
        "{event}", (), "Task events the emitters of this process handed to the channel layer.",
    ),
    MetricSpec(
        "events_dropped", "aceleryctl_events_dropped", "aceleryctl.events.dropped", "counter",
        "{event}", ("reason",),
        "Task events dropped by the emitters of this process (dropped_full, timed_out, "
        "failed, dropped_no_layer, dropped_closed).",
    ),
    MetricSpec(
        "outbox_pending", "aceleryctl_outbox_pending", "aceleryctl.outbox.pending", "gauge",
        "{row}", (), "Outbox rows waiting for the relay (with the outbox on).",
    ),
    MetricSpec(
        "outbox_dead", "aceleryctl_outbox_dead_lettered", "aceleryctl.outbox.dead_lettered",
        "gauge", "{row}", (), "Outbox rows the relay gave up on (with the outbox on).",
    ),
    MetricSpec(
        "outbox_age", "aceleryctl_outbox_oldest_pending_age_seconds",
        "aceleryctl.outbox.oldest_pending_age", "gauge", "s", (),
        "Age of the oldest pending outbox row, 0 when none (with the outbox on).",
    ),
)  # fmt: skip

#: ``name`` label of dispatches that are not of one task (descriptions vary).
_KIND_LABELS: Final = {"canvas": "<canvas>", "callable": "<callable>"}


def task_label(event: DispatchEvent) -> str:
    """The ``name`` label of ``event``: the task's name, or ``<canvas>`` /
    ``<callable>`` (their descriptions hold reprs: unbounded label values)."""
    return _KIND_LABELS.get(event.kind, event.task_name)
