"""Live events and progress of a task enqueued through the Django Tasks backend:
the browser's stream (the channel-layer group of the task's id) carries them as for
any Celery task, and a subscription token for the result's id is one for the task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from channels_redis.core import RedisChannelLayer

from aceleryctl import make_subscription_token
from aceleryctl.events import TaskEvent, group_name
from aceleryctl.tokens import check_subscription_token
from tests._support.redis_server import RedisServer

from . import functions
from .conftest import LAYER_DB

pytestmark = pytest.mark.usefixtures("tasks_controller")


@pytest.fixture
async def layer(redis_server: RedisServer) -> AsyncIterator[RedisChannelLayer]:
    host = {"address": redis_server.url(LAYER_DB), "socket_timeout": 15.0}
    channel_layer = RedisChannelLayer(hosts=[host])
    try:
        yield channel_layer
    finally:
        await channel_layer.close_pools()


async def test_the_live_stream_carries_progress_and_the_end(
    layer: RedisChannelLayer, tasks_records: redis.Redis
) -> None:
    result = await functions.progress.aenqueue(3, "gate:live")
    token = make_subscription_token(result.id, session_key="s1")
    check_subscription_token(token, result.id, user=None, session_key="s1")
    channel = await layer.new_channel()
    await layer.group_add(group_name(result.id), channel)
    tasks_records.rpush("gate:live", "open")
    events: list[TaskEvent] = []
    try:
        async with asyncio.timeout(30):
            while not events or events[-1].type != "task.succeeded":
                message: dict[str, Any] = await layer.receive(channel)
                events.append(TaskEvent.from_dict(message["event"]))
    finally:
        await layer.group_discard(group_name(result.id), channel)
    progress = [e.progress for e in events if e.type == "task.progress"]
    assert progress, [e.type for e in events]
    assert progress[-1] is not None
    assert progress[-1].current == 3
    assert all(e.task_id == result.id for e in events)
    await result.arefresh()
    assert result.return_value == 3
