"""The run-once guard's claims in Redis: one small Lua script per decision, one round trip.

:class:`RedisClaimStore` implements :class:`aceleryctl.worker.guard.ClaimStore`.
Its redis-py client is made on first use in each process (never carried across
a ``fork``: a prefork child that inherits the store makes its own), with every
socket operation bounded: ``connect_timeout`` and ``socket_timeout`` seconds,
no retries (the guard fails open instead, and must not stall the consumer for
redis-py's back-off). redis-py's client is thread-safe, so the threads pool's
threads share it.

Raises what redis-py raises (``redis.RedisError``, ``OSError``); the guard
catches it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisClaimStore"]

#: KEYS[1] the key; ARGV: the claim, its seconds, the copy that may take a running
#: claim over ("" for none), "1" when any copy may. A value is
#: "<state> <copy> <worker>". Returns {outcome, old or held value}.
_CLAIM: Final = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {1, ''}
end
local state, copy = string.match(held, '^(%S+) (%S+)')
if state == 'running' and (ARGV[4] == '1' or (ARGV[3] ~= '' and copy == ARGV[3])) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {2, held}
end
return {0, held}
"""

#: Delete KEYS[1] if it holds ARGV[1].
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisClaimStore:
    """Claims kept in the Redis at ``url`` (a ``redis://``, ``rediss://`` or
    ``unix://`` URL). Seconds for both timeouts."""

    def __init__(self, url: str, *, connect_timeout: float = 1.0, socket_timeout: float = 1.0):
        self.url = url
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._lock = threading.Lock()
        self._pid = 0
        self._client: Any = None
        self._claim: Any = None
        self._release: Any = None

    def _ready(self) -> tuple[Any, Any, Any]:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    client = redis.Redis.from_url(
                        self.url,
                        socket_connect_timeout=self.connect_timeout,
                        socket_timeout=self.socket_timeout,
                        retry=Retry(NoBackoff(), 0),
                        decode_responses=True,
                    )
                    self._client = client
                    self._claim = client.register_script(_CLAIM)
                    self._release = client.register_script(_RELEASE)
                    self._pid = os.getpid()
        return self._client, self._claim, self._release

    def claim(
        self, key: str, value: str, ttl: int, copy: str | None, any_copy: bool
    ) -> tuple[int, str]:
        """See :meth:`aceleryctl.worker.guard.ClaimStore.claim`: one ``EVALSHA``."""
        _, script, _ = self._ready()
        outcome, held = script(keys=[key], args=[value, ttl, copy or "", int(any_copy)])
        return int(outcome), str(held)

    def finish(self, key: str, value: str, ttl: int) -> None:
        """``SET key value EX ttl``."""
        client, _, _ = self._ready()
        client.set(key, value, ex=ttl)

    def release(self, key: str, value: str) -> None:
        """Delete ``key`` if it holds ``value``: one ``EVALSHA``."""
        _, _, script = self._ready()
        script(keys=[key], args=[value])

    def close(self) -> None:
        """Close this process's connections (the next call opens new ones)."""
        with self._lock:
            client, self._client, self._pid = self._client, None, 0
        if client is not None:
            client.close()
