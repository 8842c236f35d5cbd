"""End to end through HTTP: Django views that dispatch, served by uvicorn, under load.

    python -m bench.http                  # 15 interleaved rounds of 2 s a view, then the pause
    python -m bench.http --duration 5 --rounds 3
    python -m bench.http --smoke          # 2 s a view, one round: CI checks that it runs

Everything on 127.0.0.1, started here and stopped by PID (even on error): a
private ``redis-server`` and one uvicorn process (asyncio loop, h11 unless
httptools is installed, no access log, lifespan off) serving
:mod:`bench.httpsite`, Django's ASGI handler with no middleware and these views:

* ``/trivial``: an async view answering ``ok`` (the ceiling: Django's handler);
* ``/s2a``: ``await sync_to_async(add.delay)(1, 1)`` (thread_sensitive=True);
* ``/s2a-free``: the same with ``thread_sensitive=False``;
* ``/sync``: a sync view calling ``add.delay(1, 1)``;
* ``/controller``: ``await controller.delay(add, 1, 1)``, aceleryctl's default
  controller (``ACELERYCTL["CELERY_APP"]`` set, everything else default);
* ``/controller-loop``: the same call on a controller with ``loop_publish=True``
  (built and written from the event loop's thread);
* ``/controller-noop``: ``await controller.delay(nothing)``, a zero-argument
  callable that sends nothing: the controller's breaker, pool hop, deadline and
  result, without the message and the broker round trip (the floor under
  ``/controller``; left out of the pause figures);
* ``/loop-prototype`` and ``/loop-minimal``: not the product, measurements: the
  same message built and written from the event-loop thread with redis.asyncio,
  or with a minimal protocol writing once a loop turn
  (:mod:`bench.httpsite.loop_prototype`; no deadline or breaker, so left out of
  the pause figures);
* ``/sync-facade``: a sync view calling ``aceleryctl.sync.controller.delay``.

1. Throughput: ``wrk`` (``apt-get install wrk``) with one thread, ``--connections``
   keep-alive connections (default 100), ``--duration`` seconds a view, views
   interleaved and repeated ``--rounds`` times; each view's requests/s as a
   fraction of the trivial view's in the same round (median and interquartile
   range over rounds), latency percentiles and the server's CPU per request.
   Short slices in many rounds are the default because this machine's speed
   drifts by tens of percent over minutes: a view and the trivial view measured
   seconds apart see the same machine, ten-second runs a minute apart do not.
   Without ``wrk`` (or with ``--client python``) a small asyncio keep-alive
   client (bench._httpclient) stands in; it costs more CPU on the same 2 cores,
   so its figures are lower.
2. Redis paused: for each dispatching view in turn, the asyncio client keeps
   ``--connections`` connections busy; after ``--lead`` seconds Redis gets
   SIGSTOP for ``--pause`` seconds, then SIGCONT, and the load goes on ``--tail``
   seconds. For the requests in flight during the pause: the statuses, how many
   took longer than the deadline (2 s) plus half a second, the longest; and the
   time from SIGCONT until a request sent after it gets a 200.

The machine's load (``uptime``) is printed before and after and goes to the docs,
with everything else, unless ``--smoke``. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import uvicorn

from bench._cli import add_http_options, http_client, load_average, new_parser, today
from bench._httpclient import Record, Result, get_once, run_load
from bench._support import percentile, redis_server, uptime
from bench.dispatch import environment, replace_section
from bench.httpsite.tasks import BROKER_ENV, QUEUE
from tests._support._process import LoggedProcess, free_port, spawn
from tests._support.waiting import WaitTimeout, wait_until
from tests._support.websocket_server import uvicorn_argv

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEADLINE = 2.0  # seconds: ACELERYCTL["DISPATCH_TIMEOUT"] left at its default

VIEWS: list[tuple[str, str]] = [
    ("trivial async view", "/trivial"),
    ("`await sync_to_async(add.delay)(1, 1)`", "/s2a"),
    ("`sync_to_async(add.delay, thread_sensitive=False)`", "/s2a-free"),
    ("sync view, `add.delay(1, 1)`", "/sync"),
    ("`await controller.delay(add, 1, 1)`", "/controller"),
    ("... the same with `LOOP_PUBLISH` (written from the loop thread)", "/controller-loop"),
    ("... the same path sending nothing, `await controller.delay(nothing)`", "/controller-noop"),
    (
        "prototype, not in the package: the same message built and sent on the loop thread",
        "/loop-prototype",
    ),
    ("... the same with a minimal Redis protocol, one write a loop turn", "/loop-minimal"),
    ("sync view, `aceleryctl.sync.controller.delay`", "/sync-facade"),
]
NAME = {path: name for name, path in VIEWS}
#: The views measured with Redis paused: not the floor (it sends nothing), not
#: the loop-thread prototype (no deadline: a paused Redis would hold it).
DISPATCHING = [
    path
    for _, path in VIEWS
    if path not in ("/trivial", "/controller-noop", "/loop-prototype", "/loop-minimal")
]


# -- the server -------------------------------------------------------------------------


@dataclass
class Server:
    """uvicorn serving bench.httpsite on 127.0.0.1:``port``."""

    child: LoggedProcess
    port: int

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads), in seconds."""
        with open(f"/proc/{self.child.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(broker_url: str) -> Iterator[Server]:
    """uvicorn serving bench.httpsite in a session of its own; stopped by its PID."""
    port = free_port()
    argv = uvicorn_argv(
        "bench.httpsite.asgi:application", port,
        "--workers", "1", "--loop", "asyncio", "--timeout-graceful-shutdown", "5",
    )  # fmt: skip
    env = {BROKER_ENV: broker_url, "DJANGO_SETTINGS_MODULE": "bench.httpsite.settings"}
    child = spawn(argv, env=env, cwd=REPO_ROOT, log_prefix="aceleryctl-bench-http-")
    try:

        def up() -> bool:
            if not child.is_alive():
                raise RuntimeError(f"uvicorn did not start:\n{child.log()[-3000:]}")
            return asyncio.run(get_once(HOST, port, "/trivial", timeout=2)) == 200

        try:
            wait_until(up, timeout=60, interval=0.1)
        except WaitTimeout:
            raise RuntimeError(f"uvicorn did not start:\n{child.log()[-3000:]}") from None
        yield Server(child, port)
    finally:
        child.stop(20.0)
        problems = [line for line in child.log().splitlines() if "Traceback" in line]
        if problems:
            print(f"server log: {len(problems)} tracebacks; tail:\n{child.log()[-2000:]}")
        child.remove_log()


# -- load ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    rate: float  # requests a second
    requests: int
    bad: int  # non-2xx responses, socket errors and timeouts
    p50: float  # seconds
    p99: float
    worst: float


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> Load:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return match

    latency = find(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)")
    bad = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        bad += int(non2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(g) for g in errors.groups())
    return Load(
        rate=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        requests=int(find(r"^\s+(\d+) requests in").group(1)),
        bad=bad,
        p50=_seconds(find(r"^\s+50%\s+(\S+)").group(1)),
        p99=_seconds(find(r"^\s+99%\s+(\S+)").group(1)),
        worst=_seconds(latency.group(3)),
    )


def run_wrk(port: int, path: str, duration: float, connections: int) -> Load:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency",
        f"http://{HOST}:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def from_result(result: Result) -> Load:
    latencies = [r.latency for r in result.records]
    return Load(
        rate=result.rate,
        requests=len(result.records),
        bad=sum(not 200 <= r.status < 300 for r in result.records),
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        worst=max(latencies, default=0.0),
    )


def run_python(port: int, path: str, duration: float, connections: int) -> Load:
    result = asyncio.run(
        run_load(HOST, port, path, connections=connections, duration=duration, request_timeout=30)
    )
    return from_result(result)


# -- throughput ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    path: str
    round: int
    load: Load
    server_cpu: float  # seconds
    landed: int


def throughput(
    server: Server, client: redis.Redis, args: argparse.Namespace, use_wrk: bool
) -> list[Run]:
    drive = run_wrk if use_wrk else run_python
    paths = [path for _, path in VIEWS]
    for path in paths:  # warm-up: threads, connections, Celery's lazy set-up
        load = drive(server.port, path, args.warmup, args.connections)
        if load.bad:
            raise RuntimeError(f"{path}: {load.bad} failed requests in the warm-up")
    time.sleep(1.0)  # requests still in flight when the load generator stopped finish
    client.delete(QUEUE)
    runs: list[Run] = []
    for round_index in range(args.rounds):
        shift = round_index % len(paths)
        for path in paths[shift:] + paths[:shift]:
            cpu0 = server.cpu_seconds()
            load = drive(server.port, path, args.duration, args.connections)
            cpu = server.cpu_seconds() - cpu0
            time.sleep(1.0)  # requests still in flight when the load generator stopped
            landed = int(client.llen(QUEUE))
            client.delete(QUEUE)
            runs.append(Run(path, round_index, load, cpu, landed))
            print(
                f"round {round_index + 1} {path:13s} {load.rate:8,.0f} req/s  "
                f"p50 {1000 * load.p50:7.1f} ms  p99 {1000 * load.p99:7.1f} ms  "
                f"bad {load.bad}  landed {landed:,}  server CPU "
                f"{1e6 * cpu / max(1, load.requests):,.0f} µs/req",
                flush=True,
            )
    return runs


def throughput_table(runs: list[Run], rounds: int) -> str:
    trivial = {r.round: r.load.rate for r in runs if r.path == "/trivial"}
    lines = [
        "| view | requests/s | x trivial view | ... middle half of rounds | p50 ms | p99 ms "
        "| max ms | server CPU µs/request | x trivial by server CPU | failed requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    trivial_cpu = statistics.median(
        r.server_cpu / max(1, r.load.requests) for r in runs if r.path == "/trivial"
    )
    for name, path in VIEWS:
        mine = [r for r in runs if r.path == path]
        rate = statistics.median(r.load.rate for r in mine)
        ratios = [r.load.rate / (trivial[r.round] or 1) for r in mine]
        ratio = statistics.median(ratios)
        low, high = quartiles(ratios)
        p50 = statistics.median(r.load.p50 for r in mine)
        p99 = statistics.median(r.load.p99 for r in mine)
        worst = max(r.load.worst for r in mine)
        cpu = statistics.median(r.server_cpu / max(1, r.load.requests) for r in mine)
        bad = sum(r.load.bad for r in mine)
        lines.append(
            f"| {name} | {rate:,.0f} | {ratio:.2f} | {low:.2f}-{high:.2f} | {1000 * p50:.0f} | "
            f"{1000 * p99:.0f} | "
            f"{1000 * worst:.0f} | {1e6 * cpu:,.0f} | {trivial_cpu / (cpu or 1):.2f} | {bad} |"
        )
    return "\n".join(lines)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the range itself below four values)."""
    if len(values) < 4:
        return min(values), max(values)
    first, _, third = statistics.quantiles(values, n=4)
    return first, third


# -- Redis paused -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    path: str
    in_flight: int  # requests overlapping the pause
    statuses: dict[str, int]  # "200", "503 CircuitOpenError", "error" -> count
    past_deadline: int  # of them, longer than DEADLINE + 0.5 s
    worst: float  # seconds
    median: float
    recovery: float | None  # SIGCONT -> first 200 to a request sent after it


async def pause_one(
    port: int, path: str, redis_pid: int, args: argparse.Namespace
) -> tuple[Result, float, float]:
    load = asyncio.ensure_future(
        run_load(
            HOST,
            port,
            path,
            connections=args.connections,
            duration=args.lead + args.pause + args.tail,
            request_timeout=args.pause + 60,
        )
    )
    try:
        await asyncio.sleep(args.lead)
        os.kill(redis_pid, signal.SIGSTOP)
        stopped = time.perf_counter()
        try:
            await asyncio.sleep(args.pause)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        resumed = time.perf_counter()
        return await load, stopped, resumed
    finally:
        if not load.done():
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load


def outcome(record: Record) -> str:
    if record.status == 0:
        return "no response"
    return f"{record.status} {record.detail}".strip()


def wait_for_200(port: int, path: str, limit: float) -> float | None:
    """Poll ``path`` until it answers 200; seconds it took, ``None`` after ``limit``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if asyncio.run(get_once(HOST, port, path, timeout=limit)) == 200:
            return time.perf_counter() - t0
        time.sleep(0.05)  # polling for recovery
    return None


