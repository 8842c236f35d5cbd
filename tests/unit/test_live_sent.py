"""The web side's live ``task.sent``: noted by the dispatch listener (or the publish
signal), looked up in batches, sent only to watched tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aceleryctl.breaker import BreakerState, StateChange
from aceleryctl.dispatch.listener import (
    DispatchEvent,
    DispatchListener,
    DispatchOutcome,
    PoolChange,
)
from aceleryctl.events import TaskEvent, group_name
from aceleryctl.live import sent
from aceleryctl.live.recent import DEFERRED
from aceleryctl.live.sent import LiveEventsListener, SentEvents
from aceleryctl.worker.emitter import Emitter
from tests._support.waiting import wait_until

TIMEOUT = 10.0


class RecordingLayer:
    """A channel layer recording group sends; ``watched`` groups have a member."""

    def __init__(self, watched: set[str] | None = None) -> None:
        self.watched = watched
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.lookups: list[list[str]] = []
        self.lock = threading.Lock()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        with self.lock:
            self.sent.append((group, message))

    def events(self) -> list[TaskEvent]:
        with self.lock:
            return [TaskEvent.from_dict(m["event"]) for _, m in self.sent]


class ShardedLayer(RecordingLayer):
    """The parts of channels_redis that :func:`sent.watched_groups` uses, on one
    shard, answering the member-count script from ``watched``."""

    group_expiry = 86_400

    def __init__(self, watched: set[str]) -> None:
        super().__init__(watched)
        self.scripts: list[tuple[int, tuple[Any, ...]]] = []
        self.on_lookup: Any = None  # called as the script runs, when set

    def _group_key(self, group: str) -> bytes:
        return f"asgi:group:{group}".encode()

    def consistent_hash(self, value: str) -> int:
        return 0

    def connection(self, index: int) -> Any:
        layer = self

        class Client:
            async def eval(self, script: str, numkeys: int, *args: Any) -> list[int]:
                layer.scripts.append((numkeys, args))
                if layer.on_lookup is not None:
                    layer.on_lookup()
                _since, joined = args  # the group keys travel as one argument, one a line
                keys = [k.decode().removeprefix("asgi:group:") for k in joined.split(b"\n")]
                return [n + 1 for n, key in enumerate(keys) if key in (layer.watched or set())]

        return Client()


def settled(
    task_id: str | None, outcome: DispatchOutcome = DispatchOutcome.SENT, **fields: Any
) -> DispatchEvent:
    values: dict[str, Any] = {
        "task_name": "proj.add",
        "task_id": task_id,
        "method": "delay",
        "kind": "task",
        "queue": "celery",
        "path": "redis",
        "outcome": outcome,
        "error_type": None,
        "correlation_id": "req-1",
        "queued_at": 1.0,
        "started_at": 1.0,
        "finished_at": 1.1,
    }
    values.update(fields)
    return DispatchEvent(**values)


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A SentEvents flushed by a real emitter over a layer chosen per test."""
    holder: dict[str, Any] = {}
    emitter = Emitter(lambda: holder["layer"], max_queue=10, send_timeout=TIMEOUT)
    monkeypatch.setattr(sent, "_process_emitter", lambda: emitter)
    monkeypatch.setattr(sent, "_send_timeout", lambda: TIMEOUT)
    events = SentEvents(window=0.0)
    yield holder, emitter, events
    emitter.close(TIMEOUT)


def test_the_listener_is_a_dispatch_listener() -> None:
    listener = LiveEventsListener(SentEvents())
    assert isinstance(listener, DispatchListener)
    listener.pool_changed(PoolChange.SATURATED)  # nothing to do, nothing raised
    listener.breaker_changed(
        StateChange(breaker="b", old=BreakerState.CLOSED, new=BreakerState.OPEN, reason="x", at=0)
    )


