"""Through HTTP with PostgreSQL: a view that writes a row and dispatches on commit,
with aceleryctl's outbox, without it, and with Celery's ``delay_on_commit``.

    python -m bench.http_outbox             # 3 interleaved rounds, docs/benchmarks.md updated
    python -m bench.http_outbox --duration 10 --rounds 5
    python -m bench.http_outbox --smoke     # seconds: CI checks that it runs, nothing more
    python -m bench.http_outbox --py-spy DIR    # profiles of the servers, docs untouched

Everything on 127.0.0.1, started here and stopped by its own PID: a private
``redis-server`` (the broker: no worker consumes, so every message stays in the
queue to be counted), a throwaway PostgreSQL cluster
(:class:`tests._support.postgres_server.PostgresServer`: ``fsync``,
``synchronous_commit`` and ``full_page_writes`` off) and two uvicorn processes
(one worker, asyncio loop, no access log, lifespan off) serving Django's ASGI
handler with no middleware and the views of :mod:`bench.outboxsite.views`, each
with Django's psycopg pool of ``--pool`` connections (20 by default;
``CONN_MAX_AGE`` 0, so a request's connection goes back at its end). One process
runs with ``ACELERYCTL["OUTBOX"]["ENABLED"]`` (no relay), the other without.

The views are async; each runs ``transaction.atomic()`` inside
``sync_to_async(fn)`` (Django has no async ``atomic``) and writes one ``Order``:

* ``/write`` (a): the row and nothing else, the baseline, in both processes;
* ``/controller``: the row and ``controller.sync.delay_on_commit(add, pk, n)``,
  (b) the outbox in one process, (c) plain on-commit dispatch in the other;
* ``/celery`` (d): the row and Celery's own ``add.delay_on_commit(pk, n)``;
* ``/trivial``: no database at all (Django's handler alone), for scale.

Load comes from ``wrk`` (Debian: ``apt-get install -y wrk``) with one thread and
``--connections`` keep-alive connections (100), ``--duration`` seconds a
configuration, configurations interleaved (each round starts one further along)
and repeated ``--rounds`` times; without ``wrk`` the asyncio client of
:mod:`bench._httpclient` stands in (it costs more CPU: lower figures). Each
figure is the median over rounds; each ratio the median of the per-round ratios
against (a) in the same process and round. Server CPU is the uvicorn process's
(user + system, all threads) from the start of the load until everything has
settled, per committed row (per request for ``/trivial``); beside it
PostgreSQL's and Redis's over the same time.

After each slice the benchmark waits until the row count, the queue and the
outbox table stop changing, then checks: every committed row's dispatch is in the
queue exactly once (its message carries the row's primary key) or, with the
outbox, stored in the outbox table instead (never both); nothing is queued by the
baseline. A mismatch makes the run exit 1. Nothing here asserts a speed. The
machine's load average is printed before and after, and goes to the docs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import uvicorn

from bench._cli import add_http_options, http_client, load_average, new_parser, today
from bench._http_outbox_profile import table as profile_table
from bench._httpclient import get_once
from bench._support import uptime
from bench.dispatch import environment, replace_section
from bench.http import Load, quartiles, run_python, run_wrk
from bench.outbox import HERE, Bench, pool_available, process_cpu, servers
from bench.outboxsite.tasks import QUEUE
from tests._support._process import LoggedProcess, free_port, spawn
from tests._support.waiting import WaitTimeout, wait_until
from tests._support.websocket_server import uvicorn_argv

HOST = "127.0.0.1"
HEADING = "## Through HTTP with PostgreSQL: write a row, dispatch on commit"
TABLES = ["bench_order", "aceleryctl_outbox"]
#: Server process -> the variant of :mod:`bench.outboxsite.settings` it runs.
PROCESSES = {"on": "aceleryctl-outbox", "off": "aceleryctl"}
PROCESS_LABEL = {"on": "outbox on", "off": "outbox off"}
#: Seconds the counts must stay unchanged for a slice to count as settled.
QUIET = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    key: str
    process: str  # a key of PROCESSES
    path: str
    label: str
    short: str  # a column title
    dispatches: bool = True


CONFIGS = [
    Config(
        "trivial", "off", "/trivial", "trivial async view, no database", "trivial",
        dispatches=False,
    ),
    Config(
        "write-off", "off", "/write", "(a) writes the row, no dispatch", "(a) off",
        dispatches=False,
    ),
    Config("celery", "off", "/celery", "(d) Celery `add.delay_on_commit`", "(d) Celery"),
    Config(
        "plain", "off", "/controller", "(c) `controller.sync.delay_on_commit`, outbox off",
        "(c) outbox off",
    ),
    Config(
        "write-on", "on", "/write", "(a) writes the row, no dispatch", "(a) on",
        dispatches=False,
    ),
    Config(
        "outbox", "on", "/controller", "(b) `controller.sync.delay_on_commit`, outbox on",
        "(b) outbox",
    ),
]  # fmt: skip
BY_KEY = {c.key: c for c in CONFIGS}
BASELINE = {"off": "write-off", "on": "write-on"}


# -- the servers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """A uvicorn process and its port on 127.0.0.1."""

    child: LoggedProcess
    port: int

    @property
    def pid(self) -> int:
        return self.child.process.pid


@contextlib.contextmanager
def serve(bench: Bench, process: str, pool: int) -> Iterator[Server]:
    """One uvicorn process of ``process``'s variant; stopped by its PID."""
    port = free_port()
    argv = uvicorn_argv(
        "bench.outboxsite.asgi:application", port,
        "--workers", "1", "--loop", "asyncio", "--timeout-graceful-shutdown", "5",
    )  # fmt: skip
    child = spawn(
        argv, env=bench.env(PROCESSES[process], pool), cwd=HERE,
        log_prefix=f"aceleryctl-bench-http-outbox-{process}-",
    )  # fmt: skip
    try:

        def up() -> bool:
            if not child.is_alive():
                raise RuntimeError(f"uvicorn did not start:\n{child.log_tail()}")
            return asyncio_get(port, "/trivial") == 200

        try:
            wait_until(up, timeout=60, interval=0.1)
        except WaitTimeout:
            raise RuntimeError(f"uvicorn did not start:\n{child.log_tail()}") from None
        yield Server(child, port)
    finally:
        child.stop(20.0)
        problems = [line for line in child.log().splitlines() if "Traceback" in line]
        if problems:
            print(f"{process} server log: {len(problems)} tracebacks:\n{child.log_tail(40)}")
        child.remove_log()


