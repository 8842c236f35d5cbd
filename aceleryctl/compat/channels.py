"""Django Channels and channels_redis internals aceleryctl relies on.

The ``aceleryctl.W003`` check walks the project's ASGI application to learn
whether the websocket consumer is routed. Channels documents how to build a
routing tree, not how to read one back: the attributes below are what its
classes happen to store. If one is renamed the walk stops finding the consumer
behind that node and the check stays silent (a missed warning, never an error).

The web process's live ``task.sent`` asks channels_redis which groups have a
member (:func:`redis_groups_with_members`), which needs how its
``RedisChannelLayer`` stores groups: a private key function, its sharding and its
per-shard connections.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["ASGI_CHILD_ATTRIBUTES", "redis_groups_with_members", "routed_consumer_class"]

#: Attributes through which one ASGI application holds others:
#: ``ProtocolTypeRouter.application_mapping``, ``URLRouter.routes``,
#: Django's ``URLPattern.callback`` and a resolver's ``url_patterns``,
#: ``BaseMiddleware.inner``, and ``app`` (common in third-party middleware).
ASGI_CHILD_ATTRIBUTES: Final = (
    "application_mapping",
    "routes",
    "url_patterns",
    "callback",
    "inner",
    "app",
)


def routed_consumer_class(node: object) -> Any:
    """The consumer class behind an ``AsyncConsumer.as_asgi()`` application, or ``None``.

    ``as_asgi()`` returns a function carrying ``consumer_class`` (undocumented).
    """
    return getattr(node, "consumer_class", None)


# ARGV[1]: the exclusive lowest join time that counts, as "(t"; ARGV[2]: the group
# keys, one per line. channels_redis keeps a group as a sorted set of channel ->
# join time, and its group_send skips members older than group_expiry: count
# those within it. Returns the 1-based positions of the groups that have one, so
# that the usual reply (nobody watches) is an empty list. The keys travel as one
# argument: packing and sending hundreds of separate arguments cost more on the
# emitter thread than the lookup itself. (Not for Redis Cluster, which
# channels_redis does not use: it shards over separate servers itself.)
_COUNT_MEMBERS: Final = """
local watched = {}
local i = 0
for key in string.gmatch(ARGV[2], "[^\\n]+") do
  i = i + 1
  if redis.call('ZCOUNT', key, ARGV[1], '+inf') > 0 then
    watched[#watched + 1] = i
  end
end
return watched
"""


async def redis_groups_with_members(layer: Any, groups: Sequence[str]) -> list[str] | None:
    """The groups among ``groups`` that have a member now, on a channels_redis
    layer; ``None`` for a layer not shaped like channels_redis' ``RedisChannelLayer``.

    One ``EVAL`` per shard counts each group's members that joined within
    ``group_expiry`` (those its ``group_send`` delivers to). Relies on
    channels_redis' private ``_group_key(group)`` (the group's sorted-set key),
    its undocumented ``consistent_hash(group)`` (the shard) and
    ``connection(index)`` (that shard's client), its ``group_expiry`` and on a
    group being a sorted set of channel to join time (``group_add``'s ``ZADD``).
    Any of them missing: ``None``, and the caller treats every group as watched
    (``task.sent`` to groups nobody may be in, never lost). Runs per batch of
    ``task.sent`` on the emitter's thread.

    Raises:
        Exception: what the layer's Redis client raises.
    """
    key_of = getattr(layer, "_group_key", None)
    shard_of = getattr(layer, "consistent_hash", None)
    client_of = getattr(layer, "connection", None)
    expiry = getattr(layer, "group_expiry", None)
    if key_of is None or shard_of is None or client_of is None or not isinstance(expiry, int):
        return None
    by_shard: defaultdict[int, list[str]] = defaultdict(list)
    for group in groups:
        by_shard[shard_of(group)].append(group)
    since = f"({int(time.time()) - expiry}"
    watched: list[str] = []
    for index, members in by_shard.items():
        keys = b"\n".join(_as_bytes(key_of(group)) for group in members)
        positions = await client_of(index).eval(_COUNT_MEMBERS, 0, since, keys)
        watched.extend(members[int(position) - 1] for position in positions)
    return watched


def _as_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode()
