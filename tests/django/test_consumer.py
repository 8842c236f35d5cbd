"""TaskEventsConsumer through Channels' WebsocketCommunicator and the in-memory layer.

Authorization attacks, malformed frames (fuzzed), ordering and dedupe, snapshots
merged with live events, back-pressure, and the absence of Channels' per-message
database hop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aceleryctl.consumers import TaskEventsConsumer
from aceleryctl.events import Phase, Progress, RetryInfo, TaskEvent, group_name, order_key
from aceleryctl.live import consumer as consumers
from aceleryctl.live import recent
from aceleryctl.tokens import make_subscription_token

TASK = "9a7c1e7e-2f61-4d2a-a1a4-6b3c0e0f7d11"
OTHER = "other-task"
PROBE = "probe-task"
SESSION = "session-key-of-the-dispatcher"
ORIGIN = (b"origin", b"http://testserver")
LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
PATH = "/ws/aceleryctl/tasks/"


def ev(kind: str, order: int, task_id: str = TASK, **fields: Any) -> TaskEvent:
    states = {
        "task.sent": "PENDING",
        "task.received": "RECEIVED",
        "task.started": "STARTED",
        "task.progress": "PROGRESS",
        "task.retried": "RETRY",
        "task.succeeded": "SUCCESS",
        "task.failed": "FAILURE",
    }
    if kind == "task.progress":
        fields.setdefault("progress", Progress(order % 1000, 100))
    if kind == "task.retried":
        fields.setdefault("retry", RetryInfo(attempt=1))
    return TaskEvent(
        type=kind,
        task_id=task_id,
        task_name="demo.work",
        state=states[kind],
        timestamp=1.0,
        order=order,
        **fields,
    )


STARTED = ev("task.started", order_key(0, Phase.STARTED))
P1 = ev("task.progress", order_key(0, Phase.PROGRESS, 1))
P2 = ev("task.progress", order_key(0, Phase.PROGRESS, 2))
P3 = ev("task.progress", order_key(0, Phase.PROGRESS, 3))
DONE = ev("task.succeeded", order_key(0, Phase.TERMINAL), result={"rows": 3})


class FakeSource:
    """Snapshot source: a fixed answer per task, optionally held at a gate."""

    def __init__(self, answers: dict[str, TaskEvent | Exception | None] | None = None) -> None:
        self.answers = dict(answers or {})
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.calls: list[str] = []

    def __call__(self, task_id: str) -> TaskEvent | None:
        self.calls.append(task_id)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        answer = self.answers.get(task_id)
        if isinstance(answer, Exception):
            raise answer
        return answer


def build_app(
    source: FakeSource,
    *,
    user: Any = None,
    session_key: str | None = SESSION,
    consumer: type[TaskEventsConsumer] = TaskEventsConsumer,
) -> Any:
    inner = consumer.as_asgi(snapshot_source=source)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope, user=user, session=SimpleNamespace(session_key=session_key))
        await inner(scope, receive, send)

    return app


def token(task_id: str = TASK, **kwargs: Any) -> str:
    kwargs.setdefault("session_key", SESSION)
    return make_subscription_token(task_id, **kwargs)


@pytest.fixture(autouse=True)
def in_memory_layer() -> Iterator[None]:
    with override_settings(CHANNEL_LAYERS=LAYERS):
        yield


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
async def ws(source: FakeSource) -> AsyncIterator[WebsocketCommunicator]:
    comm = WebsocketCommunicator(build_app(source), PATH, headers=[ORIGIN])
    connected, _ = await comm.connect(timeout=5)
    assert connected
    yield comm
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)  # raises if the consumer crashed


async def publish(event: TaskEvent) -> None:
    layer = get_channel_layer()
    await layer.group_send(group_name(event.task_id), event.to_layer_message())


async def frame(comm: WebsocketCommunicator) -> dict[str, Any]:
    data: dict[str, Any] = await comm.receive_json_from(timeout=5)
    return data


async def subscribe(
    comm: WebsocketCommunicator, task_id: str = TASK, after: int | None = None, **kw: Any
) -> dict[str, Any]:
    await comm.send_json_to(
        {"type": "subscribe", "task_id": task_id, "token": token(task_id, **kw), "after": after}
    )
    return await frame(comm)


async def closed_with(comm: WebsocketCommunicator) -> tuple[list[dict[str, Any]], int]:
    """Frames received until the server closed, and the close code."""
    frames = []
    for _ in range(50):
        message = await comm.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            return frames, message["code"]
        frames.append(json.loads(message["text"]))
    raise AssertionError(f"no close after {frames}")


async def barrier(comm: WebsocketCommunicator) -> None:
    """Wait until every layer message published so far has been handled.

    The hub reads its channel in order, so once an event for the probe task has
    reached the client, everything published before it has been processed.
    """
    await publish(ev("task.started", order_key(0, Phase.STARTED), task_id=PROBE))
    data = await frame(comm)
    assert data["type"] == "event", data
    assert data["event"]["task_id"] == PROBE, data


# -- authorization ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: None, 4401),
        (lambda: "", 4401),
        (lambda: token()[:-2] + ("A" if token()[-2] != "A" else "B") + token()[-1], 4403),
        (lambda: token(OTHER), 4403),
        (lambda: token(session_key="someone-else"), 4403),
        (lambda: token(session_key=None, user=SimpleNamespace(pk=1, is_authenticated=True)), 4403),
        (lambda: token(max_age=1, now=1_000_000.0), 4419),
        (lambda: ["not", "a", "token"], 4403),
    ],
    ids=["missing", "empty", "tampered", "wrong-task", "wrong-session", "wrong-user",
         "expired", "not-a-string"],
)  # fmt: skip
async def test_each_refused_token_closes_with_its_code(
    ws: WebsocketCommunicator, source: FakeSource, make_token: Any, code: int
) -> None:
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": make_token()})
    frames, close_code = await closed_with(ws)
    assert close_code == code
    assert frames == [
        {"type": "error", "code": code, "message": frames[0]["message"], "task_id": TASK}
    ]
    assert source.calls == []  # nothing was read for a refused client
    layer = get_channel_layer()
    assert not layer.groups.get(group_name(TASK))  # and nothing joined


async def test_a_user_bound_token_needs_that_user(source: FakeSource) -> None:
    alice = SimpleNamespace(pk=1, is_authenticated=True)
    bob = SimpleNamespace(pk=2, is_authenticated=True)
    for user, expected in ((alice, "snapshot"), (bob, "error")):
        comm = WebsocketCommunicator(build_app(source, user=user), PATH, headers=[ORIGIN])
        assert (await comm.connect(timeout=5))[0]
        reply = await subscribe(comm, user=alice, session_key=None)
        assert reply["type"] == expected, reply
        await comm.disconnect(timeout=5)
        await comm.wait(timeout=5)


@pytest.mark.parametrize(
    ("headers", "allowed", "accepted"),
    [
        ([ORIGIN], None, True),
        ([(b"origin", b"http://localhost:8000")], None, True),
        ([(b"origin", b"https://evil.example")], None, False),
        ([(b"origin", b"http://testserver.evil.example")], None, False),
        ([(b"origin", b"null")], None, False),
        ([(b"origin", b"javascript://testserver")], None, False),
        ([], None, False),
        ([(b"origin", b"https://app.example.com")], ["https://app.example.com"], True),
        ([ORIGIN], ["https://app.example.com"], False),
        ([], ["*"], True),
    ],
)
async def test_origin_is_validated_at_the_handshake(
    source: FakeSource, headers: list[tuple[bytes, bytes]], allowed: Any, accepted: bool
) -> None:
    with override_settings(ACELERYCTL={"WEBSOCKET_ALLOWED_ORIGINS": allowed}):
        comm = WebsocketCommunicator(build_app(source), PATH, headers=headers)
        connected, _ = await comm.connect(timeout=5)
        assert connected  # a refusal too is accepted, so that a browser sees its code
        if accepted:
            assert (await subscribe(comm))["type"] == "snapshot"
        else:
            assert await comm.receive_output(timeout=5) == {
                "type": "websocket.close",
                "code": 4403,
                "reason": "origin not allowed",
            }
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)


async def test_a_foreign_origin_is_closed_before_anything_is_read_or_joined(
    source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    source.answers[TASK] = DONE  # what a hijacked connection would be after
    touched: list[str] = []

    def no_layer(*args: Any) -> None:
        touched.append("channel layer")

    def no_hub(*args: Any) -> None:
        touched.append("hub")

    monkeypatch.setattr(consumers, "get_channel_layer", no_layer)
    monkeypatch.setattr(consumers, "hub_for", no_hub)
    evil = [(b"origin", b"https://evil.example"), (b"cookie", b"sessionid=the-victims")]
    comm = WebsocketCommunicator(build_app(source), PATH, headers=evil)
    assert (await comm.connect(timeout=5))[0]
    close = await comm.receive_output(timeout=5)  # the very first output: no frame before
    assert (close["type"], close["code"]) == ("websocket.close", 4403)

    # A page that keeps talking (with a valid token, even) is ignored: the consumer
    # handles every message in order, so once it has finished after the disconnect
    # below, everything sent before was handled and produced nothing.
    await comm.send_json_to({"type": "subscribe", "task_id": TASK, "token": token()})
    await comm.send_to(text_data="not json")
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)
    assert comm.output_queue.empty()
    assert source.calls == []
    assert touched == []
    monkeypatch.undo()
    assert not get_channel_layer().groups.get(group_name(TASK))  # and nothing joined


async def test_without_a_channel_layer_the_handshake_is_refused(source: FakeSource) -> None:
    with override_settings(CHANNEL_LAYERS={}):
        comm = WebsocketCommunicator(build_app(source), PATH, headers=[ORIGIN])
        assert await comm.connect(timeout=5) == (False, 1011)
        await comm.disconnect(timeout=5)
        await comm.wait(timeout=5)


# -- snapshots, order and dedupe --------------------------------------------------------


async def test_live_events_in_order_without_duplicates_or_regressions(
    ws: WebsocketCommunicator,
) -> None:
    assert await subscribe(ws) == {"type": "snapshot", "task_id": TASK, "event": None}
    assert (await subscribe(ws, PROBE))["type"] == "snapshot"
    for event in (STARTED, P1, P1, STARTED, P3, P2, DONE, P3, DONE):
        await publish(event)
    for expected in (STARTED, P1, P3, DONE):
        assert await frame(ws) == {"type": "event", "event": expected.to_dict()}
    await barrier(ws)  # nothing else came for TASK


async def test_a_late_subscriber_gets_the_terminal_state_and_nothing_after(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = DONE
    assert await subscribe(ws) == {"type": "snapshot", "task_id": TASK, "event": DONE.to_dict()}
    assert (await subscribe(ws, PROBE))["type"] == "snapshot"
    retried_later = ev("task.started", order_key(1, Phase.STARTED))  # a stray, newer order
    await publish(retried_later)
    await publish(DONE)
    await barrier(ws)


async def test_events_during_the_snapshot_read_are_merged_by_order(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = P1  # what the backend said when it was read
    source.gate = threading.Event()
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": token()})
    await asyncio.to_thread(source.entered.wait, 10)  # joined, now reading
    for event in (STARTED, P2, P3):  # arrive while the read is in progress
        await publish(event)
    layer = get_channel_layer()
    hub = consumers.hub_for(layer)
    await asyncio.wait_for(_until(lambda: hub.statistics().deliveries >= 3), 5)
    source.gate.set()
    # The newest of snapshot and buffered events is the snapshot; older ones are dropped.
    assert await frame(ws) == {"type": "snapshot", "task_id": TASK, "event": P3.to_dict()}
    await publish(P2)
    await publish(DONE)
    assert await frame(ws) == {"type": "event", "event": DONE.to_dict()}


async def test_a_terminal_snapshot_beats_buffered_progress(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    # The backend says SUCCESS (attempt unknown, so its order is a lower bound)
    # while a newer-looking progress event of a later attempt is buffered.
    source.answers[TASK] = DONE
    source.gate = threading.Event()
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": token()})
    await asyncio.to_thread(source.entered.wait, 10)
    await publish(ev("task.progress", order_key(1, Phase.PROGRESS, 4)))
    hub = consumers.hub_for(get_channel_layer())
    await asyncio.wait_for(_until(lambda: hub.statistics().deliveries >= 1), 5)
    source.gate.set()
    assert await frame(ws) == {"type": "snapshot", "task_id": TASK, "event": DONE.to_dict()}


async def test_resume_after_an_order_skips_what_the_client_has(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = P1
    reply = await subscribe(ws, after=P2.order)
    assert reply == {"type": "snapshot", "task_id": TASK, "event": None}
    assert (await subscribe(ws, PROBE))["type"] == "snapshot"
    await publish(P2)
    await publish(P3)
    assert await frame(ws) == {"type": "event", "event": P3.to_dict()}
    await barrier(ws)


async def test_resume_after_a_terminal_event_gets_nothing_more(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = DONE
    reply = await subscribe(ws, after=order_key(2, Phase.TERMINAL))
    assert reply == {"type": "snapshot", "task_id": TASK, "event": None}


async def test_a_resumed_client_still_gets_a_terminal_snapshot(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    # The client saw progress of attempt 1; the backend knows only "SUCCESS"
    # (order of attempt 0): the terminal state is still delivered.
    source.answers[TASK] = DONE
    reply = await subscribe(ws, after=order_key(1, Phase.PROGRESS, 9))
    assert reply["event"] == DONE.to_dict()


async def test_snapshot_failure_is_reported_and_live_events_still_flow(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = ConnectionError("result backend down")
    assert await subscribe(ws) == {"type": "snapshot", "task_id": TASK, "event": None}
    error = await frame(ws)
    assert (error["type"], error["code"], error["task_id"]) == ("error", 4503, TASK)
    await publish(P1)
    assert await frame(ws) == {"type": "event", "event": P1.to_dict()}


async def test_unsubscribe_stops_the_events(ws: WebsocketCommunicator) -> None:
    await subscribe(ws)
    await subscribe(ws, PROBE)
    await ws.send_json_to({"type": "unsubscribe", "task_id": TASK})
    await ws.send_json_to({"type": "unsubscribe", "task_id": "never-subscribed"})
    await subscribe(ws, OTHER)  # a round trip: the unsubscribe was handled
    await publish(P1)
    await barrier(ws)
    layer = get_channel_layer()
    assert not layer.groups.get(group_name(TASK))


async def test_duplicate_and_excess_subscriptions_get_error_frames(
    ws: WebsocketCommunicator,
) -> None:
    await subscribe(ws)
    again = await subscribe(ws)
    assert (again["type"], again["code"]) == ("error", 4409)
    with override_settings(ACELERYCTL={"WEBSOCKET_MAX_SUBSCRIPTIONS": 2}):
        comm = WebsocketCommunicator(build_app(FakeSource()), PATH, headers=[ORIGIN])
        assert (await comm.connect(timeout=5))[0]
    assert (await subscribe(comm, "t1"))["type"] == "snapshot"
    assert (await subscribe(comm, "t2"))["type"] == "snapshot"
    third = await subscribe(comm, "t3")
    assert (third["type"], third["code"]) == ("error", 4429)
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)


async def test_many_connections_share_one_group_member(source: FakeSource) -> None:
    comms = [WebsocketCommunicator(build_app(source), PATH, headers=[ORIGIN]) for _ in range(200)]
    assert all(ok for ok, _ in await asyncio.gather(*(c.connect(timeout=10) for c in comms)))
    replies = await asyncio.gather(*(subscribe(c) for c in comms))
    assert {r["type"] for r in replies} == {"snapshot"}
    layer = get_channel_layer()
    assert len(layer.groups[group_name(TASK)]) == 1
    assert len(source.calls) < 200  # snapshot reads were shared
    await publish(DONE)
    received = await asyncio.gather(*(frame(c) for c in comms))
    assert {json.dumps(r, sort_keys=True) for r in received} == {
        json.dumps({"type": "event", "event": DONE.to_dict()}, sort_keys=True)
    }
    await asyncio.gather(*(c.disconnect(timeout=10) for c in comms))
    await asyncio.gather(*(c.wait(timeout=10) for c in comms))
    assert not layer.groups.get(group_name(TASK))


async def test_no_database_hop_per_message(
    ws: WebsocketCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []

    async def recording_hop() -> None:
        hops.append("close_old_connections")

    monkeypatch.setattr("channels.consumer.aclose_old_connections", recording_hop)
    monkeypatch.setattr("channels.generic.websocket.aclose_old_connections", recording_hop)
    await subscribe(ws)
    for event in (STARTED, P1, DONE):
        await publish(event)
        await frame(ws)
    await ws.send_to(text_data="not json")
    await frame(ws)
    assert hops == []


# -- malformed frames and back-pressure ----------------------------------------------------


async def test_oversized_frames_close_with_4413(ws: WebsocketCommunicator) -> None:
    await ws.send_to(text_data=json.dumps({"type": "subscribe", "task_id": "x" * 5000}))
    frames, code = await closed_with(ws)
    assert code == 4413
    assert [f["code"] for f in frames] == [4413]


async def test_oversized_multibyte_and_binary_frames(source: FakeSource) -> None:
    comm = WebsocketCommunicator(build_app(source), PATH, headers=[ORIGIN])
    assert (await comm.connect(timeout=5))[0]
    await comm.send_to(bytes_data=b"\x00" * 10)
    assert (await frame(comm))["code"] == 4400
    await comm.send_to(text_data="é" * 2100)  # 2,100 characters, 4,200 bytes
    _, code = await closed_with(comm)
    assert code == 4413
    await comm.send_to(text_data="{}")  # ignored once closing
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)


async def test_too_many_malformed_frames_close_with_4400(ws: WebsocketCommunicator) -> None:
    for _ in range(7):
        await ws.send_to(text_data="{")
        assert (await frame(ws))["code"] == 4400
    await ws.send_to(text_data="[]")
    frames, code = await closed_with(ws)
    assert code == 4400
    assert frames[0]["code"] == 4400


class Lenient(TaskEventsConsumer):
    max_protocol_errors = 10**6


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_field = _json | st.text(max_size=120) | st.integers(min_value=-(2**70), max_value=2**70)
_frame_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "", "SUBSCRIBE"]) | _field},
    optional={"task_id": _field, "token": _field, "after": _field},
)
_valid_token_frames = st.builds(
    lambda task_id, after, extra: json.dumps(
        {"type": "subscribe", "task_id": task_id, "token": token(task_id), "after": after, **extra}
    ),
    st.sampled_from([TASK, OTHER, "x" * 90, "has space"]),
    _field,
    st.dictionaries(st.text(max_size=5), _field, max_size=2),
)
_frames = st.one_of(
    _valid_token_frames,
    st.text(max_size=200),
    _json.map(json.dumps),
    _frame_dicts.map(json.dumps),
    st.integers(min_value=4097, max_value=9000).map(lambda n: "[" * n),
    st.binary(max_size=64),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(_frames, max_size=6), lenient=st.booleans())
async def test_fuzzed_frames_get_error_frames_or_a_close_never_a_crash(
    frames: list[str | bytes], lenient: bool
) -> None:
    source = FakeSource()
    consumer = Lenient if lenient else TaskEventsConsumer
    comm = WebsocketCommunicator(build_app(source, consumer=consumer), PATH, headers=[ORIGIN])
    assert (await comm.connect(timeout=5))[0]
    for data in frames:
        key = "bytes" if isinstance(data, bytes) else "text"
        await comm.send_input({"type": "websocket.receive", key: data})
    # A valid subscribe afterwards: answered with its snapshot unless the fuzz closed us.
    await comm.send_json_to({"type": "subscribe", "task_id": PROBE, "token": token(PROBE)})
    for _ in range(len(frames) + 3):
        message = await comm.receive_output(timeout=5)
        if message["type"] == "websocket.close":
            assert message["code"] in {4400, 4401, 4403, 4413, 4419}
            break
        data = json.loads(message["text"])
        if data["type"] == "snapshot":
            assert data["event"] is None
            if data["task_id"] == PROBE:
                break
            continue
        assert data["type"] == "error", data
        assert data["code"] in {4400, 4401, 4403, 4409, 4413, 4419, 4429}, data
        assert isinstance(data["message"], str)
    else:
        raise AssertionError("neither the probe's snapshot nor a close arrived")
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)  # raises if the consumer crashed


async def test_a_client_that_falls_behind_is_closed_with_1013(source: FakeSource) -> None:
    class Small(TaskEventsConsumer):
        max_pending_frames = 4

    gate = asyncio.Event()
    inner = build_app(source, consumer=Small)
    sends = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def slow_send(message: Any) -> None:
            nonlocal sends
            if message["type"] == "websocket.send":
                sends += 1
                if sends > 1:  # the snapshot goes through, then the client stalls
                    await gate.wait()
            await send(message)

        await inner(scope, receive, slow_send)

    comm = WebsocketCommunicator(app, PATH, headers=[ORIGIN])
    assert (await comm.connect(timeout=5))[0]
    assert (await subscribe(comm))["type"] == "snapshot"
    for seq in range(1, 10):
        await publish(ev("task.progress", order_key(0, Phase.PROGRESS, seq)))
    await asyncio.wait_for(_until(lambda: sends >= 2), 5)
    hub = consumers.hub_for(get_channel_layer())
    await asyncio.wait_for(_until(lambda: hub.statistics().deliveries >= 9), 5)
    gate.set()
    frames, code = await closed_with(comm)
    assert code == 1013
    assert [f["event"]["order"] for f in frames] == [order_key(0, Phase.PROGRESS, 1)]
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)


async def _until(predicate: Any) -> None:
    from tests._support.waiting import wait_until_async

    await wait_until_async(predicate, timeout=5)


async def test_an_after_that_is_no_order_key_is_a_malformed_frame(
    ws: WebsocketCommunicator,
) -> None:
    for after in (7 * 10**9, -1, True, "5", 10**20):
        await ws.send_json_to(
            {"type": "subscribe", "task_id": TASK, "token": token(), "after": after}
        )
        reply = await frame(ws)
        assert (reply["type"], reply["code"]) == ("error", 4400), after
    assert (await subscribe(ws, after=None))["type"] == "snapshot"


async def test_an_unresolved_lazy_user_counts_as_nobody(source: FakeSource) -> None:
    class Unready:
        def __getattr__(self, name: str) -> Any:
            raise ValueError("Accessing scope user before it is ready.")

    inner = TaskEventsConsumer.as_asgi(snapshot_source=source)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope, user=Unready(), session=Unready())
        await inner(scope, receive, send)

    comm = WebsocketCommunicator(app, PATH, headers=[ORIGIN])
    assert (await comm.connect(timeout=5))[0]
    await comm.send_json_to({"type": "subscribe", "task_id": TASK, "token": token()})
    _, code = await closed_with(comm)
    assert code == 4403
    await comm.disconnect(timeout=5)
    await comm.wait(timeout=5)


# -- late events: every event once -------------------------------------------------------


async def test_a_late_subscriber_gets_every_event_once_whatever_its_order(
    ws: WebsocketCommunicator,
) -> None:
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": token(), "late": True})
    assert await frame(ws) == {"type": "snapshot", "task_id": TASK, "event": None}
    assert (await subscribe(ws, PROBE))["type"] == "snapshot"
    retried = ev(
        "task.retried",
        order_key(0, Phase.RETRIED),
        retry=RetryInfo(1, 3, "upstream 503"),
        error_type="ConnectionError",
        error_message="upstream 503",
    )
    received_again = ev("task.received", order_key(1, Phase.RECEIVED))
    # The retry's reason arrives after the next attempt's first event, a
    # duplicate comes twice, and the first run's received after its outcome.
    for event in (STARTED, received_again, retried, retried, DONE, P1):
        await publish(event)
    for expected in (STARTED, received_again, retried, DONE, P1):
        assert await frame(ws) == {"type": "event", "event": expected.to_dict()}
    await barrier(ws)  # nothing else came for TASK


async def test_a_late_subscriber_gets_what_the_snapshot_merge_knew(
    ws: WebsocketCommunicator, source: FakeSource
) -> None:
    source.answers[TASK] = P1
    source.gate = threading.Event()
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": token(), "late": True})
    await asyncio.to_thread(source.entered.wait, 10)
    for event in (P3, STARTED):
        await publish(event)
    hub = consumers.hub_for(get_channel_layer())
    await asyncio.wait_for(_until(lambda: hub.statistics().deliveries >= 2), 5)
    source.gate.set()
    # The newest in the snapshot frame, then the rest, oldest first.
    assert await frame(ws) == {"type": "snapshot", "task_id": TASK, "event": P3.to_dict()}
    assert await frame(ws) == {"type": "event", "event": STARTED.to_dict()}
    assert await frame(ws) == {"type": "event", "event": P1.to_dict()}


async def test_late_must_be_a_boolean(ws: WebsocketCommunicator) -> None:
    await ws.send_json_to({"type": "subscribe", "task_id": TASK, "token": token(), "late": 1})
    assert await frame(ws) == {
        "type": "error",
        "code": 4400,
        "message": "late must be true or false",
        "task_id": None,
    }


async def test_the_snapshot_knows_a_dispatch_this_process_made_before_anyone_watched(
    ws: WebsocketCommunicator,
) -> None:
    # What the emitter keeps of a task.sent nobody watched (aceleryctl.live.recent).
    entry = (TASK, "proj.add", None, 1_700_000_000.0, 0, None, "2026-01-01T01:00:03+01:00")
    recent.recent_dispatches().keep(entry)
    try:
        reply = await subscribe(ws)
    finally:
        recent.recent_dispatches()._entries.pop(TASK, None)
    assert reply["event"]["type"] == "task.sent"
    assert reply["event"]["eta"] == "2026-01-01T00:00:03+00:00"