def test_only_sent_dispatches_with_an_id_are_noted(wired: Any) -> None:
    holder, emitter, events = wired
    holder["layer"] = RecordingLayer()  # an unknown layer: every group may be watched
    listener = LiveEventsListener(events)
    listener.dispatch_settled(settled("t-1"))
    listener.dispatch_settled(settled("t-2", DispatchOutcome.NOT_SENT, error_type="BrokerError"))
    listener.dispatch_settled(settled("t-3", DispatchOutcome.UNKNOWN, error_type="DispatchTimeout"))
    listener.dispatch_settled(settled(None, kind="callable"))
    assert emitter.flush(TIMEOUT)
    [event] = holder["layer"].events()
    assert (event.type, event.task_id, event.task_name, event.correlation_id, event.order) == (
        "task.sent",
        "t-1",
        "proj.add",
        "req-1",
        0,
    )
    assert event.state == "PENDING"
    stats = events.statistics()
    assert (stats.noted, stats.sent, stats.unwatched, stats.buffered) == (1, 1, 0, 0)


def test_a_stored_dispatch_is_deferred_then_sent_by_the_relay_in_that_order(wired: Any) -> None:
    holder, emitter, events = wired
    holder["layer"] = RecordingLayer()
    listener = LiveEventsListener(events)
    listener.dispatch_settled(settled("d-1", DispatchOutcome.NOT_SENT, error_type="BrokerError"))
    listener.dispatch_settled(settled("d-1", DispatchOutcome.STORED, error_type="BrokerError"))
    listener.dispatch_settled(settled("d-1", relayed=True))  # in the same batch
    listener.dispatch_settled(settled("d-2", DispatchOutcome.DEAD_LETTERED, relayed=True))
    assert emitter.flush(TIMEOUT)
    found = wait_until(lambda: len(got := holder["layer"].events()) == 2 and got, timeout=TIMEOUT)
    deferred, relayed = sorted(found, key=lambda e: e.order)
    assert (deferred.type, deferred.order, deferred.error_type) == (
        "task.deferred",
        0,
        "BrokerError",
    )
    assert deferred.error_message == "stored in the outbox, waiting for the broker"
    assert (relayed.type, relayed.order, relayed.error_type) == ("task.sent", 1, None)


def test_only_watched_tasks_get_an_event_one_lookup_per_batch(wired: Any) -> None:
    holder, emitter, events = wired
    layer = ShardedLayer({group_name("w-2")})
    holder["layer"] = layer
    events._armed = emitter  # hold the flush: the three entries form one batch
    for task_id in ("w-1", "w-2", "w-3"):
        events.add(task_id, "proj.add", None)
    events._arm()
    assert emitter.flush(TIMEOUT)
    assert [group for group, _ in layer.sent] == [group_name("w-2")]
    assert [e.task_id for e in layer.events()] == ["w-2"]
    [(numkeys, (since, joined))] = layer.scripts
    assert numkeys == 0
    assert joined.decode().split("\n") == [
        f"asgi:group:{group_name(t)}" for t in ("w-1", "w-2", "w-3")
    ]
    assert str(since).startswith("(")  # members that joined within group_expiry
    stats = events.statistics()
    assert (stats.noted, stats.sent, stats.unwatched) == (3, 1, 2)


def test_every_entry_is_kept_for_late_subscribers_before_the_watched_lookup(
    wired: Any,
) -> None:
    # A subscriber joins first and reads what is kept second: one that joins while
    # the look-up runs must find its entry kept already, watched or not.
    holder, emitter, events = wired
    layer = ShardedLayer({group_name("k-2")})
    holder["layer"] = layer
    kept_at_lookup: dict[str, list[str]] = {}

    def subscriber_reads() -> None:
        for task_id in ("k-1", "k-2"):
            kept_at_lookup[task_id] = [e.type for e in sent._recent.events(task_id)]

    layer.on_lookup = subscriber_reads
    events._armed = emitter  # hold the flush: both entries form one batch
    events.add("k-1", "proj.add", None)
    events.add("k-2", "proj.add", None, DEFERRED, "BrokerError")
    events._arm()
    assert emitter.flush(TIMEOUT)
    assert kept_at_lookup == {"k-1": ["task.sent"], "k-2": ["task.deferred"]}
    assert [(e.task_id, e.type) for e in layer.events()] == [("k-2", "task.deferred")]
    stats = events.statistics()
    assert (stats.noted, stats.sent, stats.unwatched) == (2, 1, 1)


