"""Live task events, end to end: worker signal to websocket client, progress-call cost, fan-out.

    python -m bench.events            # full figures (about a minute)
    python -m bench.events --smoke    # tiny counts, CI checks that it runs; docs untouched

Everything runs on 127.0.0.1, started here and stopped by PID (even on error):
a private ``redis-server`` (broker db 0, results db 1, channels_redis db 2); a
prefork ``celery worker`` (2 children) of :mod:`bench._events_app`, Django set up
with ``CHANNEL_LAYERS`` on channels_redis and ``PROGRESS_MAX_RATE`` raised (see
``--rate``) so that paced reports all go out; a solo ``celery worker`` with events
off (Celery's own round trip, for reference); and uvicorn serving aceleryctl's
websocket consumer. This process dispatches with ``AsyncCeleryController`` and is
the websocket client (the ``websockets`` package, one asyncio loop).

Figures:

1. worker event to websocket client latency: the event's ``timestamp`` (set in
   the worker when it is built) to the client's receipt of the frame, both
   ``time.time()`` on this machine; for the lifecycle events (received, started,
   succeeded) of ``--tasks`` quick tasks dispatched one at a time, each followed on
   one connection, and the ``--paced`` progress events of one task. Apart, not in
   the total: the lifecycle events of ``--burst-tasks`` tasks dispatched in bursts
   of ``--burst`` at once. For reference, Celery's ``send_task()`` -> ``.get()``
   round trip to the solo worker.
2. how long ``report_progress`` blocks the task, timed inside the task with
   ``time.perf_counter_ns`` and returned as its result: reports ``--gap`` seconds
   apart (each goes out at once: throttle, result-backend write, hand-off to the
   emitter), then ``--tight`` reports in a tight loop (nearly all held by the
   throttle); and, for comparison, ``--direct`` calls of Celery's own
   ``update_state`` (the result-backend write a report sent at once includes).
3. ``--clients`` websocket clients connecting and subscribing to one task at once,
   then a real task dispatched: the time from its terminal event's creation in the
   worker until the last client has it; failed handshakes and subscribes; group
   members in Redis while they follow (the server's hub: expect 1) and after all
   left at once (expect 0). Repeated ``--rounds`` times.

The machine's load (``uptime``) is printed before and after, and goes to the docs.
Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import channels
import channels_redis
import redis
import uvicorn
import websockets
from celery import Celery
from websockets.asyncio.client import ClientConnection, connect

from aceleryctl import AsyncCeleryController
from aceleryctl.events import TERMINAL_TYPES, group_name
from bench import _events_settings as site
from bench._support import percentile, redis_server, uptime
from bench.dispatch import environment, replace_section
from tests._support._process import LoggedProcess, accepts, free_port, spawn
from tests._support.waiting import WaitTimeout, wait_until
from tests._support.websocket_server import WebsocketEndpoint, uvicorn_argv
from tests._support.worker import CeleryWorker

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKER_DB, RESULTS_DB, LAYER_DB = 0, 1, 2
PREFORK_QUEUE, SOLO_QUEUE = "bench-events", "bench-events-solo"
SESSION = "bench-session-of-the-dispatcher"
QUICK, PROGRESS = "bench.events.quick", "bench.events.progress"


@dataclass
class Config:
    tasks: int = 1000  # quick tasks whose lifecycle events are timed, one at a time
    burst: int = 8  # then tasks dispatched at once, in bursts of this many
    burst_tasks: int = 400  # tasks in all for the bursts
    paced: int = 1000  # progress reports that go out at once
    gap: float = 0.005  # seconds between them (> 1 / rate)
    tight: int = 3000  # progress reports in a tight loop (held by the throttle)
    direct: int = 300  # Celery update_state calls, for comparison
    rate: float = 250.0  # PROGRESS_MAX_RATE in the prefork worker
    roundtrips: int = 500  # send_task -> get() to the solo worker
    clients: int = 1000
    rounds: int = 3
    budget: float = 300.0  # seconds, at most, for the timed loops of (1)
    restarts: int = 40  # follow-leave-follow cycles with the hub idle in between
    restart_budget: float = 60.0  # seconds, at most, for them

    @classmethod
    def smoke(cls) -> Config:
        return cls(
            tasks=40,
            burst_tasks=16,
            paced=50,
            tight=200,
            direct=20,
            roundtrips=20,
            clients=50,
            rounds=1,
            budget=30,
            restarts=10,
            restart_budget=15,
        )


# -- processes -----------------------------------------------------------------------


def start_worker(
    label: str, queue: str, concurrency: int, env: dict[str, str], ready: Path, *extra: str
) -> CeleryWorker:
    """A ``celery worker`` of :mod:`bench._events_app` (prefork unless ``extra`` says
    otherwise), logging warnings and up only, that creates ``ready`` once it is ready
    to consume; not waited for."""
    return CeleryWorker.launch(
        app="bench._events_app",
        name=f"bench-{label}-{os.getpid()}",
        queues=[queue],
        env={**env, "ACELERYCTL_BENCH_READY_FILE": str(ready)},
        cwd=REPO_ROOT,
        concurrency=concurrency,
        extra_args=[*extra, "-l", "warning"],
    )


def stop_child(name: str, child: LoggedProcess, keep_log: bool = False) -> None:
    """SIGTERM the child; after 20 s SIGKILL its own process group (its pool)."""
    child.stop(20.0)
    # A pool child left behind by a warm shutdown that the main process survived:
    # the group is this child's own (start_new_session), created here.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signal.SIGKILL)
    if keep_log:
        print(f"{name} log kept: {child.log_path}")
    else:
        child.remove_log()


def wait_for(
    what: str, ready: Callable[[], bool], children: dict[str, LoggedProcess], timeout: float
) -> None:
    """Wait for ``ready()``; fail (quoting logs) if a child exits first or time is up."""

    def ready_or_gone() -> bool:
        return ready() or not all(c.is_alive() for c in children.values())

    with contextlib.suppress(WaitTimeout):
        wait_until(ready_or_gone, timeout=timeout, interval=0.05)
    if not ready():
        logs = "\n".join(f"--- {name}:\n{c.log_tail(30)}" for name, c in children.items())
        raise RuntimeError(f"{what} did not start\n{logs}")


@dataclass
class Servers(WebsocketEndpoint):
    url: str
    port: int
    #: "prefork" and "solo" (the workers), "uvicorn"
    children: dict[str, LoggedProcess]

    def db(self, n: int) -> str:
        return f"{self.url}/{n}"


@contextlib.contextmanager
def servers(url: str, rate: float, keep_logs: bool = False) -> Iterator[Servers]:
    """The two workers and uvicorn, started in parallel; all stopped on the way out."""
    ready_dir = Path(tempfile.mkdtemp(prefix="aceleryctl-bench-ready-"))
    common = {
        "DJANGO_SETTINGS_MODULE": "bench._events_settings",
        "ACELERYCTL_BENCH_BROKER_URL": f"{url}/{BROKER_DB}",
        "ACELERYCTL_BENCH_RESULT_BACKEND": f"{url}/{RESULTS_DB}",
        site.LAYER_ENV: f"{url}/{LAYER_DB}",
    }
    children: dict[str, LoggedProcess] = {}
    try:
        children["prefork"] = start_worker(
            "prefork", PREFORK_QUEUE, 2, {**common, site.RATE_ENV: str(rate)}, ready_dir / "prefork"
        )
        children["solo"] = start_worker(
            "solo",
            SOLO_QUEUE,
            1,
            {**common, site.EVENTS_ENV: "0"},
            ready_dir / "solo",
            "--pool=solo",
        )
        port = free_port()
        children["uvicorn"] = spawn(
            uvicorn_argv("bench._events_app:application", port, "--ws", "websockets"),
            env=common,
            cwd=REPO_ROOT,
            log_prefix="aceleryctl-bench-uvicorn-",
        )
        wait_for("uvicorn", lambda: accepts(port), children, 60)
        wait_for("prefork worker", (ready_dir / "prefork").exists, children, 90)
        wait_for("solo worker", (ready_dir / "solo").exists, children, 90)
        yield Servers(url, port, children)
    finally:
        for name, child in reversed(children.items()):
            stop_child(name, child, keep_log=keep_logs)
        for leftover in ready_dir.iterdir():
            leftover.unlink()
        ready_dir.rmdir()


#: A hub warning that the restart probe sets off (hub_restarts): counted, not a failure.
KNOWN = "channel layer receive failed; retrying"
_CONTINUED = re.compile(
    r"^(\s|Traceback|The above exception|During handling|[\w.]*(Error|Exception)(:|$)|$)"
)


def records(text: str) -> list[str]:
    """A log cut into records: a message line with its traceback, if any."""
    out: list[str] = []
    for line in text.splitlines():
        if out and _CONTINUED.match(line):
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def problems(child: LoggedProcess) -> tuple[list[str], int]:
    """What went wrong in a child's log, and how many known hub warnings it holds."""
    words = ("Traceback", "ERROR", "Event loop is closed", "group_send", "queue is full")
    found, known = [], 0
    for record in records(child.log()):
        if record.startswith(KNOWN):
            known += 1
        elif any(w in record for w in words):
            found.append(record)
    return found, known


