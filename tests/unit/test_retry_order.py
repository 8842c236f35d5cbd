"""The retry announcement's receiver (``before_task_publish``) in isolation: what it
costs on every publish, and how it reads a retry's ETA and exception.

Its events, in a worker, are tested in tests/django/test_signals.py (Celery's
tracer) and tests/integration/live/test_events_live.py (real workers).
"""

from __future__ import annotations

import timeit
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery.exceptions import Retry

from aceleryctl.worker import retry as _receivers
from aceleryctl.worker.retry import on_before_publish

#: What Celery's task protocol 2 puts in the headers of a first publish.
FIRST_PUBLISH: dict[str, Any] = {
    "lang": "py",
    "task": "reports.export",
    "id": "0b1c0f9e-5d4a-4c1e-9f7a-2d3b4c5d6e7f",
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "root_id": "0b1c0f9e-5d4a-4c1e-9f7a-2d3b4c5d6e7f",
    "parent_id": None,
    "argsrepr": "(1,)",
    "kwargsrepr": "{}",
    "origin": "gen1@web",
    "ignore_result": False,
}
BODY: tuple[Any, ...] = ((1,), {}, {"callbacks": None, "errbacks": None})


def publish(headers: object, body: object = BODY) -> None:
    """Call the receiver as Celery's ``before_task_publish`` does."""
    on_before_publish(
        sender="reports.export",
        body=body,
        exchange="",
        routing_key="celery",
        headers=headers,
        properties={},
        declare=[],
        retry_policy=None,
    )


def test_a_message_that_is_no_retry_returns_before_looking_for_a_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked: list[str] = []

    def current_task() -> None:
        looked.append("task")

    monkeypatch.setattr(_receivers, "current_worker_task", current_task)
    publish(FIRST_PUBLISH)
    publish({**FIRST_PUBLISH, "retries": None})
    publish({}, body={"id": "p1", "task": "reports.export", "retries": 0})  # task protocol 1
    publish(None, body=None)
    assert looked == []
    publish({**FIRST_PUBLISH, "retries": 1})  # no task runs here: looked for, then nothing
    publish({}, body={"id": "p1", "task": "reports.export", "retries": 1})
    assert looked == ["task", "task"]


def test_a_message_that_is_no_retry_costs_about_a_microsecond(
    record_property: pytest.RecordProperty,
) -> None:
    # This runs for every task message a web process publishes. The best of
    # several runs is what the code costs; the bound leaves room for slow machines.
    calls = 20_000
    best = min(timeit.repeat(lambda: publish(FIRST_PUBLISH), number=calls, repeat=5))
    per_call_us = best / calls * 1e6
    record_property("before_publish_first_message_us", round(per_call_us, 3))
    assert per_call_us < 3.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),  # due at once
        ("2026-01-01T00:00:30.500000+00:00", "2026-01-01T00:00:30.500000+00:00"),
        ("2026-01-01T02:00:30+02:00", "2026-01-01T00:00:30+00:00"),
        ("2026-01-01T00:00:30", "2026-01-01T00:00:30+00:00"),  # naive: UTC
        (
            datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))),
            "2026-01-01T00:00:00+00:00",
        ),
        ("soon", "fallback"),
        (3, "fallback"),
    ],
)
def test_the_eta_comes_from_the_message_in_utc(header: object, expected: str | None) -> None:
    assert _receivers._eta_header(header, "fallback") == expected


def test_without_celerys_frame_the_handled_exception_is_the_reason() -> None:
    assert _receivers._retry_being_published() is None
    error = ConnectionError("down")
    try:
        raise error
    except ConnectionError:
        found = _receivers._retry_being_published()
    assert isinstance(found, Retry)
    assert found.exc is error
    try:
        raise Retry(when=1)
    except Retry:
        found = _receivers._retry_being_published()
    assert found is None  # Celery's own signal is not the cause of anything


def test_an_announced_retry_is_taken_once_and_the_memo_is_bounded() -> None:
    _receivers._remember_announced("memo-1", 0)
    assert _receivers.take_announced("memo-1", 0)
    assert not _receivers.take_announced("memo-1", 0)
    for i in range(_receivers._MAX_ANNOUNCED + 5):
        _receivers._remember_announced(f"memo-{i}", 1)
    assert len(_receivers._announced) <= _receivers._MAX_ANNOUNCED
    assert not _receivers.take_announced("memo-0", 1)  # the oldest went first
    last = _receivers._MAX_ANNOUNCED + 4
    assert _receivers.take_announced(f"memo-{last}", 1)
    _receivers._announced.clear()