def pause_figures(
    server: Server, client: redis.Redis, redis_process: subprocess.Popen[bytes],
    args: argparse.Namespace,
) -> list[Pause]:  # fmt: skip
    figures: list[Pause] = []
    for path in DISPATCHING:
        client.delete(QUEUE)
        try:
            result, stopped, resumed = asyncio.run(
                pause_one(server.port, path, redis_process.pid, args)
            )
        finally:
            os.kill(redis_process.pid, signal.SIGCONT)
        overlapping = [r for r in result.records if r.start < resumed and r.end > stopped]
        latencies = [r.latency for r in overlapping]
        after = [r.end - resumed for r in result.records if r.status == 200 and r.start >= resumed]
        recovery: float | None = min(after, default=None)
        if recovery is None:
            waited = wait_for_200(server.port, path, 60.0)
            recovery = None if waited is None else time.perf_counter() - resumed
        figure = Pause(
            path=path,
            in_flight=len(overlapping),
            statuses=dict(Counter(outcome(r) for r in overlapping)),
            past_deadline=sum(x > DEADLINE + 0.5 for x in latencies),
            worst=max(latencies, default=0.0),
            median=percentile(latencies, 0.5),
            recovery=recovery,
        )
        figures.append(figure)
        print(
            f"pause {path:13s} in flight {figure.in_flight:6,}  statuses {figure.statuses}  "
            f"past {DEADLINE + 0.5:g} s: {figure.past_deadline}  max {figure.worst:.2f} s  "
            f"recovery {recovery if recovery is None else round(recovery, 2)} s",
            flush=True,
        )
        # The next view starts with a healthy server and a closed breaker.
        if wait_for_200(server.port, path, 60.0) is None:
            print(f"{path}: no 200 within 60 s after the pause", flush=True)
        time.sleep(0.5)
    client.delete(QUEUE)
    return figures


