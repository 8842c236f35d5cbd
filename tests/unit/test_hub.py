"""The process-local hub: one group membership per task, however many local listeners."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aceleryctl.events import Phase, Progress, TaskEvent, group_name, order_key
from aceleryctl.live.hub import TaskHub, hub_for
from tests._support.waiting import wait_until_async

TASK = "0b6f2a4e-6a4c-4c35-9d57-1d4f5f1d2c3b"


def progress(seq: int, task_id: str = TASK) -> TaskEvent:
    return TaskEvent(
        type="task.progress",
        task_id=task_id,
        task_name="t",
        state="PROGRESS",
        timestamp=1.0,
        order=order_key(0, Phase.PROGRESS, seq),
        progress=Progress(seq, 10),
    )


class RecordingLayer:
    """A channel layer that records every group call and can hold them at a gate.

    ``group_send`` delivers to the member channels' queues, like a real layer.
    """

    group_expiry = 86400

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.groups: dict[str, set[str]] = {}
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail_next: dict[str, BaseException] = {}
        self.channels_made = 0

    async def new_channel(self) -> str:
        self.channels_made += 1
        return f"specific.test!{self.channels_made}"

    async def receive(self, channel: str) -> dict[str, Any]:
        return await self.queues.setdefault(channel, asyncio.Queue()).get()

    async def _call(self, op: str, group: str, channel: str) -> None:
        self.calls.append((op, group, channel))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if op in self.fail_next:
            raise self.fail_next.pop(op)

    async def group_add(self, group: str, channel: str) -> None:
        await self._call("add", group, channel)
        self.groups.setdefault(group, set()).add(channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._call("discard", group, channel)
        self.groups.get(group, set()).discard(channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        for channel in self.groups.get(group, ()):
            self.queues.setdefault(channel, asyncio.Queue()).put_nowait(message)

    def ops(self, op: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] == op]


class Recorder:
    """A listener that keeps what it got."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self.frames: list[str] = []

    def __call__(self, event: TaskEvent, frame: str) -> None:
        self.events.append(event)
        self.frames.append(frame)


@pytest.fixture
async def layer() -> RecordingLayer:
    return RecordingLayer()


@pytest.fixture
async def hub(layer: RecordingLayer) -> AsyncIterator[TaskHub]:
    hub = TaskHub(layer)
    yield hub
    await hub.aclose()
    assert hub._reader is None
    assert hub._refresher is None


async def test_a_thousand_listeners_cost_one_add_and_one_discard(
    layer: RecordingLayer, hub: TaskHub
) -> None:
    layer.gate = asyncio.Event()  # hold the group_add until everyone has asked
    recorders = [Recorder() for _ in range(1000)]
    joins = [asyncio.ensure_future(hub.subscribe(TASK, r)) for r in recorders]
    await asyncio.wait_for(layer.entered.wait(), 10)
    await wait_until_async(lambda: hub.listening(TASK) == 1000, timeout=10)
    assert not any(j.done() for j in joins)  # nobody returns before the group holds us
    layer.gate.set()
    await asyncio.wait_for(asyncio.gather(*joins), 10)
    assert layer.ops("add") == [("add", group_name(TASK), "specific.test!1")]

    await layer.group_send(group_name(TASK), progress(1).to_layer_message())
    await wait_until_async(lambda: all(r.events for r in recorders), timeout=10)
    assert {r.events[0] for r in recorders} == {progress(1)}
    assert len({id(r.frames[0]) for r in recorders}) == 1  # encoded once, shared

    await asyncio.wait_for(asyncio.gather(*(hub.unsubscribe(TASK, r) for r in recorders)), 10)
    assert layer.ops("discard") == [("discard", group_name(TASK), "specific.test!1")]
    assert layer.groups[group_name(TASK)] == set()
    stats = hub.statistics()
    assert (stats.group_adds, stats.group_discards, stats.tasks, stats.listeners) == (1, 1, 0, 0)
    assert stats.messages == 1
    assert stats.deliveries == 1000
    # The reader stays up while the hub is open (restarting it could wait out
    # channels_redis's blocking pop); aclose() in the fixture stops it.
    assert hub._reader is not None
    assert not hub._reader.done()


async def test_each_task_has_its_own_membership(layer: RecordingLayer, hub: TaskHub) -> None:
    a, b = Recorder(), Recorder()
    await hub.subscribe("task-a", a)
    await hub.subscribe("task-b", b)
    await hub.subscribe("task-b", a)
    assert [c[1] for c in layer.ops("add")] == [group_name("task-a"), group_name("task-b")]
    await layer.group_send(group_name("task-b"), progress(1, "task-b").to_layer_message())
    await layer.group_send(group_name("task-a"), progress(2, "task-a").to_layer_message())
    await wait_until_async(lambda: len(a.events) == 2 and b.events, timeout=5)
    assert [e.task_id for e in a.events] == ["task-b", "task-a"]
    assert [e.task_id for e in b.events] == ["task-b"]
    await hub.unsubscribe("task-b", b)
    assert layer.ops("discard") == []  # a still follows task-b
    await hub.unsubscribe("task-b", a)
    assert [c[1] for c in layer.ops("discard")] == [group_name("task-b")]


