"""The signal receivers and report_progress, in-process: eager tasks, a recording layer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, Task
from celery import signals as celery_signals
from celery._state import _task_stack
from celery.app.trace import build_tracer
from celery.exceptions import Retry
from django.conf import settings
from django.test import override_settings

from aceleryctl import signals
from aceleryctl._once import internal
from aceleryctl.correlation import CORRELATION_HEADER, current_correlation_id, use_correlation_id
from aceleryctl.events import Phase, TaskEvent, split_order
from aceleryctl.live import sent
from aceleryctl.worker.layer import default_emitter
from aceleryctl.worker.receivers import (
    on_received,
    on_rejected,
    on_retry,
    on_revoked,
    on_unknown,
)
from aceleryctl.worker.retry import on_before_publish
from tests._support.waiting import wait_until

TIMEOUT = 10.0

QUEUE = "aceleryctl-signals-tests"

app = Celery("signals-tests", broker="memory://", backend="cache+memory://", set_as_current=False)
app.conf.update(
    task_store_eager_result=True,
    result_serializer="json",
    task_default_queue=QUEUE,  # not the memory broker's shared "celery"
)


class Flaky(Exception):
    pass


@app.task(bind=True, name="signals_tests.journey", max_retries=2)
def journey(self: Task[Any, Any], steps: int, failures: int) -> dict[str, Any]:
    for step in range(1, steps + 1):
        signals.report_progress(self, step, steps, f"step {step}")
    if self.request.retries < failures:
        raise self.retry(exc=Flaky("again, see redis://u:pw-x@h/0"), countdown=30)
    return {"ok": True, "password": "result-secret", "seen": current_correlation_id()}


@app.task(bind=True, name="signals_tests.boom")
def boom(self: Task[Any, Any], password: str) -> None:
    raise ValueError(f"broken at https://admin:{password}@example.com/x")


@app.task(bind=True, name="signals_tests.progress_only")
def progress_only(self: Task[Any, Any], calls: int) -> int:
    for i in range(1, calls + 1):
        signals.report_progress(self, i, calls)
    return calls


@app.task(
    bind=True,
    name="signals_tests.auto",
    autoretry_for=(Flaky,),
    max_retries=1,
    default_retry_delay=0,
)
def auto(self: Task[Any, Any]) -> str:
    if self.request.retries == 0:
        raise Flaky("auto, see https://u:pw-auto@h/x")
    return "ok"


@app.task(bind=True, name="signals_tests.bare", max_retries=None)
def bare(self: Task[Any, Any], handled: bool) -> None:
    """Retry without naming the exception: inside an except block, or not."""
    if not handled:
        raise self.retry(countdown=5)
    try:
        {}["missing"]
    except KeyError:
        raise self.retry(countdown=5) from None


@app.task(bind=True, name="signals_tests.resend")
def resend(self: Task[Any, Any]) -> None:
    """Publish its own retry without Task.retry, then tell the worker so."""
    try:
        raise Flaky("resent, see https://u:pw-resend@h/x")
    except Flaky as exc:
        self.apply_async(task_id=self.request.id, retries=self.request.retries + 1, countdown=7)
        raise Retry(exc=exc, when=7) from None


@app.task(bind=True, name="signals_tests.sender")
def sender(self: Task[Any, Any]) -> None:
    """Publish messages that look like retries but are not this task's."""
    journey.apply_async((1, 0), task_id="other-1", retries=self.request.retries + 1)
    journey.apply_async((1, 0), task_id=self.request.id, retries=self.request.retries + 2)