def pause_table(figures: list[Pause]) -> str:
    lines = [
        "| view | requests in flight during the pause | statuses | "
        f"took > {DEADLINE + 0.5:g} s | median s | max s | Redis back -> first 200 |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for f in figures:
        statuses = ", ".join(f"{n:,} x {kind}" for kind, n in sorted(f.statuses.items()))
        recovery = "none within 60 s" if f.recovery is None else f"{f.recovery:.2f} s"
        lines.append(
            f"| {NAME[f.path]} | {f.in_flight:,} | {statuses} | {f.past_deadline:,} | "
            f"{f.median:.2f} | {f.worst:.2f} | {recovery} |"
        )
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    add_http_options(
        parser,
        duration=2.0,
        duration_help="seconds of load a run",
        rounds=15,
        warmup_help="seconds a view, once",
    )
    parser.add_argument("--pause", type=float, default=5.0, help="seconds Redis stays paused")
    parser.add_argument("--lead", type=float, default=1.0, help="seconds of load before it")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of load after it")
    parser.add_argument("--no-pause", action="store_true", help="skip the Redis-pause figures")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds, args.warmup = 2.0, 1, 1.0
        args.pause, args.lead, args.tail = 3.0, 0.5, 1.0
    client_choice = http_client(args.client)
    if client_choice is None:
        return 2
    use_wrk, generator = client_choice
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    started = time.perf_counter()
    figures: list[Pause] = []
    with redis_server() as (url, redis_process):
        client = redis.Redis.from_url(f"{url}/0", socket_timeout=30)
        try:
            with serve(f"{url}/0") as server:
                runs = throughput(server, client, args, use_wrk)
                if not args.no_pause:
                    figures = pause_figures(server, client, redis_process, args)
        finally:
            os.kill(redis_process.pid, signal.SIGCONT)
            client.close()
    load_after = uptime()
    elapsed = time.perf_counter() - started
    text = throughput_table(runs, args.rounds)
    print(f"\nload generator: {generator}\n\n{text}")
    pause_text = pause_table(figures) if figures else ""
    if pause_text:
        print(f"\n{pause_text}")
    print(f"\nload after: {load_after}\nelapsed: {elapsed:.0f} s")
    if not args.smoke:
        write_report(args, text, pause_text, generator, load_before, load_after)
    return 0


def write_report(
    args: argparse.Namespace, text: str, pause_text: str, generator: str, before: str, after: str
) -> None:
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    body = (
        f"\n## Through HTTP ({today()})\n\n"
        f"`python -m bench.http --duration {args.duration:g} --rounds {args.rounds} "
        f"--pause {args.pause:g}` — {environment()}; uvicorn {uvicorn.__version__} (one "
        f"process, asyncio loop, {http}, no access log), Django's ASGI handler with no "
        f"middleware; load from {generator} with {args.connections} keep-alive "
        f"connections, {args.duration:g} s a view, views interleaved, medians over "
        f'{args.rounds} rounds ("x trivial view" is the median of each round\'s ratio, '
        f'"middle half" its interquartile range; "max" the worst over all rounds). The '
        f"load generator shares the 2 cores with the server, and so do other jobs: "
        f"requests/s move by 20-40% from round to round. "
        f"\"x trivial by server CPU\" (the trivial view's CPU per request over the view's, "
        f"user + system time of the server process) is the ratio the view would reach with "
        f"the server CPU-bound, and moves much less. Load average before: "
        f"`{load_average(before)}`, after: `{load_average(after)}`.\n\n"
        f"{text}\n"
    )
    if pause_text:
        body += (
            f"\nRedis paused (SIGSTOP) {args.pause:g} s under load from the asyncio client "
            f"({args.connections} connections, {args.lead:g} s before and {args.tail:g} s "
            f'after), one view at a time. "In flight during the pause": requests that '
            f"overlapped it. aceleryctl's views answer 504 on `DispatchTimeout` and 503 on "
            f"the other `TaskDispatchError`s (the circuit breaker's refusals included); "
            f"the stock views use Celery's defaults (no socket timeout). \"Redis back -> "
            f'first 200": until a request sent after SIGCONT got a 200 (for aceleryctl, once '
            f"the open breaker's `RESET_TIMEOUT`, 5 s by default, lets a probe through)."
            f"\n\n{pause_text}\n"
        )
    replace_section(args.output, "## Through HTTP", body)


if __name__ == "__main__":
    sys.exit(main())