# -- websocket clients -----------------------------------------------------------------


def token_for(task_id: str) -> str:
    from aceleryctl.tokens import make_subscription_token

    return make_subscription_token(task_id, session_key=SESSION)


async def open_client(s: Servers) -> ClientConnection:
    return await connect(
        s.ws_url,
        origin=s.origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"{site.SESSION_COOKIE}={SESSION}"},
        open_timeout=60,
        close_timeout=10,
        ping_interval=None,
    )


@dataclass
class Arrival:
    arrived: float  # time.time() when the frame was read
    event: dict[str, Any]

    @property
    def latency(self) -> float:
        return self.arrived - float(self.event["timestamp"])


class Follower:
    """One connection following several tasks; a reader task files every frame."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.arrivals: dict[str, list[Arrival]] = {}
        self._snapshots: dict[str, asyncio.Future[Any]] = {}
        self._terminals: dict[str, asyncio.Future[None]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for text in self.ws:
            arrived = time.time()
            frame = json.loads(text)
            kind = frame.get("type")
            if kind == "event":
                event = frame["event"]
                task_id = event["task_id"]
                self.arrivals.setdefault(task_id, []).append(Arrival(arrived, event))
                done = self._terminals.get(task_id)
                if event["type"] in TERMINAL_TYPES and done is not None and not done.done():
                    done.set_result(None)
            elif kind == "snapshot":
                pending = self._snapshots.get(frame["task_id"])
                if pending is not None and not pending.done():
                    pending.set_result(frame["event"])
            else:
                error = RuntimeError(f"server error frame: {frame}")
                for pending in (*self._snapshots.values(), *self._terminals.values()):
                    if not pending.done():
                        pending.set_exception(error)

    async def subscribe(self, task_id: str, timeout: float = 30.0) -> Any:
        loop = asyncio.get_running_loop()
        self._snapshots[task_id] = loop.create_future()
        self._terminals[task_id] = loop.create_future()
        frame = {"type": "subscribe", "task_id": task_id, "token": token_for(task_id)}
        await self.ws.send(json.dumps(frame))
        return await asyncio.wait_for(self._snapshots[task_id], timeout)

    async def terminal(self, task_id: str, timeout: float) -> None:
        await asyncio.wait_for(self._terminals[task_id], timeout)

    async def unsubscribe(self, task_id: str) -> None:
        await self.ws.send(json.dumps({"type": "unsubscribe", "task_id": task_id}))
        self._snapshots.pop(task_id, None)
        self._terminals.pop(task_id, None)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


# -- the figures ----------------------------------------------------------------------

_T0 = time.monotonic()


def say(text: str) -> None:
    """Progress on stdout, with the seconds since start."""
    print(f"[{time.monotonic() - _T0:6.1f} s] {text}", flush=True)


@dataclass
class Figures:
    lifecycle_ms: list[float] = field(default_factory=list)
    lifecycle_tasks: int = 0
    burst_ms: list[float] = field(default_factory=list)
    burst_tasks: int = 0
    progress_ms: list[float] = field(default_factory=list)
    progress_expected: int = 0
    roundtrip_ms: list[float] = field(default_factory=list)
    blocking: dict[str, dict[str, float]] = field(default_factory=dict)
    fanout: list[dict[str, float]] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    hub_warnings: int = 0


def celery_roundtrips(s: Servers, n: int) -> list[float]:
    """``send_task`` -> ``.get()`` to the solo worker (events off), ms each; 10 warm-ups."""
    app = Celery(
        "bench-roundtrip", broker=s.db(BROKER_DB), backend=s.db(RESULTS_DB), set_as_current=False
    )
    times: list[float] = []
    try:
        for i in range(n + 10):
            t0 = time.perf_counter()
            result = app.send_task(QUICK, (i,), queue=SOLO_QUEUE)
            if result.get(timeout=10) != i:
                raise RuntimeError("wrong result from the solo worker")
            if i >= 10:
                times.append(1000 * (time.perf_counter() - t0))
            result.forget()
    finally:
        app.close()
    return times


async def lifecycle_latency(
    s: Servers, ctl: AsyncCeleryController, batch: int, count: int, budget: float
) -> tuple[dict[str, list[float]], int]:
    """Quick tasks, ``batch`` at a time, followed on one connection: each event's
    latency in ms by event type, and how many tasks were done."""
    follower = Follower(await open_client(s))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    latencies: dict[str, list[float]] = {}
    done = 0
    try:
        while done < count and loop.time() < deadline:
            ids = [str(uuid.uuid4()) for _ in range(min(batch, count - done))]
            for task_id in ids:
                if await follower.subscribe(task_id) is not None:
                    raise RuntimeError("a new task had a snapshot")
            for i, task_id in enumerate(ids):
                await ctl.send_task(QUICK, (done + i,), task_id=task_id, queue=PREFORK_QUEUE)
            for task_id in ids:
                await follower.terminal(task_id, timeout=30)
            for task_id in ids:
                await follower.unsubscribe(task_id)
                for a in follower.arrivals.pop(task_id, []):
                    latencies.setdefault(a.event["type"], []).append(1000 * a.latency)
            done += len(ids)
    finally:
        await follower.close()
    return latencies, done


async def progress_figures(
    s: Servers, ctl: AsyncCeleryController, client_app: Celery, cfg: Config
) -> tuple[list[float], dict[str, dict[str, float]]]:
    """One task reporting progress: latency of its paced reports (ms), and what the
    task measured of its own calls."""
    follower = Follower(await open_client(s))
    task_id = str(uuid.uuid4())
    try:
        await follower.subscribe(task_id)
        await ctl.send_task(
            PROGRESS,
            (cfg.paced, cfg.gap, cfg.tight, cfg.direct),
            task_id=task_id,
            queue=PREFORK_QUEUE,
        )
        await follower.terminal(task_id, timeout=60 + 3 * (cfg.paced + cfg.direct) * cfg.gap)
        paced = [
            1000 * a.latency
            for a in follower.arrivals.get(task_id, [])
            if a.event["type"] == "task.progress" and a.event["progress"]["message"] == "paced"
        ]
    finally:
        await follower.close()
    result = client_app.AsyncResult(task_id)
    measured: dict[str, dict[str, float]] = await asyncio.to_thread(result.get, timeout=30)
    return paced, measured


async def fanout_round(s: Servers, ctl: AsyncCeleryController, clients: int) -> dict[str, float]:
    """``clients`` connect and subscribe at once, one task runs, all leave at once."""
    task_id = str(uuid.uuid4())
    token = token_for(task_id)
    loop = asyncio.get_running_loop()
    members = redis.Redis.from_url(s.db(LAYER_DB), socket_timeout=5)
    group_key = f"asgi:group:{group_name(task_id)}"
    subscribe = json.dumps({"type": "subscribe", "task_id": task_id, "token": token})

    async def join() -> ClientConnection:
        ws = await open_client(s)
        try:
            await ws.send(subscribe)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if reply.get("type") != "snapshot":
                raise RuntimeError(f"subscribe refused: {reply}")
        except BaseException:
            await ws.close()
            raise
        return ws

    terminal_at: dict[int, tuple[float, float]] = {}  # client -> (arrived, event timestamp)

    async def follow(index: int, ws: ClientConnection) -> None:
        while True:
            text = await ws.recv()
            arrived = time.time()
            frame = json.loads(text)
            if frame.get("type") == "event" and frame["event"]["type"] in TERMINAL_TYPES:
                terminal_at[index] = (arrived, float(frame["event"]["timestamp"]))
                return

    started = loop.time()
    outcomes = await asyncio.gather(*(join() for _ in range(clients)), return_exceptions=True)
    connect_s = loop.time() - started
    joined = [o for o in outcomes if isinstance(o, ClientConnection)]
    failed_connect = sum(1 for o in outcomes if not isinstance(o, ClientConnection))
    out: dict[str, float] = {"clients": clients, "failed": failed_connect, "connect_s": connect_s}
    try:
        out["members_following"] = await asyncio.to_thread(members.zcard, group_key)
        waiters = [asyncio.ensure_future(follow(i, ws)) for i, ws in enumerate(joined)]
        dispatched = time.time()
        await ctl.send_task(QUICK, (0,), task_id=task_id, queue=PREFORK_QUEUE)
        _done, pending = await asyncio.wait(waiters, timeout=60)
        for w in pending:
            w.cancel()
        for w in waiters:
            with contextlib.suppress(BaseException):
                await w
        out["missing"] = len(joined) - len(terminal_at)
        if terminal_at:
            arrivals = sorted(a for a, _ in terminal_at.values())
            created = next(iter(terminal_at.values()))[1]
            out["terminal_to_first_s"] = arrivals[0] - created
            out["terminal_to_all_s"] = arrivals[-1] - created
            out["dispatch_to_all_s"] = arrivals[-1] - dispatched
    finally:
        leaving = loop.time()
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in joined), return_exceptions=True), 120
        )
        stale = -1
        for _ in range(200):  # up to 10 s for the server to leave the group
            stale = int(await asyncio.to_thread(members.zcard, group_key))
            if stale == 0:
                break
            await asyncio.sleep(0.05)  # polling for the hub to leave
        out["stale"] = stale
        out["leave_s"] = loop.time() - leaving
        members.close()
    return out


def show(by_type: dict[str, list[float]]) -> list[float]:
    """Print latency by event type; return all of them."""
    for kind, values in sorted(by_type.items()):
        print(
            f"    {kind}: {len(values)} events, p50 {percentile(values, 0.5):.2f} ms, "
            f"p99 {percentile(values, 0.99):.2f} ms",
            flush=True,
        )
    return [v for values in by_type.values() for v in values]


async def measure(s: Servers, cfg: Config, figures: Figures) -> None:
    client_app = Celery(
        "bench-events-client",
        broker=s.db(BROKER_DB),
        backend=s.db(RESULTS_DB),
        set_as_current=False,
    )
    ctl = AsyncCeleryController(client_app, dispatch_timeout=10.0)
    # One subscription held throughout, to a task that never runs, so that the
    # server's hub always follows something and never stops its reader: see
    # hub_restarts() for what a stop can cost.
    keeper: Follower | None = None
    try:
        say("follow a task, leave, follow the next, no other follower ...")
        figures.restarts = await hub_restarts(s, ctl, cfg.restarts, cfg.restart_budget)
        slow = [t for t in figures.restarts if t > 1.0]
        say(f"    {len(slow)} of {len(figures.restarts)} took > 1 s")
        # The probe's last leave may still be stopping the hub's reader (up to 5 s);
        # a subscribe meanwhile would leave two readers running for the rest.
        await asyncio.sleep(6)
        keeper = Follower(await open_client(s))
        await keeper.subscribe(str(uuid.uuid4()))
        # Warm-up: each pool child's emitter thread and Redis connections, the
        # server's hub and snapshot threads. Not counted.
        await lifecycle_latency(s, ctl, 2, 8, 60)
        say("lifecycle events, one task at a time ...")
        by_type, figures.lifecycle_tasks = await lifecycle_latency(s, ctl, 1, cfg.tasks, cfg.budget)
        figures.lifecycle_ms = show(by_type)
        say(f"lifecycle events, bursts of {cfg.burst} tasks ...")
        by_type, figures.burst_tasks = await lifecycle_latency(
            s, ctl, cfg.burst, cfg.burst_tasks, cfg.budget
        )
        figures.burst_ms = show(by_type)
        say("progress events ...")
        figures.progress_expected = cfg.paced
        figures.progress_ms, figures.blocking = await progress_figures(s, ctl, client_app, cfg)
        for r in range(cfg.rounds):
            say(f"{cfg.clients} clients, round {r + 1} ...")
            figures.fanout.append(await fanout_round(s, ctl, cfg.clients))
            print("   ", {k: round(v, 4) for k, v in figures.fanout[-1].items()}, flush=True)
    finally:
        if keeper is not None:
            await keeper.close()
        await ctl.aclose()
        client_app.close()


async def hub_restarts(
    s: Servers, ctl: AsyncCeleryController, cycles: int, budget: float
) -> list[float]:
    """On one connection, with no other subscription in the server: follow a quick
    task to its end, then time unsubscribing from it and subscribing to the next
    until the snapshot arrives (seconds each).

    The unsubscribe makes the server's hub leave the group and stop its reader (in
    channels_redis's receive); the consumer handles a connection's frames one at a
    time, so the next subscribe waits for that stop to finish.
    """
    follower = Follower(await open_client(s))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    times: list[float] = []
    try:
        task_id = str(uuid.uuid4())
        await follower.subscribe(task_id)
        for i in range(cycles):
            await ctl.send_task(QUICK, (i,), task_id=task_id, queue=PREFORK_QUEUE)
            await follower.terminal(task_id, timeout=30)
            if loop.time() > deadline:
                break
            following = str(uuid.uuid4())
            started = loop.time()
            await follower.unsubscribe(task_id)
            await follower.subscribe(following, timeout=30)
            times.append(loop.time() - started)
            task_id = following
    finally:
        await follower.close()
    return times


# -- report ---------------------------------------------------------------------------


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.2f}"


def table(f: Figures, cfg: Config) -> str:
    all_ms = f.lifecycle_ms + f.progress_ms
    rows = [
        (
            f"worker event -> websocket client, p50 / p99 ({len(all_ms):,} events)",
            f"**{ms(all_ms, 0.5)} / {ms(all_ms, 0.99)} ms**",
            "< 5 / < 10 ms",
            "6.3 / 11.7 ms",
        ),
        (
            f"... lifecycle events of {f.lifecycle_tasks:,} quick tasks, p50 / p99 / max "
            f"({len(f.lifecycle_ms):,} events)",
            f"{ms(f.lifecycle_ms, 0.5)} / {ms(f.lifecycle_ms, 0.99)} / "
            f"{max(f.lifecycle_ms, default=0):.2f} ms",
            "",
            "",
        ),
        (
            f"... progress events, one every {1000 * cfg.gap:g} ms, p50 / p99 / max "
            f"({len(f.progress_ms):,} of {f.progress_expected:,} arrived)",
            f"{ms(f.progress_ms, 0.5)} / {ms(f.progress_ms, 0.99)} / "
            f"{max(f.progress_ms, default=0):.2f} ms",
            "",
            "",
        ),
        (
            f"... lifecycle events, bursts of {cfg.burst} tasks dispatched at once, "
            f"p50 / p99 / max ({f.burst_tasks:,} tasks, {len(f.burst_ms):,} events; not "
            "in the total)",
            f"{ms(f.burst_ms, 0.5)} / {ms(f.burst_ms, 0.99)} / {max(f.burst_ms, default=0):.2f} ms",
            "",
            "",
        ),
        (
            f"Celery send_task() -> get(), solo worker, events off, p50 / p99 "
            f"({len(f.roundtrip_ms)} round trips)",
            f"{ms(f.roundtrip_ms, 0.5)} / {ms(f.roundtrip_ms, 0.99)} ms",
            "(reference: 2.7 ms p50)",
            "",
        ),
    ]
    for key, label in (
        ("paced_us", "report_progress blocks the task, report sent at once, p50 / p99"),
        ("tight_us", "report_progress blocks the task, tight loop (held), p50 / p99"),
        ("direct_us", "... for comparison, Celery's own update_state(), p50 / p99"),
    ):
        b = f.blocking.get(key, {})
        target = "< 0.5 ms p50" if key == "paced_us" else ""
        rival = "4.9 ms p50" if key == "paced_us" else ""
        rows.append(
            (
                f"{label} ({int(b.get('n', 0)):,} calls)",
                f"**{b.get('p50', 0) / 1000:.3f}** / {b.get('p99', 0) / 1000:.3f} ms",
                target,
                rival,
            )
        )
    n = cfg.clients
    fan = f.fanout

    def each(key: str, fmt: str) -> str:
        return ", ".join(format(r.get(key, float("nan")), fmt) for r in fan)

    rows += [
        (
            f"{n:,} clients on one task: terminal event -> all have it, per round",
            f"**{each('terminal_to_all_s', '.3f')} s**",
            "< 0.5 s",
            "1.8 s",
        ),
        (
            "... terminal event -> first client has it; dispatch -> all have it",
            f"{each('terminal_to_first_s', '.3f')} s; {each('dispatch_to_all_s', '.3f')} s",
            "",
            "",
        ),
        (
            f"{n:,} clients connecting and subscribing at once: failed; time",
            f"**{each('failed', '.0f')}**; {each('connect_s', '.2f')} s",
            "0",
            "853-901 failed",
        ),
        (
            "... clients without the terminal event after 60 s",
            each("missing", ".0f"),
            "0",
            "",
        ),
        (
            "channel-layer group members while they follow",
            each("members_following", ".0f"),
            "",
            f"{n:,} (one per client)",
        ),
        (
            f"stale group members after all {n:,} left at once; time until none",
            f"**{each('stale', '.0f')}**; {each('leave_s', '.2f')} s",
            "0",
            "531-798, for a day",
        ),
    ]
    slow = [t for t in f.restarts if t > 1.0]
    rows.append(
        (
            "follow a task, leave, follow the next, no other follower in the server: "
            "cycles slower than 1 s",
            f"**{len(slow)} of {len(f.restarts)}** (max {max(f.restarts, default=0):.2f} s)",
            "0",
            "",
        )
    )
    lines = [
        "| figure | aceleryctl | target | celery-progress 0.5 (issue 4) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def versions() -> str:
    return (
        f"{environment()}; channels {channels.__version__}, channels_redis "
        f"{channels_redis.__version__}, uvicorn {uvicorn.__version__}, websockets "
        f"{websockets.__version__}"
    )


def write_report(path: Path, text: str, cfg: Config, loads: tuple[str, str]) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    body = (
        f"\n## Live events ({stamp})\n\n"
        f"`python -m bench.events` — {versions()}. One redis-server, a prefork worker "
        f"(2 children, `PROGRESS_MAX_RATE` {cfg.rate:g}), a solo worker (events off), "
        "uvicorn serving the consumer, and the benchmark process, which dispatches "
        "(`AsyncCeleryController`) and is the websocket client (one asyncio loop, "
        "`websockets`, permessage-deflate on): all on the same 2 cores. "
        "Latency is the event's `timestamp` (set in the worker when the event is built) "
        "to the client's read of the frame. `report_progress` is timed inside the task. "
        f"The fan-out task is a real task: each client gets its received, started and "
        f"succeeded events. {cfg.rounds} rounds of {cfg.clients:,} clients. The last "
        "row follows one task at a time on one connection with nothing else followed in "
        "the server, so that every leave stops the server hub's reader: a stop that "
        "lands while channels_redis is in BZPOPMIN waits for redis-py's 5 s socket "
        "timeout, and the connection's next frame waits with it. The other figures "
        "are taken with one subscription held throughout, so the hub never stops.\n\n"
        f"Load before: `{loads[0]}`; after: `{loads[1]}`.\n\n"
        f"{text}\n"
    )
    replace_section(path, "## Live events", body)


def configure_django() -> None:
    """Django in this process only signs subscription tokens: the server's key, no apps."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY=site.SECRET_KEY, USE_TZ=True, INSTALLED_APPS=[])
        django.setup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Config()
    parser.add_argument("--tasks", type=int, default=defaults.tasks)
    parser.add_argument("--burst", type=int, default=defaults.burst)
    parser.add_argument("--burst-tasks", type=int, default=defaults.burst_tasks)
    parser.add_argument("--paced", type=int, default=defaults.paced)
    parser.add_argument("--gap", type=float, default=defaults.gap)
    parser.add_argument("--tight", type=int, default=defaults.tight)
    parser.add_argument("--direct", type=int, default=defaults.direct)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--roundtrips", type=int, default=defaults.roundtrips)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--restarts", type=int, default=defaults.restarts)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--smoke", action="store_true", help="tiny run, docs untouched")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        cfg = Config.smoke()
    else:
        cfg = Config(
            tasks=args.tasks,
            burst=args.burst,
            burst_tasks=args.burst_tasks,
            paced=args.paced,
            gap=args.gap,
            tight=args.tight,
            direct=args.direct,
            rate=args.rate,
            roundtrips=args.roundtrips,
            clients=args.clients,
            restarts=args.restarts,
            rounds=args.rounds,
        )
    if cfg.gap <= 1 / cfg.rate:
        parser.error("--gap must exceed 1 / --rate, or paced reports would be held")
    configure_django()
    started = time.monotonic()
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    figures = Figures()
    with redis_server() as (url, _redis), servers(url, cfg.rate, args.keep_logs) as s:
        say("servers up")
        say("celery round trips ...")
        figures.roundtrip_ms = celery_roundtrips(s, cfg.roundtrips)
        asyncio.run(measure(s, cfg, figures))
        for name, child in s.children.items():
            found, known = problems(child)
            figures.log_problems[name] = found
            figures.hub_warnings += known
    load_after = uptime()
    text = table(figures, cfg)
    print()
    print(text)
    print(f"\nload before: {load_before}\nload after:  {load_after}")
    print(f"{time.monotonic() - started:.1f} s in all")
    trouble = {name: lines for name, lines in figures.log_problems.items() if lines}
    for name, lines in trouble.items():
        print(f"{name} logged {len(lines)} problems; the first:\n{lines[0]}")
    if figures.hub_warnings:
        print(f"the server logged {KNOWN!r} {figures.hub_warnings} times (see hub_restarts)")
    if not args.smoke:
        write_report(args.output, text, cfg, (load_before, load_after))
    lost = any(r.get("missing", 0) or r.get("failed", 0) for r in figures.fanout)
    return 1 if trouble or lost else 0


if __name__ == "__main__":
    sys.exit(main())