def asyncio_get(port: int, path: str) -> int:
    """One GET on a fresh connection; its status (0 on error or after 5 s)."""
    return asyncio.run(get_once(HOST, port, path, timeout=5))


# -- one slice ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slice:
    key: str
    round: int
    load: Load
    committed: int  # rows in bench_order: requests that committed
    queued: int  # messages in the broker
    stored: int  # rows left in the outbox table
    server_cpu: float  # seconds, the uvicorn process
    other_cpu: float  # seconds, PostgreSQL and Redis
    problems: tuple[str, ...]

    @property
    def units(self) -> int:
        """What CPU is divided by: committed rows, or requests without a database."""
        return self.committed or self.load.requests or 1


def counts(bench: Bench) -> tuple[int, int, int]:
    rows = bench.sql(
        "SELECT (SELECT count(*) FROM bench_order), (SELECT count(*) FROM aceleryctl_outbox)"
    )
    return int(rows[0][0]), int(bench.broker.llen(QUEUE)), int(rows[0][1])


def settle(bench: Bench, limit: float = 120.0) -> tuple[int, int, int]:
    """Wait until the counts stay unchanged for :data:`QUIET` seconds (at most
    ``limit``): in-flight requests, after-commit publishes and deletes are done."""
    last, since = counts(bench), time.monotonic()
    deadline = since + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)  # polling three counts
        now = counts(bench)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET:
            break
    return last


