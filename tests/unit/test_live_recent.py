"""aceleryctl.live.recent: a web process's recent unwatched dispatches and eta notes."""

from __future__ import annotations

from datetime import UTC, datetime

from aceleryctl.live.recent import (
    DEFERRED,
    RELAYED,
    SENT,
    Entry,
    RecentDispatches,
    event_from_entry,
    normalize_eta,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(task_id: str, kind: int = SENT, eta: object = None) -> Entry:
    return (task_id, "proj.add", "req-1", 1_700_000_000.0, kind, "BrokerError", eta)


def test_etas_are_iso_8601_in_utc() -> None:
    assert normalize_eta("2026-01-01T01:00:03+01:00") == "2026-01-01T00:00:03+00:00"
    assert normalize_eta("2026-01-01T00:00:03") == "2026-01-01T00:00:03+00:00"  # naive: UTC
    assert normalize_eta(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
    assert normalize_eta("soon") is None
    assert normalize_eta(None) is None
    assert normalize_eta(3) is None


def test_entries_make_sent_relayed_and_deferred_events() -> None:
    sent = event_from_entry(entry("t", SENT, "2026-01-01T00:00:03+00:00"))
    assert (sent.type, sent.order, sent.error_type, sent.eta) == (
        "task.sent",
        0,
        None,
        "2026-01-01T00:00:03+00:00",
    )
    assert event_from_entry(entry("t", RELAYED)).order == 1
    deferred = event_from_entry(entry("t", DEFERRED))
    assert (deferred.type, deferred.error_type) == ("task.deferred", "BrokerError")
    assert deferred.error_message == "stored in the outbox, waiting for the broker"


def test_entries_are_kept_for_the_ttl_and_the_oldest_tasks_go_first() -> None:
    clock = Clock()
    recent = RecentDispatches(size=2, ttl=10.0, clock=clock)
    recent.keep(entry("a", DEFERRED))
    clock.now += 5
    recent.keep(entry("a", RELAYED))
    assert [e.type for e in recent.events("a")] == ["task.deferred", "task.sent"]
    clock.now += 6  # the first entry is 11 s old now
    assert [e.order for e in recent.events("a")] == [1]
    recent.keep(entry("b"))
    recent.keep(entry("c"))  # a third task: "a" goes
    assert recent.events("a") == []
    assert [e.task_id for e in recent.events("c")] == ["c"]
    assert recent.events("unknown") == []


def test_an_eta_note_is_taken_once_and_the_notes_are_bounded() -> None:
    recent = RecentDispatches(size=2)
    assert not recent.has_etas
    recent.note_eta("a", "2026-01-01T00:00:03+00:00")
    assert recent.has_etas
    assert recent.pop_eta("a") == "2026-01-01T00:00:03+00:00"
    assert recent.pop_eta("a") is None
    for task_id in ("b", "c", "d"):
        recent.note_eta(task_id, "x")
    assert recent.pop_eta("b") is None  # the oldest went first
    assert recent.pop_eta("d") == "x"
