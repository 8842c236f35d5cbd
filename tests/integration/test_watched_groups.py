"""``live.sent.watched_groups`` against the installed channels_redis: it relies on
the layer's private ``_group_key`` and on how groups are stored, so a change there
must fail here."""

from __future__ import annotations

import asyncio

from channels_redis.core import RedisChannelLayer

from aceleryctl.events import group_name
from aceleryctl.live.sent import watched_groups
from tests._support.redis_server import RedisServer


def test_only_groups_with_a_live_member_are_watched(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        layer = RedisChannelLayer(hosts=[redis_server.url(9)], prefix="watched-test")
        watched, left, never = group_name("w-1"), group_name("w-2"), group_name("w-3")
        channel = await layer.new_channel()
        await layer.group_add(watched, channel)
        await layer.group_add(left, channel)
        await layer.group_discard(left, channel)
        try:
            found = await watched_groups(layer, [watched, left, never])
            layer.group_expiry = -2  # every member joined longer ago than that
            expired = await watched_groups(layer, [watched])
        finally:
            await layer.flush()
            await layer.close_pools()
        return found, expired

    found, expired = asyncio.run(scenario())
    assert found == [group_name("w-1")]
    assert expired == []
