"""aceleryctl's browser client (client.js) against the live server, run by Node.

Node 20 has the browser's ``WebSocket`` behind ``--experimental-websocket``; the
module under test is the same file browsers load.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from aceleryctl.events import Phase, Progress, TaskEvent, group_name, order_key
from aceleryctl.tokens import make_subscription_token
from tests._support._process import stop_process
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until, wait_until_async

from .asgi_app import SESSION_COOKIE
from .conftest import REPO_ROOT, LiveServer, accepts, launch

CLIENT_JS = REPO_ROOT / "aceleryctl" / "static" / "aceleryctl" / "client.js"
PROBE = Path(__file__).with_name("client_probe.mjs")
SESSION = "js-session"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js >= 20")


def ev(kind: str, task_id: str, order: int, **fields: Any) -> TaskEvent:
    state = {"task.started": "STARTED", "task.progress": "PROGRESS", "task.succeeded": "SUCCESS"}
    return TaskEvent(
        type=kind, task_id=task_id, task_name="js.work", state=state[kind],
        timestamp=1.0, order=order, **fields,
    )  # fmt: skip


class Probe:
    """The Node process running client.js; its stdout is one JSON object a line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls,
        url: str,
        origin: str,
        task_id: str,
        token: str,
        backoff: dict[str, float] | None = None,
    ) -> Probe:
        """Run client.js's ``subscribe`` against ``url`` as a page of ``origin``
        would; ``backoff`` is merged over the probe's short delays."""
        process = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", "--no-warnings", str(PROBE), str(CLIENT_JS),
            url, task_id, token, origin, f"{SESSION_COOKIE}={SESSION}", json.dumps(backoff or {}),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return cls(process)

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert raw, "the Node probe exited without a line"
        data: dict[str, Any] = json.loads(raw)
        return data

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), 10)


@pytest.fixture
def own_server(redis_server: RedisServer) -> Iterator[dict[str, LiveServer]]:
    """A uvicorn of this test's own, which the test may restart on the same port."""
    log_path = Path(tempfile.mkstemp(prefix="aceleryctl-uvicorn-js-", suffix=".log")[1])
    holder = {"server": launch(redis_server, log_path)}
    wait_until(lambda: accepts(holder["server"].port), timeout=30)
    try:
        yield holder
    finally:
        stop_process(holder["server"].process, timeout=10)
        log_path.unlink(missing_ok=True)


async def test_client_follows_reconnects_resumes_and_closes_on_terminal(
    own_server: dict[str, LiveServer], redis_server: RedisServer
) -> None:
    server = own_server["server"]
    task_id = str(uuid.uuid4())
    token = make_subscription_token(task_id, session_key=SESSION)
    members = redis.Redis.from_url(server.layer_url, socket_timeout=5)
    layer = RedisChannelLayer(hosts=[server.layer_url])
    key = f"asgi:group:{group_name(task_id)}"
    steps = [
        ev("task.started", task_id, order_key(0, Phase.STARTED)),
        ev("task.progress", task_id, order_key(0, Phase.PROGRESS, 1), progress=Progress(1, 3)),
        ev("task.progress", task_id, order_key(0, Phase.PROGRESS, 2), progress=Progress(2, 3)),
        ev("task.succeeded", task_id, order_key(0, Phase.TERMINAL), result="ok"),
    ]
    # While the server restarts, every attempt fails to open: allow plenty of them.
    backoff = {"maxConnectFailures": 10_000}
    probe = await Probe.start(server.ws_url, server.origin, task_id, token, backoff)
    try:
        assert await probe.line() == {"kind": "subscribed"}
        assert members.zcard(key) == 1
        for event in steps[:2]:
            await layer.group_send(group_name(task_id), event.to_layer_message())
        assert (await probe.line())["event"] == steps[0].to_dict()
        assert await probe.line() == {"kind": "on.progress", "order": steps[1].order}
        assert (await probe.line())["event"] == steps[1].to_dict()

        # The server goes away and comes back on the same port: the client retries
        # with backoff and resumes after the last order it saw.
        stop_process(server.process, timeout=10)
        assert members.zcard(key) == 0  # a graceful shutdown leaves no member behind
        restarted = launch(redis_server, server.log_path, port=server.port)
        own_server["server"] = restarted
        wait_until(lambda: accepts(restarted.port), timeout=30)
        assert await probe.line() == {"kind": "subscribed"}  # the snapshot: nothing newer
        for event in (steps[1], steps[0], steps[2], steps[3]):  # stale ones first
            await layer.group_send(group_name(task_id), event.to_layer_message())
        assert await probe.line() == {"kind": "on.progress", "order": steps[2].order}
        assert (await probe.line())["event"] == steps[2].to_dict()
        assert (await probe.line())["event"] == steps[3].to_dict()
        assert await probe.line() == {"kind": "close", "reason": "terminal"}
        await asyncio.wait_for(probe.process.wait(), 10)
        await wait_until_async(lambda: members.zcard(key) == 0, timeout=30)
    finally:
        await probe.stop()
        members.close()
        await layer.close_pools()


async def test_client_reports_a_refusal_and_stops(own_server: dict[str, LiveServer]) -> None:
    server = own_server["server"]
    probe = await Probe.start(server.ws_url, server.origin, "some-task", "")
    try:
        error = await probe.line()
        assert (error["kind"], error["code"]) == ("error", 4401)
        assert await probe.line() == {"kind": "close", "reason": "refused", "code": 4401}
        assert await asyncio.wait_for(probe.process.wait(), 10) == 0
    finally:
        await probe.stop()


async def test_a_foreign_origin_is_a_final_refusal_not_a_lost_connection(
    live_ws_server: LiveServer,
) -> None:
    task_id = str(uuid.uuid4())
    token = make_subscription_token(task_id, session_key=SESSION)  # even a valid one
    members = redis.Redis.from_url(live_ws_server.layer_url, socket_timeout=5)
    # The default backoff: were this a lost connection, the probe would still be
    # retrying long after the line below was due.
    probe = await Probe.start(
        live_ws_server.ws_url, "https://evil.example", task_id, token, {"initialDelay": 500}
    )
    try:
        # No error frame, no snapshot, no event: only the close.
        assert await probe.line() == {"kind": "close", "reason": "refused", "code": 4403}
        assert await asyncio.wait_for(probe.process.wait(), 10) == 0
        assert members.zcard(f"asgi:group:{group_name(task_id)}") == 0
    finally:
        await probe.stop()
        members.close()


async def test_the_client_gives_up_on_attempts_that_never_open_but_not_on_drops() -> None:
    """A server that opens and drops the connection is retried for as long as it
    takes; one that refuses the handshake over HTTP (a proxy, a server without
    aceleryctl) only ``maxConnectFailures`` times in a row."""
    drops = 3  # connections that open, then close with 1011 (not final)
    attempts: list[str] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        attempts.append(request.path)
        if len(attempts) > drops:
            return connection.respond(HTTPStatus.FORBIDDEN, "refused by a proxy\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        await connection.close(1011)

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        backoff = {"initialDelay": 10, "maxDelay": 20, "maxConnectFailures": 2}
        url = f"ws://127.0.0.1:{port}/ws/aceleryctl/tasks/"
        probe = await Probe.start(url, f"http://127.0.0.1:{port}", "some-task", "t", backoff)
        try:
            assert await probe.line() == {"kind": "close", "reason": "gave-up", "code": 1006}
            assert await asyncio.wait_for(probe.process.wait(), 10) == 0
        finally:
            await probe.stop()
    assert len(attempts) == drops + 2  # more drops than maxConnectFailures, then 2 refusals