def test_a_failed_lookup_still_leaves_the_entries_to_late_subscribers(wired: Any) -> None:
    holder, emitter, events = wired
    layer = ShardedLayer(set())

    def down() -> None:
        raise ConnectionError("the layer's Redis is down")

    layer.on_lookup = down
    holder["layer"] = layer
    events.add("lost-1", "proj.add", None)
    assert emitter.flush(TIMEOUT)
    wait_until(lambda: events.statistics().failed == 1, timeout=TIMEOUT)
    assert [e.type for e in sent._recent.events("lost-1")] == ["task.sent"]
    assert layer.sent == []


def test_a_full_buffer_drops_new_entries_and_counts_them(wired: Any) -> None:
    holder, emitter, _ = wired
    holder["layer"] = RecordingLayer()
    events = SentEvents(max_buffered=2, window=0.0)
    events._armed = emitter
    for task_id in ("f-1", "f-2", "f-3"):
        events.add(task_id, "proj.add", None)
    events._arm()
    assert emitter.flush(TIMEOUT)
    assert [e.task_id for e in holder["layer"].events()] == ["f-1", "f-2"]
    assert events.statistics().dropped_full == 1


def test_a_flush_lost_with_its_emitter_is_armed_again(wired: Any) -> None:
    holder, emitter, events = wired
    holder["layer"] = RecordingLayer()
    closed = Emitter(lambda: None)
    closed.close(TIMEOUT)
    events._armed = closed  # armed on an emitter a settings change has closed since
    events.add("again-1", "proj.add", None)
    assert emitter.flush(TIMEOUT)
    assert [e.task_id for e in holder["layer"].events()] == ["again-1"]


def test_without_an_emitter_entries_are_dropped_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sent, "_process_emitter", lambda: None)
    events = SentEvents(window=0.0)
    events.add("off-1", "proj.add", None)
    stats = events.statistics()
    assert (stats.buffered, stats.dropped_off) == (0, 1)


def test_the_publish_signal_notes_first_messages_only(
    wired: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, emitter, events = wired
    holder["layer"] = RecordingLayer()
    monkeypatch.setattr(sent, "_sent", events)
    sent.on_published(sender="proj.add", body=(), headers={"id": "p-1", "task": "proj.add"})
    sent.on_published(sender="proj.add", body=(), headers={"id": "p-2", "retries": 1})
    sent.on_published(sender="proj.add", body={"id": "p-3", "task": "proj.add"}, headers=None)
    assert emitter.flush(TIMEOUT)
    wait_until(lambda: len(holder["layer"].events()) == 2, timeout=TIMEOUT)
    assert sorted(e.task_id for e in holder["layer"].events()) == ["p-1", "p-3"]


def test_a_listened_publishing_thread_is_left_to_the_listener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[tuple[str, object, object]] = []

    class Recording(SentEvents):
        def add(
            self,
            task_id: str,
            task_name: object,
            correlation: str | None,
            kind: int = sent.SENT,
            error_type: str | None = None,
            eta: object = None,
        ) -> None:
            recorded.append((task_id, task_name, eta))

    monkeypatch.setattr(sent, "_sent", Recording())
    listener = LiveEventsListener()

    def publishing_thread() -> None:
        # What the engine does on a new publishing thread, then a publish there.
        listener.pool_changed(PoolChange.THREAD_STARTED)
        headers = {"id": "t-1", "task": "proj.add", "eta": "2026-01-01T01:00:03+01:00"}
        sent.on_published(sender="proj.add", body=(), headers=headers)
        listener.dispatch_settled(settled("t-1"))

    thread = threading.Thread(target=publishing_thread)
    thread.start()
    thread.join(TIMEOUT)
    # Elsewhere (Celery's own delay in a view): the signal notes it.
    sent.on_published(sender="proj.add", body=(), headers={"id": "t-2", "task": "proj.add"})
    assert [task_id for task_id, _, _ in recorded] == ["t-1", "t-2"]
    # The signal saw the message's eta; the listener's task.sent carries it.
    assert recorded[0][2] == "2026-01-01T01:00:03+01:00"


def test_attach_adds_one_listener_when_events_are_on() -> None:
    added: list[object] = []

    class Controller:
        def add_listener(self, listener: object) -> None:
            added.append(listener)

    listener = sent.attach_live_events(Controller())
    assert added == [listener]
    assert isinstance(listener, LiveEventsListener)