def check(bench: Bench, config: Config, committed: int) -> list[str]:
    """What is wrong with the queue and the outbox table after a settled slice."""
    problems: list[str] = []
    ids: list[str] = []
    pks: list[int] = []
    for raw in bench.broker.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        ids.append(str(message["headers"]["id"]))
        args = json.loads(base64.b64decode(message["body"]))[0]
        pks.append(int(args[0]))
    stored = {str(r[0]) for r in bench.sql("SELECT task_id FROM aceleryctl_outbox")}
    orders = {int(r[0]) for r in bench.sql("SELECT id FROM bench_order")}
    if not config.dispatches:
        if ids or stored:
            problems.append(f"{len(ids)} messages and {len(stored)} outbox rows without dispatch")
        return problems
    if len(set(ids)) != len(ids) or len(set(pks)) != len(pks):
        problems.append(f"{len(pks) - len(set(pks))} rows dispatched twice")
    if set(pks) - orders:
        problems.append(f"{len(set(pks) - orders)} messages for rows never committed")
    if stored & set(ids):
        problems.append(f"{len(stored & set(ids))} dispatches both queued and stored")
    if config.key != "outbox" and stored:
        problems.append(f"{len(stored)} outbox rows with the outbox off")
    if len(set(pks)) + len(stored) != committed:
        problems.append(f"{len(set(pks))} queued + {len(stored)} stored of {committed} committed")
    return problems


def run_slice(
    bench: Bench, port: int, pid: int, config: Config, round_index: int,
    args: argparse.Namespace, use_wrk: bool,
) -> Slice:  # fmt: skip
    bench.reset(TABLES)
    spy = profile(args.py_spy, pid, config, round_index, args.duration)
    cpu0, other0 = process_cpu(pid, reaped=False), bench.server_cpu()
    drive = run_wrk if use_wrk else run_python
    load = drive(port, config.path, args.duration, args.connections)
    committed, queued, stored = settle(bench)
    cpu = process_cpu(pid, reaped=False) - cpu0
    other = bench.server_cpu() - other0
    if spy is not None:
        spy.wait(timeout=args.duration + 60)
    problems = check(bench, config, committed)
    return Slice(
        config.key, round_index, load, committed, queued, stored, cpu, other, tuple(problems)
    )


