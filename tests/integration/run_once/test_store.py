"""The guard's Redis claim store against a real redis-server: the claim script's three
answers and expiries, done marks, conditional release, one client per process, and
bounded failure (no retries) against a silent server and a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aceleryctl.worker.guard import CLAIMED, HELD, TAKEN_OVER
from aceleryctl.worker.guard_store import RedisClaimStore
from tests._support._process import free_port
from tests._support.redis_server import RedisServer
from tests._support.tarpit import Tarpit

from .conftest import CLAIMS_DB, unique


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisClaimStore]:
    made = RedisClaimStore(redis_server.url(CLAIMS_DB))
    yield made
    made.close()


@pytest.fixture
def claims(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client(CLAIMS_DB)
    yield client
    client.close()


def test_claim_take_over_and_held(store: RedisClaimStore, claims: redis.Redis) -> None:
    key = unique("aceleryctl:once:store")
    assert store.claim(key, "running tag-a w1", 60, "tag-a", False) == (CLAIMED, "")
    assert claims.get(key) == b"running tag-a w1"
    assert 58 <= claims.ttl(key) <= 60
    # Another copy: held, nothing changed.
    assert store.claim(key, "running tag-b w2", 600, "tag-b", False) == (
        HELD,
        "running tag-a w1",
    )
    assert claims.get(key) == b"running tag-a w1"
    assert claims.ttl(key) <= 60
    # The same copy back: taken over, with the new expiry.
    assert store.claim(key, "running tag-a w2", 600, "tag-a", False) == (
        TAKEN_OVER,
        "running tag-a w1",
    )
    assert claims.get(key) == b"running tag-a w2"
    assert claims.ttl(key) > 60
    # Done is never taken over, not even by its own copy.
    store.finish(key, "done tag-a w2", 3_000)
    assert store.claim(key, "running tag-a w3", 600, "tag-a", True) == (HELD, "done tag-a w2")
    assert 2_990 <= claims.ttl(key) <= 3_000


def test_without_a_copy_any_copy_may_take_a_running_claim_over(
    store: RedisClaimStore, claims: redis.Redis
) -> None:
    key = unique("aceleryctl:once:store")
    store.claim(key, "running - w1", 60, None, False)
    assert store.claim(key, "running - w2", 60, None, False) == (HELD, "running - w1")
    assert store.claim(key, "running - w2", 60, None, True) == (TAKEN_OVER, "running - w1")
    assert claims.get(key) == b"running - w2"
    store.finish(key, "done - w2", 60)
    assert store.claim(key, "running - w3", 60, None, True) == (HELD, "done - w2")


def test_release_removes_only_its_own_claim(store: RedisClaimStore, claims: redis.Redis) -> None:
    key = unique("aceleryctl:once:store")
    store.claim(key, "running tag-a w1", 60, None, False)
    store.release(key, "running tag-b w2")
    assert claims.exists(key) == 1
    store.release(key, "running tag-a w1")
    assert claims.exists(key) == 0
    store.release(key, "running tag-a w1")  # gone already: nothing happens


#: Run in a fresh interpreter (one thread, so that ``fork`` is safe and quiet):
#: claim in the parent, fork, claim in the child through the inherited store, then
#: use the parent's connection again.
_FORKING = """
import os, sys
from aceleryctl.worker.guard_store import RedisClaimStore
url, key = sys.argv[1], sys.argv[2]
store = RedisClaimStore(url)
assert store.claim(key, "running tag-a parent", 60, None, False) == (1, "")
pid = os.fork()
if pid == 0:
    try:
        ok = store.claim(key + ":child", "running tag-c child", 60, None, False) == (1, "")
    finally:
        os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert store.claim(key, "running tag-b parent", 60, None, False) == (0, "running tag-a parent")
print("ok")
"""


def test_a_forked_child_uses_a_client_of_its_own(
    redis_server: RedisServer, claims: redis.Redis
) -> None:
    key = unique("aceleryctl:once:store")
    root = Path(__file__).resolve().parents[3]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _FORKING, redis_server.url(CLAIMS_DB), key],
        cwd=root,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert claims.get(key + ":child") == b"running tag-c child"


def test_a_silent_server_fails_within_the_socket_timeout_without_retrying() -> None:
    with Tarpit() as tarpit:
        store = RedisClaimStore(f"redis://127.0.0.1:{tarpit.port}/0", socket_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.claim("aceleryctl:once:x:0", "running - w", 60, None, False)
        elapsed = time.monotonic() - started
        assert tarpit.accepted == 1  # one connection, no retry
        assert elapsed < 5.0  # redis-py's default retries would take several seconds
        store.close()


def test_a_closed_port_fails_at_once() -> None:
    store = RedisClaimStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        store.finish("aceleryctl:once:x:0", "done - w", 60)
    store.close()