async def test_a_listener_gets_nothing_after_unsubscribing(
    layer: RecordingLayer, hub: TaskHub
) -> None:
    stays, leaves = Recorder(), Recorder()
    await hub.subscribe(TASK, stays)
    await hub.subscribe(TASK, leaves)
    await hub.unsubscribe(TASK, leaves)
    await hub.unsubscribe(TASK, leaves)  # twice is harmless
    await layer.group_send(group_name(TASK), progress(1).to_layer_message())
    await wait_until_async(lambda: stays.events, timeout=5)
    assert leaves.events == []


async def test_subscribing_while_the_last_one_leaves_joins_again(
    layer: RecordingLayer, hub: TaskHub
) -> None:
    first, second = Recorder(), Recorder()
    await hub.subscribe(TASK, first)
    layer.gate = asyncio.Event()
    layer.entered.clear()
    leaving = asyncio.ensure_future(hub.unsubscribe(TASK, first))
    await asyncio.wait_for(layer.entered.wait(), 5)  # the discard is under way
    joining = asyncio.ensure_future(hub.subscribe(TASK, second))
    layer.gate.set()
    await asyncio.wait_for(asyncio.gather(leaving, joining), 5)
    assert [c[0] for c in layer.calls] == ["add", "discard", "add"]
    assert layer.groups[group_name(TASK)] == {"specific.test!1"}
    await layer.group_send(group_name(TASK), progress(1).to_layer_message())
    await wait_until_async(lambda: second.events, timeout=5)


async def test_a_failed_join_is_reported_retried_and_cleaned_up(
    layer: RecordingLayer, hub: TaskHub
) -> None:
    layer.fail_next["add"] = ConnectionError("redis is down")
    first = Recorder()
    with pytest.raises(ConnectionError):
        await hub.subscribe(TASK, first)
    # The failed join may have reached Redis: the next subscriber joins again...
    second = Recorder()
    await hub.subscribe(TASK, second)
    assert len(layer.ops("add")) == 2
    # ...and when everyone has left, the membership is discarded once.
    await hub.unsubscribe(TASK, first)
    await hub.unsubscribe(TASK, second)
    assert len(layer.ops("discard")) == 1
    assert hub.statistics().tasks == 0


async def test_a_failed_discard_is_logged_not_raised(
    layer: RecordingLayer, hub: TaskHub, caplog: pytest.LogCaptureFixture
) -> None:
    listener = Recorder()
    await hub.subscribe(TASK, listener)
    layer.fail_next["discard"] = ConnectionError("redis is down")
    with caplog.at_level(logging.WARNING, logger="aceleryctl.hub"):
        await hub.unsubscribe(TASK, listener)
    assert "group_discard failed" in caplog.text
    assert hub.statistics().tasks == 0


async def test_a_cancelled_subscriber_does_not_cancel_the_join(
    layer: RecordingLayer, hub: TaskHub
) -> None:
    layer.gate = asyncio.Event()
    listener = Recorder()
    joining = asyncio.ensure_future(hub.subscribe(TASK, listener))
    await asyncio.wait_for(layer.entered.wait(), 5)
    joining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joining
    layer.gate.set()
    await wait_until_async(lambda: layer.groups.get(group_name(TASK)), timeout=5)
    await hub.unsubscribe(TASK, listener)
    assert len(layer.ops("discard")) == 1


async def test_bad_messages_and_raising_listeners_are_contained(
    layer: RecordingLayer, hub: TaskHub, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(event: TaskEvent, frame: str) -> None:
        raise RuntimeError("listener bug")

    good = Recorder()
    await hub.subscribe(TASK, boom)
    await hub.subscribe(TASK, good)
    group = group_name(TASK)
    with caplog.at_level(logging.WARNING, logger="aceleryctl.hub"):
        await layer.group_send(group, {"type": "task.progress"})
        await layer.group_send(group, {"type": "task.progress", "event": {"order": "x"}})
        await layer.group_send(group, {"type": "task.progress", "event": None})
        await layer.group_send(group, progress(3).to_layer_message())
        await wait_until_async(lambda: good.events, timeout=5)
    assert good.events == [progress(3)]
    stats = hub.statistics()
    assert (stats.messages, stats.dropped) == (4, 3)
    assert "listener bug" in caplog.text


async def test_memberships_are_refreshed_before_the_layer_expires_them() -> None:
    layer = RecordingLayer()
    layer.group_expiry = 0  # no expiry known: refresh only when asked
    assert TaskHub(layer).refresh_after is None
    assert TaskHub(RecordingLayer()).refresh_after == 43200.0  # half of a day
    hub = TaskHub(layer, refresh_after=0.01)
    try:
        await hub.subscribe(TASK, Recorder())
        await wait_until_async(lambda: len(layer.ops("add")) >= 3, timeout=10)
        assert hub.statistics().group_refreshes >= 2
        assert {c[1] for c in layer.ops("add")} == {group_name(TASK)}
    finally:
        await hub.aclose()


async def test_hub_for_is_one_per_loop_and_layer(layer: RecordingLayer) -> None:
    assert hub_for(layer) is hub_for(layer)
    assert hub_for(layer) is not hub_for(RecordingLayer())


async def test_the_layer_timeout_bounds_a_join(layer: RecordingLayer) -> None:
    layer.gate = asyncio.Event()  # never released: the layer hangs
    hub = TaskHub(layer, layer_timeout=0.05)
    listener = Recorder()
    with pytest.raises(TimeoutError):
        await hub.subscribe(TASK, listener)
    layer.gate.set()
    await hub.unsubscribe(TASK, listener)
    await hub.aclose()
