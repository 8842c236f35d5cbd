"""The TaskEvent schema: wire round trip, strict validation, the order key."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aceleryctl._logging import Redactor
from aceleryctl.events import (
    EVENT_TYPES,
    MAX_ATTEMPT,
    MAX_ORDER,
    MAX_RESULT_BYTES,
    MAX_SEQ,
    MAX_TEXT_LENGTH,
    PHASE_OF_TYPE,
    STATE_OF_TYPE,
    TERMINAL_TYPES,
    Phase,
    Progress,
    RetryInfo,
    TaskEvent,
    clip_text,
    group_name,
    is_valid_correlation_id,
    order_key,
    split_order,
    summarize_error,
    summarize_result,
)

TASK_ID = "0b0c4a4e-8f0e-4b7e-9a43-1f1b2c3d4e5f"


def make(type_: str, *, attempt: int = 0, seq: int = 0, **fields: Any) -> TaskEvent:
    extra: dict[str, Any] = {}
    if type_ == "task.progress":
        extra["progress"] = Progress(1, 4, "one of four")
    if type_ == "task.retried":
        extra["retry"] = RetryInfo(attempt + 1, 3, "Flaky: later", "2030-01-01T00:00:00+00:00")
    extra.update(fields)
    return TaskEvent(
        type=type_,
        task_id=TASK_ID,
        task_name="proj.tasks.work",
        state=STATE_OF_TYPE[type_],
        timestamp=1_700_000_000.25,
        order=order_key(attempt, PHASE_OF_TYPE[type_], seq),
        **extra,
    )


# -- the schema as specified ------------------------------------------------------------------


def test_the_vocabulary_is_celerys() -> None:
    assert EVENT_TYPES == (
        "task.deferred",  # aceleryctl's own: stored in the outbox, waiting for the broker
        "task.sent",
        "task.received",
        "task.started",
        "task.progress",
        "task.retried",
        "task.succeeded",
        "task.failed",
        "task.revoked",
        "task.rejected",
    )
    assert frozenset({"task.succeeded", "task.failed", "task.revoked", "task.rejected"}) == (
        TERMINAL_TYPES
    )
    assert set(STATE_OF_TYPE) == set(EVENT_TYPES) == set(PHASE_OF_TYPE)
    assert STATE_OF_TYPE["task.sent"] == STATE_OF_TYPE["task.deferred"] == "PENDING"
    assert STATE_OF_TYPE["task.progress"] == "PROGRESS"


@pytest.mark.parametrize("type_", EVENT_TYPES)
def test_every_type_round_trips_through_json(type_: str) -> None:
    fields: dict[str, Any] = {"correlation_id": "req-1.a_b"}
    if type_ == "task.succeeded":
        fields["result"] = {"rows": [1, 2.5, None, "x"], "ok": True}
    if type_ in {"task.failed", "task.revoked", "task.rejected"}:
        fields.update(error_type="ValueError", error_message="bad input")
    event = make(type_, attempt=2, seq=7 if type_ == "task.progress" else 0, **fields)
    wire = json.loads(json.dumps(event.to_dict(), allow_nan=False))
    assert TaskEvent.from_dict(wire) == event
    assert event.to_layer_message() == {"type": type_, "event": event.to_dict()}
    assert event.is_terminal is (type_ in TERMINAL_TYPES)
    assert event.attempt == 2


def test_the_wire_form_names_every_field() -> None:
    wire = make("task.progress", seq=1).to_dict()
    assert wire == {
        "type": "task.progress",
        "task_id": TASK_ID,
        "task_name": "proj.tasks.work",
        "state": "PROGRESS",
        "timestamp": 1_700_000_000.25,
        "order": 3_000_000_001,
        "progress": {"current": 1, "total": 4, "message": "one of four"},
        "result": None,
        "error_type": None,
        "error_message": None,
        "retry": None,
        "correlation_id": None,
        "eta": None,
    }
    retried = make("task.retried", attempt=1).to_dict()["retry"]
    assert retried == {
        "attempt": 2,
        "max_retries": 3,
        "reason": "Flaky: later",
        "eta": "2030-01-01T00:00:00+00:00",
    }


def test_unknown_keys_are_ignored_for_rolling_upgrades() -> None:
    wire = make("task.started").to_dict()
    wire["added_in_a_later_version"] = 1
    assert TaskEvent.from_dict(wire) == make("task.started")


def test_events_are_frozen() -> None:
    event = make("task.started")
    with pytest.raises(AttributeError):
        event.state = "SUCCESS"  # type: ignore[misc]


# -- strict validation ------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any]]] = [
    ("type", {"type": "task.exploded"}),
    ("type", {"type": ["task.sent"]}),
    ("state", {"state": "SUCCESS"}),
    ("task_id", {"task_id": ""}),
    ("task_id", {"task_id": 42}),
    ("task_id", {"task_id": "x" * 256}),
    ("task_name", {"task_name": 3}),
    ("timestamp", {"timestamp": math.nan}),
    ("timestamp", {"timestamp": -1}),
    ("timestamp", {"timestamp": "now"}),
    ("timestamp", {"timestamp": True}),
    ("order", {"order": True}),
    ("order", {"order": 1.5}),
    ("order", {"order": -1}),
    ("order", {"order": MAX_ORDER + 1}),
    ("order", {"order": 7 * 10**9}),  # phase digit 7
    ("order", {"order": order_key(0, Phase.TERMINAL)}),  # phase of another type
    ("progress", {"progress": {"current": 1, "total": None, "message": None}}),
    ("result", {"result": {"a": 1}}),
    ("error", {"error_type": "ValueError"}),
    ("retry", {"retry": {"attempt": 1}}),
    ("correlation_id", {"correlation_id": "has spaces"}),
    ("correlation_id", {"correlation_id": "x" * 129}),
]


@pytest.mark.parametrize(("what", "change"), BAD, ids=[f"{w}-{i}" for i, (w, _) in enumerate(BAD)])
def test_invalid_fields_are_refused(what: str, change: dict[str, Any]) -> None:
    wire = make("task.started").to_dict()
    wire.update(change)
    with pytest.raises(ValueError, match=r".") as caught:
        TaskEvent.from_dict(wire)
    assert what.split("_")[0] in str(caught.value).lower() or what in {"type", "order"}


@pytest.mark.parametrize(
    "change",
    [
        {"progress": None},
        {"progress": {"current": math.inf, "total": None, "message": None}},
        {"progress": {"current": 1, "total": "4", "message": None}},
        {"progress": {"current": 1, "total": 4, "message": "m" * (MAX_TEXT_LENGTH + 1)}},
        {"progress": [1, 4]},
    ],
)
def test_progress_is_required_and_checked_on_progress_events(change: dict[str, Any]) -> None:
    wire = make("task.progress", seq=1).to_dict()
    wire.update(change)
    with pytest.raises(ValueError, match="progress"):
        TaskEvent.from_dict(wire)


@pytest.mark.parametrize(
    "retry",
    [
        None,
        {"attempt": 0, "max_retries": None, "reason": None, "eta": None},
        {"attempt": True, "max_retries": None, "reason": None, "eta": None},
        {"attempt": 1, "max_retries": -1, "reason": None, "eta": None},
        {"attempt": 1, "max_retries": None, "reason": None, "eta": "tomorrow"},
    ],
)
def test_retry_info_is_required_and_checked_on_retried_events(retry: object) -> None:
    wire = make("task.retried").to_dict()
    wire["retry"] = retry
    with pytest.raises(ValueError, match="retr"):
        TaskEvent.from_dict(wire)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "result",
    [
        {"a": math.nan},
        {1: "non-string key"},
        {"a": object()},
        {"blob": "x" * (MAX_RESULT_BYTES + 1)},
        nested(40),
    ],
)
def test_a_result_must_be_small_json(result: object) -> None:
    with pytest.raises(ValueError, match="result"):
        make("task.succeeded", result=result)


def test_an_error_message_never_carries_a_traceback() -> None:
    with pytest.raises(ValueError, match="traceback"):
        make(
            "task.failed",
            error_type="X",
            error_message="Traceback (most recent call last):\n  File ...",
        )


@pytest.mark.parametrize("data", [None, [], "event", 3, {"type": "task.sent"}])
def test_from_dict_refuses_non_events(data: object) -> None:
    with pytest.raises(ValueError, match=r"event"):
        TaskEvent.from_dict(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "task_id",
                "task_name",
                "state",
                "timestamp",
                "order",
                "progress",
                "result",
                "error_type",
                "error_message",
                "retry",
                "correlation_id",
            ]
        ),
        json_values,
    )
)
def test_from_dict_raises_only_value_error_on_garbage(data: dict[str, Any]) -> None:
    try:
        event = TaskEvent.from_dict(data)
    except ValueError:
        return
    assert TaskEvent.from_dict(event.to_dict()) == event


@st.composite
def events(draw: st.DrawFn) -> TaskEvent:
    type_ = draw(st.sampled_from(EVENT_TYPES))
    attempt = draw(st.integers(0, MAX_ATTEMPT))
    fields: dict[str, Any] = {}
    seq = 0
    if type_ == "task.progress":
        seq = draw(st.integers(1, MAX_SEQ))
        finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**40), 2**40)
        fields["progress"] = Progress(
            draw(finite), draw(st.none() | finite), draw(st.none() | st.text(max_size=50))
        )
    if type_ == "task.retried":
        fields["retry"] = RetryInfo(
            draw(st.integers(1, 10**6)), draw(st.none() | st.integers(0, 100)), None, None
        )
    if type_ == "task.succeeded":
        fields["result"] = summarize_result(draw(json_values))
    if type_ in {"task.failed", "task.rejected", "task.revoked", "task.retried"}:
        fields["error_type"] = draw(st.none() | st.text(max_size=30))
        fields["error_message"] = summarize_error(draw(st.text(max_size=600)))
    return TaskEvent(
        type=type_,
        task_id=draw(st.from_regex(r"[A-Za-z0-9._-]{1,83}", fullmatch=True)),
        task_name=draw(st.none() | st.text(max_size=60)),
        state=STATE_OF_TYPE[type_],
        timestamp=draw(st.floats(0, 4e9)),
        order=order_key(attempt, PHASE_OF_TYPE[type_], seq),
        correlation_id=draw(st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)),
        **fields,
    )


@given(events())
def test_any_valid_event_round_trips_through_json(event: TaskEvent) -> None:
    text = json.dumps(event.to_layer_message(), allow_nan=False)
    message = json.loads(text)
    assert message["type"] == event.type
    assert TaskEvent.from_dict(message["event"]) == event
    group_name(event.task_id)


# -- the order key ----------------------------------------------------------------------------

keys = st.tuples(st.integers(0, MAX_ATTEMPT), st.sampled_from(list(Phase)), st.integers(0, MAX_SEQ))


@given(keys, keys)
def test_order_keys_sort_like_attempt_phase_seq(
    a: tuple[int, Phase, int], b: tuple[int, Phase, int]
) -> None:
    assert (order_key(*a) < order_key(*b)) == (a < b)
    assert split_order(order_key(*a)) == a


@given(st.integers(0, MAX_ATTEMPT - 1), st.integers(0, MAX_SEQ))
def test_a_terminal_event_sorts_after_its_attempt_and_before_the_next(
    attempt: int, seq: int
) -> None:
    terminal = order_key(attempt, Phase.TERMINAL)
    for phase in (Phase.SENT, Phase.RECEIVED, Phase.STARTED, Phase.PROGRESS, Phase.RETRIED):
        assert order_key(attempt, phase, seq) < terminal
    assert order_key(attempt, Phase.RETRIED) < order_key(attempt + 1, Phase.SENT)
    assert terminal < order_key(attempt + 1, Phase.RECEIVED)


def test_a_task_life_is_strictly_increasing() -> None:
    life = [
        order_key(0, Phase.SENT),
        order_key(0, Phase.RECEIVED),
        order_key(0, Phase.STARTED),
        order_key(0, Phase.PROGRESS, 1),
        order_key(0, Phase.PROGRESS, 2),
        order_key(0, Phase.RETRIED),
        order_key(1, Phase.RECEIVED),
        order_key(1, Phase.STARTED),
        order_key(1, Phase.PROGRESS, 1),
        order_key(1, Phase.TERMINAL),
    ]
    assert life == sorted(set(life))
    assert order_key(2, Phase.PROGRESS, 5) == 23_000_000_005


def test_keys_saturate_and_stay_exact_in_javascript() -> None:
    assert MAX_ORDER < 2**53
    assert order_key(MAX_ATTEMPT + 10, Phase.TERMINAL, MAX_SEQ + 10) == MAX_ORDER
    assert split_order(MAX_ORDER) == (MAX_ATTEMPT, Phase.TERMINAL, MAX_SEQ)


@pytest.mark.parametrize(
    ("attempt", "phase", "seq"), [(-1, 0, 0), (0, 0, -1), (0, 6, 0), (0, -1, 0)]
)
def test_order_key_refuses_out_of_range(attempt: int, phase: int, seq: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        order_key(attempt, phase, seq)


# -- group names, correlation ids, summaries ---------------------------------------------------


def test_group_names_follow_channels_rules() -> None:
    assert group_name(TASK_ID) == f"aceleryctl.task.{TASK_ID}"
    longest = "a" * (99 - len("aceleryctl.task."))
    assert len(group_name(longest)) == 99
    for bad in ["a" + longest, "has space", "colon:id", "é", "", "tab\t"]:
        with pytest.raises(ValueError, match="task id"):
            group_name(bad)


@given(st.text(max_size=150))
def test_a_group_name_is_valid_for_channels_or_refused(task_id: str) -> None:
    from channels.layers import BaseChannelLayer

    try:
        name = group_name(task_id)
    except ValueError:
        return
    assert BaseChannelLayer().require_valid_group_name(name)


def test_correlation_ids_are_sane_tokens() -> None:
    assert is_valid_correlation_id("a")
    assert is_valid_correlation_id("A-b_c.9" * 18)
    for bad in ["", "x" * 129, "with space", "new\nline", None, 5, "ü"]:
        assert not is_valid_correlation_id(bad)


def test_a_result_summary_masks_secrets_and_fits() -> None:
    summary = summarize_result(
        {"password": "hunter2", "nested": {"api_token": "t"}, "rows": list(range(1000))},
        Redactor.from_keys(["password", "token"]),
    )
    assert summary["password"] == "********"
    assert summary["nested"] == {"api_token": "********"}
    assert len(json.dumps(summary).encode()) <= MAX_RESULT_BYTES
    assert summarize_result(math.nan) == "nan"
    assert summarize_result({"x": [math.inf]}) == {"x": ["inf"]}


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@given(json_values | st.builds(Hostile) | st.binary())
def test_any_result_summary_is_small_json(value: object) -> None:
    summary = summarize_result(value)
    text = json.dumps(summary, allow_nan=False, ensure_ascii=False)
    assert len(text.encode()) <= MAX_RESULT_BYTES
    make("task.succeeded", result=summary)


@given(st.text(min_size=MAX_RESULT_BYTES, max_size=20_000))
def test_huge_text_results_are_clipped_to_the_byte_budget(text: str) -> None:
    summary = summarize_result({"k": text * 3})
    assert len(json.dumps(summary, ensure_ascii=False).encode()) <= MAX_RESULT_BYTES


def test_an_error_summary_scrubs_credentials_and_drops_tracebacks() -> None:
    message = "cannot reach redis://user:s3cret@db:6379/0\nTraceback (most recent call last):\n  x"
    assert summarize_error(ValueError(message)) == "cannot reach redis://********@db:6379/0"
    assert len(summarize_error("x" * 5000)) == MAX_TEXT_LENGTH

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("nope")

    assert summarize_error(Unprintable()) == "<unprintable Unprintable>"


@given(st.text(max_size=400), st.integers(0, 300))
def test_clip_text_never_exceeds_its_limit(text: str, limit: int) -> None:
    clipped = clip_text(text, limit)
    assert len(clipped) <= max(limit, 0)
    if len(text) <= limit:
        assert clipped == text


def test_eta_is_iso_8601_on_sent_and_deferred_only() -> None:
    sent = make("task.sent", eta="2026-01-01T00:00:03+00:00")
    assert TaskEvent.from_dict(sent.to_dict()).eta == "2026-01-01T00:00:03+00:00"
    with pytest.raises(ValueError, match="eta must be ISO 8601"):
        make("task.sent", eta="in three seconds")
    with pytest.raises(ValueError, match=r"eta is allowed on task\.sent and task\.deferred only"):
        make("task.received", eta="2026-01-01T00:00:03+00:00")