def profile(
    directory: Path | None, pid: int, config: Config, round_index: int, duration: float
) -> subprocess.Popen[bytes] | None:
    """py-spy attached to the server for one slice (collapsed stacks of the thread
    holding the GIL), or ``None`` without ``--py-spy``."""
    if directory is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = directory / f"{config.key}-r{round_index + 1}.txt"
    # From half a second before the load to half a second or more after it.
    seconds = str(math.ceil(duration) + 1)
    argv = [spy, "record", "--pid", str(pid), "--duration", seconds]
    argv += ["--rate", "250", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches before the load starts
    return process


# -- tables ------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _ratios(slices: list[Slice], key: str, cpu: bool = False) -> list[float]:
    base = {s.round: s for s in slices if s.key == BASELINE[BY_KEY[key].process]}
    out = []
    for s in slices:
        if s.key == key and s.round in base:
            b = base[s.round]
            if cpu:
                out.append((b.server_cpu / b.units) / ((s.server_cpu / s.units) or 1))
            else:
                out.append(s.load.rate / (b.load.rate or 1))
    return out


def result_table(slices: list[Slice]) -> str:
    lines = [
        "| view | process | requests/s | x (a), same process | ... range over rounds "
        "| p50 ms | p99 ms | server CPU µs/request | x (a) by server CPU "
        "| PostgreSQL + Redis CPU µs/request | failed requests | in the broker |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for config in CONFIGS:
        mine = [s for s in slices if s.key == config.key]
        if not mine:
            continue
        committed = sum(s.committed for s in mine)
        if any(s.problems for s in mine):
            landed = "MISMATCH: " + "; ".join(p for s in mine for p in s.problems)
        elif not config.dispatches:
            landed = "nothing, as expected" if committed else "-"
        else:
            queued, stored = sum(s.queued for s in mine), sum(s.stored for s in mine)
            landed = f"{queued:,} of {committed:,} committed, each once" + (
                f"; {stored:,} stored in the outbox" if stored else ""
            )
        ratios = _ratios(slices, config.key) if config.key != "trivial" else []
        ratio = spread = by_cpu = "-"
        if ratios:
            low, high = quartiles(ratios)
            ratio, spread = f"{_median(ratios):.2f}", f"{low:.2f}-{high:.2f}"
            by_cpu = f"{_median(_ratios(slices, config.key, cpu=True)):.2f}"
        lines.append(
            f"| {config.label} | {PROCESS_LABEL[config.process]} | "
            f"{_median([s.load.rate for s in mine]):,.0f} | {ratio} | {spread} | "
            f"{1000 * _median([s.load.p50 for s in mine]):.0f} | "
            f"{1000 * _median([s.load.p99 for s in mine]):.0f} | "
            f"{_median([1e6 * s.server_cpu / s.units for s in mine]):,.0f} | {by_cpu} | "
            f"{_median([1e6 * s.other_cpu / s.units for s in mine]):,.0f} | "
            f"{sum(s.load.bad for s in mine)} | {landed} |"
        )
    return "\n".join(lines)


def ratio_table(slices: list[Slice]) -> str:
    def same_process(key: str) -> float | None:
        ratios = _ratios(slices, key)
        return _median(ratios) if ratios else None

    def across(top: str, bottom: str) -> float | None:
        tops = [s.load.rate for s in slices if s.key == top]
        bottoms = [s.load.rate for s in slices if s.key == bottom]
        if not tops or not bottoms:
            return None
        return _median(tops) / (_median(bottoms) or 1)

    rows: list[tuple[str, float | None, float | None]] = [
        ("(b) outbox / (a) without dispatch, same process", same_process("outbox"), 0.9),
        ("(c) outbox off / (a), same process", same_process("plain"), None),
        ("(d) Celery `delay_on_commit` / (a), same process", same_process("celery"), None),
        ("(b) outbox / (d) Celery `delay_on_commit` (medians)", across("outbox", "celery"), None),
        ("(b) outbox / (c) outbox off (medians)", across("outbox", "plain"), None),
    ]
    lines = ["| ratio (requests/s) | measured | target | met |", "|---|---:|---:|---|"]
    for label, value, target in rows:
        wanted = "-" if target is None else f">= {target:g}"
        if value is None:
            lines.append(f"| {label} | (not measured) | {wanted} | - |")
            continue
        met = "-" if target is None else ("yes" if value >= target else "no")
        lines.append(f"| {label} | {value:.2f} | {wanted} | {met} |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    add_http_options(
        parser,
        duration=10.0,
        duration_help="seconds of load a slice",
        rounds=3,
        warmup_help="seconds a configuration, once",
    )
    parser.add_argument("--pool", type=int, default=20, help="database connections a process")
    parser.add_argument(
        "--configs", default=",".join(BY_KEY), help="comma-separated subset (docs untouched)"
    )
    parser.add_argument(
        "--py-spy", type=Path, default=None, metavar="DIR",
        help="record py-spy profiles of the server during each slice into DIR (collapsed "
        "stacks of the thread holding the GIL; docs untouched)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds, args.warmup, args.connections = 1.0, 1, 0.5, 20
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    if not keys or set(keys) - set(BY_KEY):
        parser.error(f"--configs takes a comma-separated subset of {list(BY_KEY)}")
    configs = [c for c in CONFIGS if c.key in keys]
    if not pool_available():
        print("psycopg_pool is not installed (pip install 'psycopg[pool]')", file=sys.stderr)
        return 2
    client_choice = http_client(args.client)
    if client_choice is None:
        return 2
    use_wrk, generator = client_choice
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    slices: list[Slice] = []
    with servers(args.pool, 100) as bench:
        pg_version = bench.sql("SHOW server_version")[0][0]
        bench.run("setup", ["setup"], timeout=300.0)
        with serve(bench, "off", args.pool) as off, serve(bench, "on", args.pool) as on:
            by_process = {"off": off, "on": on}

            def where(config: Config) -> tuple[int, int]:
                server = by_process[config.process]
                return server.port, server.pid

            for config in configs:  # warm-up: the pools, threads, broker connections
                port, _ = where(config)
                (run_wrk if use_wrk else run_python)(
                    port, config.path, args.warmup, args.connections
                )
                settle(bench)
            for index in range(args.rounds):
                shift = index % len(configs)
                for config in configs[shift:] + configs[:shift]:
                    port, pid = where(config)
                    s = run_slice(bench, port, pid, config, index, args, use_wrk)
                    slices.append(s)
                    print(
                        f"round {index + 1} {config.key:9s} {s.load.rate:7,.0f} req/s "
                        f"p50 {1000 * s.load.p50:6.1f} ms p99 {1000 * s.load.p99:6.1f} ms "
                        f"bad {s.load.bad} committed {s.committed:,} queued {s.queued:,} "
                        f"stored {s.stored} server {1e6 * s.server_cpu / s.units:,.0f} µs "
                        f"+ {1e6 * s.other_cpu / s.units:,.0f} µs {'; '.join(s.problems)}",
                        flush=True,
                    )
        shutil.rmtree(bench.logdir, ignore_errors=True)
    load_after = uptime()
    print(f"load after: {load_after}", flush=True)
    text = report(args, slices, generator, pg_version, load_before, load_after)
    print(f"\n{text}")
    if args.py_spy is not None:
        units = {f"{s.key}-r{s.round + 1}": s.units for s in slices}
        print(f"\n{profile_table(args.py_spy, units, {c.key: c.short for c in configs})}")
    if not args.smoke and args.py_spy is None and len(configs) == len(CONFIGS):
        replace_section(args.output, HEADING, f"\n{HEADING} ({today()})\n\n{text}\n")
    bad = [s for s in slices if s.problems]
    if bad:
        print(f"{len(bad)} slices lost or duplicated dispatches", file=sys.stderr)
        return 1
    return 0


def report(
    args: argparse.Namespace, slices: list[Slice], generator: str, pg_version: str,
    before: str, after: str,
) -> str:  # fmt: skip
    intro = (
        f"`python -m bench.http_outbox --duration {args.duration:g} --rounds {args.rounds} "
        f"--pool {args.pool}` — {environment()}; PostgreSQL {pg_version} (a throwaway "
        f"cluster, fsync off), psycopg {psycopg.__version__} with Django's pool of "
        f"{args.pool} connections a process; uvicorn {uvicorn.__version__} (one process "
        f"each with the outbox on and off, asyncio loop, no access log), Django's ASGI "
        f"handler with no middleware; load from {generator} with {args.connections} "
        f"keep-alive connections, {args.duration:g} s a configuration, configurations "
        f"interleaved, medians over {args.rounds} rounds. Every view is async and runs "
        f"`transaction.atomic()` around one `Order` row (and the dispatch) in "
        f'`sync_to_async(fn)`. "x (a)" is the median of each round\'s ratio to the '
        f"view writing the row without dispatch in the same process; server CPU counts "
        f"the uvicorn process until every publish and delete is done, per committed "
        f"row. Every process (wrk, uvicorn, PostgreSQL, Redis) shares the 2 cores with "
        f"other jobs. Load average before: `{load_average(before)}`, "
        f"after: `{load_average(after)}`."
    )
    return "\n\n".join([intro, result_table(slices), ratio_table(slices)])


if __name__ == "__main__":
    sys.exit(main())