class RecordingLayer:
    """A channel layer that records group_send calls (from the emitter's thread)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        with self.lock:
            self.sent.append((group, message))

    def events(self) -> list[TaskEvent]:
        emitter = default_emitter()
        assert emitter is not None, "events are off"
        assert emitter.flush(TIMEOUT)
        with self.lock:
            return [TaskEvent.from_dict(m["event"]) for _, m in self.sent]


@pytest.fixture
def layer() -> Iterator[RecordingLayer]:
    recording = RecordingLayer()
    signals.connect(layer_factory=lambda: recording)
    try:
        yield recording
    finally:
        signals.disconnect()  # back to a web process: the app connects no receiver
        sent.install_web()


def types_of(events: list[TaskEvent]) -> list[str]:
    return [e.type.removeprefix("task.") for e in events]


def test_an_eager_journey_emits_every_step_in_order(layer: RecordingLayer) -> None:
    with use_correlation_id("outer-1"):
        result = journey.apply((3, 1), headers={CORRELATION_HEADER: "corr-9"})
        assert current_correlation_id() == "outer-1"
    assert result.get()["seen"] == "corr-9"
    events = layer.events()
    assert types_of(events) == [
        "started",
        "progress",
        "progress",  # the last report of the attempt, held by the throttle, then flushed
        "retried",
        "started",
        "progress",
        "progress",
        "succeeded",
    ]
    orders = [e.order for e in events]
    assert orders == sorted(set(orders))
    assert [e.progress.current for e in events if e.progress] == [1, 3, 1, 3]
    retried = events[3]
    assert retried.retry is not None
    assert (retried.retry.attempt, retried.retry.max_retries) == (1, 2)
    assert retried.error_type == "Flaky"
    assert retried.error_message == "again, see redis://********@h/0"
    assert events[-1].result == {"ok": True, "password": "********", "seen": "corr-9"}
    assert {e.correlation_id for e in events} == {"corr-9"}
    assert {split_order(e.order)[0] for e in events[4:]} == {1}


def test_an_eager_task_without_a_header_keeps_its_callers_id(layer: RecordingLayer) -> None:
    with use_correlation_id("caller-7"):
        assert journey.apply((1, 0)).get()["seen"] == "caller-7"
    assert {e.correlation_id for e in layer.events()} == {"caller-7"}


def test_a_failure_event_has_type_and_scrubbed_message_only(layer: RecordingLayer) -> None:
    boom.apply(kwargs={"password": "pw-planted"})
    events = layer.events()
    assert types_of(events) == ["started", "failed"]
    failed = events[-1]
    assert failed.error_type == "ValueError"
    assert failed.error_message == "broken at https://********@example.com/x"
    text = json.dumps([e.to_dict() for e in events])
    assert "pw-planted" not in text
    assert "Traceback" not in text


def test_progress_is_throttled_per_task_and_the_last_report_survives(
    layer: RecordingLayer,
) -> None:
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "PROGRESS_MAX_RATE": 0.5}):
        signals.connect(layer_factory=lambda: layer)
        result = progress_only.apply((500,))
    reports = [e for e in layer.events() if e.type == "task.progress"]
    assert [(r.progress.current if r.progress else None) for r in reports] == [1, 500]
    assert [split_order(r.order)[2] for r in reports] == [1, 500]
    # The backend holds the last report that went out at once; then the outcome.
    assert result.state == "SUCCESS"


def test_sent_is_announced_by_the_publisher_for_first_messages_only(
    layer: RecordingLayer,
) -> None:
    with use_correlation_id("pub-3"):
        journey.apply_async((1, 0), task_id="sent-1")
    journey.apply_async((1, 0), task_id="sent-2", retries=1)
    events = layer.events()
    assert [(e.type, e.task_id, e.correlation_id, e.order) for e in events] == [
        ("task.sent", "sent-1", "pub-3", 0)
    ]
    assert events[0].task_name == "signals_tests.journey"


def test_worker_side_signals_become_events(layer: RecordingLayer) -> None:
    request = types.SimpleNamespace(
        id="rx-1",
        name="signals_tests.journey",
        request_dict={"retries": 2, CORRELATION_HEADER: "c-1", "task": "signals_tests.journey"},
    )
    on_received(sender=None, request=request)
    on_revoked(
        sender=journey,
        request=types.SimpleNamespace(id="rx-1", retries=None, task="signals_tests.journey"),
        terminated=True,
        signum="TERM",
    )
    message = types.SimpleNamespace(headers={"id": "rx-2", "task": "nope", "retries": 0})
    on_unknown(sender=None, name="nope", id="rx-2", message=message)
    on_rejected(sender=None, message=message, exc=None)
    on_rejected(sender=None, message=types.SimpleNamespace(headers={}), exc=None)  # no id: ignored
    events = layer.events()
    assert [(e.type, e.task_id) for e in events] == [
        ("task.received", "rx-1"),
        ("task.revoked", "rx-1"),
        ("task.rejected", "rx-2"),
        ("task.rejected", "rx-2"),
    ]
    received, revoked, unknown, rejected = events
    assert (received.attempt, received.correlation_id) == (2, "c-1")
    assert revoked.attempt == 2  # remembered from task_received, as the main process does
    assert (revoked.error_type, revoked.error_message) == (
        "Terminated",
        "terminated by signal TERM",
    )
    assert unknown.error_type == "NotRegistered"
    assert rejected.error_type == "UnknownMessage"


def test_receivers_never_raise(layer: RecordingLayer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="aceleryctl.emitter")

    class Hostile:
        @property
        def id(self) -> str:
            raise RuntimeError("hostile request")

    on_received(sender=None, request=Hostile())
    on_received(sender=None, request=Hostile())
    on_revoked(sender=None, request=None)
    logged = [r for r in caplog.records if "task_received receiver failed" in r.getMessage()]
    assert len(logged) <= 1  # once per kind and process (maybe logged by an earlier test)


def test_report_progress_outside_a_worker_does_nothing_and_checks_arguments(
    layer: RecordingLayer,
) -> None:
    request = types.SimpleNamespace(id=None, called_directly=True, retries=0)
    task = types.SimpleNamespace(request=request, name="x")
    signals.report_progress(task, 1, 2)
    request = types.SimpleNamespace(id="p-1", called_directly=False, retries=0)
    task = types.SimpleNamespace(request=request, name="x", update_state=lambda **_: None)
    with pytest.raises(ValueError, match="message"):
        signals.report_progress(task, 1, 2, message=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="current"):
        signals.report_progress(task, float("nan"))
    assert layer.events() == []


def test_a_failing_backend_write_never_fails_the_task(
    layer: RecordingLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")

    def broken(**_: Any) -> None:
        raise ConnectionError("result backend down")

    request = types.SimpleNamespace(id="p-2", called_directly=False, retries=0)
    task = types.SimpleNamespace(request=request, name="x", update_state=broken)
    signals.report_progress(task, 1, 2)
    assert [e.type for e in layer.events()] == ["task.progress"]


def test_events_can_be_switched_off_while_logging_stays(layer: RecordingLayer) -> None:
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "EVENTS_ENABLED": False}):
        signals.connect(layer_factory=lambda: layer)
        assert signals.is_connected() == {"events": False, "logging": True}
        assert default_emitter() is None
        journey.apply((1, 0))
    assert layer.sent == []
    signals.connect(layer_factory=lambda: layer)
    assert signals.is_connected() == {"events": True, "logging": True}


def test_connect_and_disconnect_are_idempotent(layer: RecordingLayer) -> None:
    from celery import signals as celery_signals

    def count() -> int:
        return sum(
            1
            for receivers in (celery_signals.task_prerun.receivers,)
            for (key, _) in receivers
            if "aceleryctl" in str(key[0])
        )

    signals.connect(layer_factory=lambda: layer)
    once = count()
    signals.connect(layer_factory=lambda: layer)
    assert count() == once == 3  # correlation, events, logging
    signals.disconnect()
    signals.disconnect()
    assert count() == 0
    assert signals.is_connected() == {"events": False, "logging": False}
    assert default_emitter() is None
    signals.connect(layer_factory=lambda: layer)
    assert count() == once


def test_disconnect_forgets_the_layer_factory_it_was_given(layer: RecordingLayer) -> None:
    """A web process's task.sent after disconnect() goes to Django's layer (none
    here), never to the layer a disconnected caller passed to connect()."""
    signals.disconnect()
    sent.install_web()
    events = sent.sent_events()
    before = events.statistics()
    events.add("after-disconnect", "signals_tests.journey", None)
    after = wait_until(
        lambda: (s := events.statistics()).buffered == 0 and s,
        timeout=TIMEOUT,
        message="the task.sent entry was never taken off the buffer",
    )
    assert after.dropped_off == before.dropped_off + 1  # no channel layer configured
    assert after.sent == before.sent
    with layer.lock:
        assert layer.sent == []


def test_retry_reason_without_an_exception() -> None:
    from aceleryctl.worker.building import retry_details

    request = types.SimpleNamespace(id="r", retries=4)
    info, error_type = retry_details(journey, request, Retry(when=2.5))
    assert (info.attempt, info.max_retries, error_type) == (5, 2, None)
    assert info.reason == "Retry in 2.5s"
    assert info.eta is not None
    info, _ = retry_details(journey, request, None)
    assert (info.reason, info.eta) == (None, None)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({"PROGRESS_MAX_RATE": 0}, "PROGRESS_MAX_RATE"),
        ({"PROGRESS_MAX_RATE": "10"}, "PROGRESS_MAX_RATE"),
        ({"PROGRESS_MAX_RATE": float("inf")}, "PROGRESS_MAX_RATE"),
        ({"EVENT_QUEUE_SIZE": 0}, "EVENT_QUEUE_SIZE"),
        ({"EVENT_SEND_TIMEOUT": -1}, "EVENT_SEND_TIMEOUT"),
        ({"EVENTS_ENABLED": "yes"}, "EVENTS_ENABLED"),
        ({"LOG_FILE": ""}, "LOG_FILE"),
        ({"LOG_FILE": 3}, "LOG_FILE"),
    ],
)
def test_each_event_setting_problem_names_its_key(value: dict[str, Any], key: str) -> None:
    from aceleryctl.conf import settings_problems

    problems = settings_problems(value)
    assert len(problems) == 1
    assert f"ACELERYCTL[{key!r}]" in problems[0]


def test_event_settings_are_read_and_invalid_ones_fall_back_to_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aceleryctl.worker.config import reset_worker_config, worker_config

    value = {
        **settings.ACELERYCTL,
        "PROGRESS_MAX_RATE": 4,
        "EVENT_QUEUE_SIZE": 7,
        "EVENT_SEND_TIMEOUT": 0.25,
        "LOG_FILE": None,
        "REDACT_KEYS": ["pin"],
    }
    with override_settings(ACELERYCTL=value, CELERY_ENABLE_SUCCESS_LOGGING=True):
        config = worker_config()
        assert (config.progress_interval, config.queue_size, config.send_timeout) == (0.25, 7, 0.25)
        assert (config.log_file, config.success_logging, config.prerun_logging) == (
            None,
            True,
            False,
        )
        assert config.redactor.keys == frozenset({"pin"})
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")
    with override_settings(ACELERYCTL={"PROGRESS_MAX_RATE": -1}):
        config = worker_config()
        assert config.progress_interval == 0.1
        assert config.log_file is not None
        assert config.log_file.endswith("logs/celery_logs.txt")
    assert any("settings are invalid" in r.getMessage() for r in caplog.records)
    reset_worker_config()


def test_the_in_memory_layer_is_refused_not_fed_from_another_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:

    internal.forget(["in_memory_layer"])
    caplog.set_level(logging.WARNING, logger="aceleryctl.emitter")
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        signals.connect()  # as a worker does
        try:
            emitter = default_emitter()
            assert emitter is not None
            journey.apply((1, 0))
            assert emitter.flush(TIMEOUT)
            assert emitter.statistics().dropped_no_layer == 3
        finally:
            signals.disconnect()
            sent.install_web()
    assert any("InMemoryChannelLayer" in r.getMessage() for r in caplog.records)


# -- a retry in a worker: announced before its message is published --------------------------


def run_in_worker(task: Task[Any, Any], task_id: str, *args: Any, **request: Any) -> None:
    """Run ``task`` on this thread the way a worker does (Celery's tracer, not eager):
    its retry is published to the memory broker, then ``task_retry`` fires."""
    tracer = build_tracer(task.name, task, app=app, eager=False, propagate=False)
    delivery = {"exchange": "", "routing_key": QUEUE}
    tracer(task_id, args, {}, {"id": task_id, "retries": 0, "delivery_info": delivery, **request})


Published = list[tuple[dict[str, Any], list[str]]]


@pytest.fixture
def published(layer: RecordingLayer) -> Iterator[Published]:
    """Every retry message published, with the types of the events the layer had
    already received when it was (``after_task_publish``)."""
    seen: Published = []

    def probe(headers: Any = None, **_: Any) -> None:
        if headers.get("retries"):
            with layer.lock:
                seen.append((dict(headers), [m["type"] for _, m in layer.sent]))

    celery_signals.after_task_publish.connect(probe, weak=False, dispatch_uid="published-probe")
    try:
        yield seen
    finally:
        celery_signals.after_task_publish.disconnect(dispatch_uid="published-probe")


def retried_of(events: list[TaskEvent]) -> TaskEvent:
    """The ``task.retried`` of ``events``: announced before the publish, then the
    same event once more from ``task_retry``, after Celery stored ``RETRY`` (for a
    subscriber whose snapshot read fell between the two)."""
    first, again = [e for e in events if e.type == "task.retried"]
    assert again.timestamp >= first.timestamp
    assert dataclasses.replace(again, timestamp=first.timestamp) == first
    assert first.retry is not None
    return first


def test_a_worker_retry_reaches_the_layer_before_its_message_is_published_and_once(
    layer: RecordingLayer, published: Published, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.signals")
    before = datetime.now(UTC)
    run_in_worker(journey, "wr-1", 1, 1, **{CORRELATION_HEADER: "corr-w"})
    [(headers, already_sent)] = published
    assert already_sent == ["task.started", "task.progress", "task.retried"]
    events = layer.events()
    # task_retry sent the same task.retried again, after the publish.
    assert types_of(events) == ["started", "progress", "retried", "retried"]
    retried = retried_of(events)
    assert retried.retry is not None
    assert split_order(retried.order) == (0, Phase.RETRIED, 0)
    assert (retried.retry.attempt, retried.retry.max_retries) == (1, 2)
    assert retried.error_type == "Flaky"
    assert retried.error_message == retried.retry.reason == "again, see redis://********@h/0"
    assert retried.correlation_id == "corr-w"
    # The ETA is the message's own, in UTC: the task asked for a 30 s countdown.
    assert headers["eta"] is not None
    assert retried.retry.eta == datetime.fromisoformat(headers["eta"]).astimezone(UTC).isoformat()
    eta = datetime.fromisoformat(retried.retry.eta)
    assert before + timedelta(seconds=29) < eta < datetime.now(UTC) + timedelta(seconds=31)
    text = json.dumps(retried.to_dict())
    assert "pw-x" not in text
    assert "Traceback" not in text
    # The execution-time log record is still written, from task_retry.
    logged = [r.getMessage() for r in caplog.records if r.name == "aceleryctl.signals"]
    assert [m for m in logged if m.startswith("Task retry: task=signals_tests.journey")] != []


def test_autoretry_is_announced_with_its_exception_and_no_eta(
    layer: RecordingLayer, published: Published
) -> None:
    run_in_worker(auto, "wr-2")
    [(headers, already_sent)] = published
    assert already_sent == ["task.started", "task.retried"]
    assert headers["eta"] is None  # default_retry_delay=0: due at once
    retried = retried_of(layer.events())
    assert retried.retry is not None
    assert (retried.error_type, retried.error_message) == (
        "Flaky",
        "auto, see https://********@h/x",
    )
    assert (retried.retry.attempt, retried.retry.max_retries, retried.retry.eta) == (1, 1, None)


def test_a_retry_without_an_exception_names_the_handled_one_or_none(
    layer: RecordingLayer, published: Published
) -> None:
    run_in_worker(bare, "wr-3", True, retries=4)
    run_in_worker(bare, "wr-4", False)
    assert [already[-1] for _, already in published] == ["task.retried", "task.retried"]
    handled, plain = (
        retried_of([e for e in layer.events() if e.task_id == t]) for t in ("wr-3", "wr-4")
    )
    assert handled.retry is not None
    assert plain.retry is not None
    assert split_order(handled.order)[0] == 4
    assert (handled.retry.attempt, handled.retry.max_retries) == (5, None)
    assert (handled.error_type, handled.error_message) == ("KeyError", "'missing'")
    # No exception anywhere: the reason is Celery's own, as task_retry reports it.
    assert (plain.error_type, plain.error_message) == (None, "Retry in 5s")


def test_a_retry_published_without_task_retry_is_announced_from_the_handled_exception(
    layer: RecordingLayer, published: Published
) -> None:
    run_in_worker(resend, "wr-5")
    [(headers, already_sent)] = published
    assert already_sent == ["task.started", "task.retried"]
    retried = retried_of(layer.events())  # and task_retry, fired after, sent it again
    assert retried.retry is not None
    assert retried.error_type == "Flaky"
    assert retried.retry.reason == "resent, see https://********@h/x"
    assert retried.retry.eta == datetime.fromisoformat(headers["eta"]).astimezone(UTC).isoformat()


def test_messages_that_are_not_the_current_tasks_retry_announce_nothing(
    layer: RecordingLayer, published: Published
) -> None:
    run_in_worker(sender, "wr-6")
    assert [(h["id"], h["retries"]) for h, _ in published] == [
        ("other-1", 1),  # another task's id
        ("wr-6", 2),  # not the next attempt
    ]
    # Outside a task, a message with retries > 0 announces nothing either.
    journey.apply_async((1, 0), task_id="wr-7", retries=1)
    assert [(e.type, e.task_id) for e in layer.events()] == [
        ("task.started", "wr-6"),
        ("task.succeeded", "wr-6"),
    ]


def test_task_retry_still_announces_a_retry_that_was_not_announced_before(
    layer: RecordingLayer,
) -> None:
    task = journey
    _task_stack.push(task)
    task.push_request(id="wr-8", retries=1, called_directly=False)
    try:
        headers = {"id": "wr-8", "task": task.name, "retries": 2, "eta": None}
        on_before_publish(sender=task.name, body=(), headers={**headers, "id": "elsewhere"})
        assert layer.events() == []
        on_retry(sender=task, request=task.request, reason=Retry(exc=Flaky("late"), when=1))
        on_before_publish(sender=task.name, body=(), headers=headers)  # no exception at hand
        on_retry(sender=task, request=task.request, reason=Retry(exc=Flaky("late"), when=1))
    finally:
        task.pop_request()
        _task_stack.pop()
    first, second, again = layer.events()
    assert (first.type, first.error_message, first.attempt) == ("task.retried", "late", 1)
    assert second.retry is not None
    assert (second.type, second.error_type, second.retry.reason) == ("task.retried", None, None)
    # The announced one, sent again by task_retry as it was announced (not "late").
    assert dataclasses.replace(again, timestamp=second.timestamp) == second
