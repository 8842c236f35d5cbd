"""Durable dispatch: aceleryctl's transactional outbox against the ways people
enqueue on commit, and its relay against django-celery-outbox's, in one run.

    python -m bench.outbox                 # 3 interleaved rounds, docs/benchmarks.md updated
    python -m bench.outbox --rounds 5 --n 5000 --relay-rows 20000
    python -m bench.outbox --smoke         # tiny: CI checks that it runs, nothing more

Everything on 127.0.0.1, started here and stopped by its own PID: a private
``redis-server`` (the broker; no worker consumes, so every message stays in the
queue to be counted) and a throwaway PostgreSQL cluster
(:class:`tests._support.postgres_server.PostgresServer`: ``fsync``,
``synchronous_commit`` and ``full_page_writes`` off). Each measurement runs in a
child process of its own (:mod:`bench._outbox_child`, Django project
:mod:`bench.outboxsite`).

1. **On commit.** ``--callers`` coroutines (default 100) in one event loop, each
   in its own ``ThreadSensitiveContext`` (as Django's ASGI handler runs each
   request), each request ``await sync_to_async(fn, thread_sensitive=True)(i)``
   where ``fn`` opens ``transaction.atomic()``, writes the business row (an
   ``Order``; the "no business row" configurations leave it out), enqueues
   ``add(i, i)`` to run on commit, and ends the request (``close_old_connections``,
   which gives the connection back to the pool of ``--pool`` connections, 20 by
   default). A real async view holds a transaction only inside such a sync
   function (Django has no async ``atomic``), so aceleryctl is called there through
   its sync facade. The variants:

   * ``aceleryctl, outbox``: ``controller.sync.delay_on_commit(add, i, i)`` with
     ``ACELERYCTL["OUTBOX"]["ENABLED"]``: the row in the transaction, the publish
     after the commit on the controller's thread, the row deleted by the row writer;
   * ``Celery delay_on_commit``: ``add.delay_on_commit(i, i)`` (Celery >= 5.4's
     ``DjangoTask``: ``transaction.on_commit(partial(add.delay, i, i))``);
   * ``django-celery-outbox``: ``add.delay(i, i)`` on its ``OutboxCelery`` app,
     which writes the row in the transaction; its relay publishes later (run here
     untimed, only to check that every message reaches the broker);
   * ``aceleryctl, no outbox``: the same call with the outbox off (a detached
     publish after the commit, nothing stored);
   * ``django-celery-outbox, its relay running beside``: as above, with one relay
     process (``idle_time`` 0.1 s) released when the timed requests start, so that
     "settled" covers its publishing too.

   Dispatches/s counts requests finished per second; "settled/s" stops the clock
   only when every message is in the broker (and, with aceleryctl's outbox, every
   row deleted). Event-loop lag is how late a 1 ms sleep wakes (p99, max). CPU per
   dispatch is the web process's (user + system) and, beside it, PostgreSQL's,
   Redis's and any relay's (from /proc), wherever and whenever that work ran.
   One request per caller warms up first (untimed, counted in the broker).

2. **Relay.** ``--relay-rows`` pending rows (default 20,000) restored into each
   library's outbox table from a copy written once through its own write path;
   then 1, 2 or 4 relay processes (``--relays``) started, waiting, and released at
   once; rows/s runs from the release until the broker holds every row. aceleryctl:
   ``Relay(controller).run(stop, until_idle=True)``; django-celery-outbox: its
   ``Relay(app, RelayConfig.init(...)).start()``, stopped by SIGTERM once the broker
   has everything (it then drains and exits). Both at their default batch size
   (100; ``--relay-batch`` changes both); django-celery-outbox's structlog output
   below WARNING is dropped, as the standard library drops aceleryctl's relay INFO
   lines by default. With
   ``--dco-concurrency`` (default 4) one more row runs a single
   django-celery-outbox relay with that many publishing threads.

Every message is checked: the queue's length equals what was dispatched, every
task id appears once, and for the outboxes the ids are exactly the rows' ids and
the table is empty afterwards. A mismatch makes the run exit 1. Without
django-celery-outbox installed (``pip install -e '.[bench]'``) its variants are
skipped with a note. Rounds interleave the configurations; every figure is the
median over rounds. Nothing here asserts a speed.

``--pg-fsync`` turns the cluster's fsync, ``synchronous_commit`` and
``full_page_writes`` back on; ``--py-spy DIR`` records, for each on-commit and
relay child, py-spy's collapsed stacks of the thread holding the GIL (where a
process bound by the GIL spends it). Neither writes the docs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench._outbox_child import DONE_KEY, GO_PREFIX, READY_KEY, STARTED_KEY
from bench._support import redis_server, uptime
from bench.dispatch import environment, replace_section
from bench.outboxsite.settings import (
    BATCH_ENV,
    NAME_ENV,
    POOL_ENV,
    PORT_ENV,
    REDIS_ENV,
    VARIANT_ENV,
)
from bench.outboxsite.tasks import QUEUE
from tests._support._process import LoggedProcess, spawn
from tests._support.postgres_server import PostgresServer

HERE = Path(__file__).resolve().parents[1]
DATABASE = "bench_outbox"
HEADING = "## Durable dispatch (outbox)"

#: variant key -> label, in table order.
VARIANTS = {
    "aceleryctl-outbox": "aceleryctl, outbox: `controller.sync.delay_on_commit`",
    "celery": "Celery `task.delay_on_commit`",
    "dco": "django-celery-outbox 0.4.3: `task.delay` in the transaction",
    "aceleryctl": "aceleryctl, no outbox: `controller.sync.delay_on_commit`",
    "dco+relay": "django-celery-outbox 0.4.3, its relay running beside (1 process)",
}
#: django-celery-outbox's ``idle_time`` for the relay running beside the requests
#: (its default, 1 s, would add up to a second of sleep after the last request).
RELAY_IDLE_BESIDE = 0.1
LIBS = {"aceleryctl": "aceleryctl `Relay`", "dco": "django-celery-outbox `Relay`"}
TABLES = {"aceleryctl": "aceleryctl_outbox", "dco": "celery_outbox"}


def dco_available() -> bool:
    return importlib.util.find_spec("django_celery_outbox") is not None


def pool_available() -> bool:
    return importlib.util.find_spec("psycopg_pool") is not None


# -- the servers and the children --------------------------------------------------


@dataclass
class Bench:
    """The private servers and how to reach them from here and from children."""

    redis_url: str
    pg: PostgresServer
    logdir: Path
    pool: int
    redis_pid: int
    relay_batch: int
    #: A directory for py-spy profiles of the on-commit children (``--py-spy``).
    profile_dir: Path | None = None
    broker: redis.Redis = field(init=False)
    control: redis.Redis = field(init=False)
    db: psycopg.Connection[tuple[Any, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.broker = redis.Redis.from_url(f"{self.redis_url}/0", socket_timeout=30)
        self.control = redis.Redis.from_url(f"{self.redis_url}/1", socket_timeout=30)
        self.db = self.pg.connect(DATABASE, autocommit=True)

    def close(self) -> None:
        self.broker.close()
        self.control.close()
        self.db.close()

    def env(self, variant: str, pool: int = 0) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": "bench.outboxsite.settings",
            VARIANT_ENV: variant,
            PORT_ENV: str(self.pg.port),
            NAME_ENV: DATABASE,
            POOL_ENV: str(pool),
            REDIS_ENV: self.redis_url,
            BATCH_ENV: str(self.relay_batch),
        }

    def start(self, variant: str, args: list[str], pool: int = 0) -> LoggedProcess:
        argv = argv_child(args)
        if self.profile_dir is not None and args[0] in ("enqueue", "relay"):
            business = "-business" if "--business" in args else ""
            out = self.profile_dir / f"{args[0]}-{variant}{business}-{time.time_ns()}.txt"
            # --gil: only the thread holding the GIL, the resource the requests,
            # the publisher and the row writer of one process share.
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            argv = [spy, "record", "--format", "raw", "--rate", "250", "--gil", "--nonblocking"]
            argv += ["--output", str(out), "--", *argv_child(args)]
        return spawn(
            argv,
            env=self.env(variant, pool),
            cwd=HERE,
            log_path=Path(
                tempfile.mkstemp(prefix=f"{variant}-", suffix=".log", dir=self.logdir)[1]
            ),
        )

    def run(self, variant: str, args: list[str], timeout: float, pool: int = 0) -> str:
        """Run a child to its end (bounded); return its output.

        Raises:
            RuntimeError: it failed or did not finish in ``timeout`` seconds.
        """
        child = self.start(variant, args, pool)
        try:
            code = child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.stop(timeout=10.0)
            raise RuntimeError(
                f"{variant} {args[0]} did not finish in {timeout:.0f} s:\n{child.log_tail()}"
            ) from None
        if code != 0:
            raise RuntimeError(f"{variant} {args[0]} exited {code}:\n{child.log_tail()}")
        return child.log()

    def server_cpu(self) -> float:
        """CPU seconds used so far by PostgreSQL (the postmaster, its live backends
        and those it reaped) and by redis-server."""
        return tree_cpu(self.pg.process.pid) + process_cpu(self.redis_pid)

    # -- state between measurements

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        cursor = self.db.execute(query.encode())
        return cursor.fetchall() if cursor.description else []

    def reset(self, tables: list[str]) -> None:
        self.sql(f"TRUNCATE {', '.join(tables)}")
        self.broker.flushdb()
        self.control.flushdb()

    def queued_ids(self) -> list[str]:
        """The task id of every message in the queue, in order."""
        ids: list[str] = []
        length = int(self.broker.llen(QUEUE))
        for start in range(0, length, 5000):
            for raw in self.broker.lrange(QUEUE, start, start + 4999):
                ids.append(str(json.loads(raw)["headers"]["id"]))
        return ids


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    # The fields after the command name: state, ppid, ... (proc(5), from field 3 on).
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int, reaped: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (with ``reaped``: and of its children
    that have exited and been waited for), from /proc."""
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def tree_cpu(root: int) -> float:
    """:func:`process_cpu` of ``root`` plus its live children's own CPU."""
    total = process_cpu(root)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(entry.name)
                if int(fields[1]) == root:
                    total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def argv_child(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench._outbox_child", *args]


@contextlib.contextmanager
def servers(pool: int, relay_batch: int, profile_dir: Path | None = None) -> Iterator[Bench]:
    logdir = Path(tempfile.mkdtemp(prefix="aceleryctl-bench-outbox-"))
    with redis_server() as (url, process), PostgresServer.start() as pg:
        pg.create_database(DATABASE)
        bench = Bench(url, pg, logdir, pool, process.pid, relay_batch, profile_dir)
        try:
            yield bench
        finally:
            bench.close()


# -- 1. on commit ------------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    variant: str
    business: bool
    n: int
    wall: float
    settled: float
    cpu: float
    lag_p99: float
    lag_max: float
    expected: int
    landed: int
    problems: tuple[str, ...]
    #: CPU seconds of PostgreSQL, Redis and any relay for all ``expected`` dispatches.
    other_cpu: float = 0.0
    #: The system (kernel) part of ``cpu``.
    cpu_sys: float = 0.0

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def other_cpu_us(self) -> float:
        return 1e6 * self.other_cpu / self.expected

    @property
    def settled_rate(self) -> float:
        return self.n / self.settled

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.n


def run_enqueue(bench: Bench, variant: str, business: bool, n: int, callers: int) -> Enqueued:
    child_variant = "dco" if variant.startswith("dco") else variant
    tables = ["bench_order", "aceleryctl_outbox"]
    if child_variant == "dco":
        tables.append("celery_outbox")
    bench.reset(tables)
    args = ["enqueue", "--n", str(n), "--callers", str(callers)]
    if business:
        args.append("--business")
    if variant == "dco+relay":
        return _enqueue_beside_relay(bench, variant, business, n, args)
    servers0 = bench.server_cpu()
    output = bench.run(child_variant, args, timeout=900.0, pool=bench.pool)
    result = _result(output)
    expected = n + int(result["warmup"])
    problems: list[str] = []
    if not result["drained"]:
        problems.append("publishes not drained in 60 s")
    if result["orders"] != (expected if business else 0):
        problems.append(f"{result['orders']} business rows")
    if variant == "aceleryctl-outbox" and result["outbox_rows"]:
        problems.append(f"{result['outbox_rows']} outbox rows left")
    stored: set[str] | None = None
    if variant == "dco":
        stored = {row[0] for row in bench.sql("SELECT task_id FROM celery_outbox")}
        if len(stored) != expected:
            problems.append(f"{len(stored)} outbox rows stored")
        drained = run_relays(bench, "dco", 1, expected, timeout=600.0)
        problems.extend(drained.problems)
        relay_cpu = drained.cpu
    else:
        relay_cpu = 0.0
    other_cpu = bench.server_cpu() - servers0 + relay_cpu
    ids = bench.queued_ids()
    problems.extend(check_ids(ids, expected, stored))
    return Enqueued(
        variant,
        business,
        n,
        result["wall"],
        result["settled"],
        result["cpu"],
        result["lag_p99"],
        result["lag_max"],
        expected,
        len(ids),
        tuple(problems),
        other_cpu,
        result["cpu_sys"],
    )


def _result(output: str) -> dict[str, Any]:
    line = next(x for x in reversed(output.splitlines()) if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def _enqueue_beside_relay(
    bench: Bench, variant: str, business: bool, n: int, args: list[str]
) -> Enqueued:
    """django-celery-outbox with one relay process running while the requests run
    (released when the timed requests start): "settled" ends when the broker has
    every message."""
    servers0 = bench.server_cpu()
    group = RelayGroup(bench, "dco", 1, idle_time=RELAY_IDLE_BESIDE)
    problems: list[str] = []
    try:
        group.wait_ready()
        child = bench.start("dco", [*args, "--signal-start"], pool=bench.pool)
        started = bench.control.blpop([STARTED_KEY], timeout=600)
        if started is None:
            child.stop(timeout=10.0)
            raise RuntimeError(f"the requests did not start:\n{child.log_tail()}")
        t0 = float(started[1])
        group.release()
        try:
            code = child.process.wait(timeout=900.0)
        finally:
            child.stop(timeout=10.0)
        if code != 0:
            raise RuntimeError(f"dco enqueue exited {code}:\n{child.log_tail()}")
        result = _result(child.log())
        expected = n + int(result["warmup"])
        wait_for_messages(bench, expected, time.monotonic() + 600.0)
        settled = time.monotonic() - t0
    finally:
        relay_cpu, relay_problems = group.finish()
    other_cpu = bench.server_cpu() - servers0 + relay_cpu
    problems.extend(relay_problems)
    if result["orders"] != (expected if business else 0):
        problems.append(f"{result['orders']} business rows")
    left = bench.sql("SELECT count(*) FROM celery_outbox")[0][0]
    if left:
        problems.append(f"{left} rows left in celery_outbox")
    ids = bench.queued_ids()
    problems.extend(check_ids(ids, expected, None))
    return Enqueued(
        variant,
        business,
        n,
        result["wall"],
        settled,
        result["cpu"],
        result["lag_p99"],
        result["lag_max"],
        expected,
        len(ids),
        tuple(problems),
        other_cpu,
        result["cpu_sys"],
    )


def check_ids(ids: list[str], expected: int, stored: set[str] | None) -> list[str]:
    """What is wrong with the queue's task ids (nothing: an empty list)."""
    problems = []
    if len(ids) != expected:
        problems.append(f"{len(ids)} of {expected} messages in the broker")
    unique = set(ids)
    if len(unique) != len(ids):
        problems.append(f"{len(ids) - len(unique)} duplicate messages")
    if stored is not None and unique != stored:
        problems.append(
            f"{len(stored - unique)} rows never published, {len(unique - stored)} unknown ids"
        )
    return problems


# -- 2. relay ----------------------------------------------------------------------


@dataclass(frozen=True)
class Relayed:
    lib: str
    relays: int
    concurrency: int
    rows: int
    wall: float
    cpu: float
    problems: tuple[str, ...]
    #: CPU seconds of PostgreSQL and Redis from the release to the relays' exit.
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.wall if self.wall else 0.0

    @property
    def server_cpu_us(self) -> float:
        return 1e6 * self.server_cpu / self.rows if self.rows else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.rows if self.rows else 0.0

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.lib, self.relays, self.concurrency)


class RelayGroup:
    """Relay processes of one library, started and waiting until :meth:`release`."""

    def __init__(
        self, bench: Bench, lib: str, count: int, concurrency: int = 1, idle_time: float = 1.0
    ) -> None:
        self.bench = bench
        self.lib = lib
        variant = "aceleryctl-relay" if lib == "aceleryctl" else "dco"
        bench.control.delete(READY_KEY, DONE_KEY)
        args = ["relay", "--concurrency", str(concurrency), "--idle-time", str(idle_time)]
        self.children = [bench.start(variant, args) for _ in range(count)]
        #: The relays' own pids, as they report them when ready.
        self.ready: list[int] = []

    def wait_ready(self) -> None:
        """Wait until every relay is set up and waiting (each reports its own pid,
        which differs from the started process's when py-spy wraps it)."""
        for _ in self.children:
            got = self.bench.control.blpop([READY_KEY], timeout=120)
            if got is None:
                self.stop()
                raise RuntimeError(
                    f"a {self.lib} relay was not ready in 120 s:\n"
                    + "\n".join(c.log_tail(20) for c in self.children)
                )
            self.ready.append(int(got[1]))

    def release(self) -> None:
        for pid in self.ready:
            self.bench.control.rpush(f"{GO_PREFIX}{pid}", 1)

    def finish(self) -> tuple[float, list[str]]:
        """Stop (django-celery-outbox's relay runs until SIGTERM; aceleryctl's stops
        when idle) and return the relays' CPU seconds and what went wrong."""
        problems: list[str] = []
        if self.lib == "dco":
            for pid in self.ready:  # the relay itself, not a py-spy wrapper
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for child in self.children:
            try:
                code = child.process.wait(timeout=60.0)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                problems.append(f"a relay ended with {code}: {child.log_tail(5)}")
        self.stop()
        done = self.bench.control.lrange(DONE_KEY, 0, -1)
        return sum(json.loads(raw)["cpu"] for raw in done), problems

    def stop(self) -> None:
        for child in self.children:
            child.stop(timeout=10.0)


def wait_for_messages(bench: Bench, expected: int, deadline: float) -> None:
    """Poll the queue's length every 5 ms until it reaches ``expected`` or
    ``time.monotonic()`` passes ``deadline``."""
    while bench.broker.llen(QUEUE) < expected and time.monotonic() < deadline:
        time.sleep(0.005)


def run_relays(
    bench: Bench, lib: str, relays: int, expected: int, timeout: float, concurrency: int = 1
) -> Relayed:
    """Start ``relays`` relay processes, release them together, and time until the
    broker holds ``expected`` messages (bounded by ``timeout`` seconds)."""
    group = RelayGroup(bench, lib, relays, concurrency)
    servers0 = 0.0
    try:
        group.wait_ready()
        servers0 = bench.server_cpu()
        t0 = time.monotonic()
        group.release()
        wait_for_messages(bench, expected, t0 + timeout)
        wall = time.monotonic() - t0
    finally:
        cpu, problems = group.finish()
    server_cpu = bench.server_cpu() - servers0
    left = bench.sql(f"SELECT count(*) FROM {TABLES[lib]}")[0][0]
    if left:
        problems.append(f"{left} rows left in {TABLES[lib]}")
    return Relayed(lib, relays, concurrency, expected, wall, cpu, tuple(problems), server_cpu)


class Templates:
    """Each library's pending rows, written once through its own write path and
    copied aside, restored before every relay measurement."""

    def __init__(self, bench: Bench, rows: int, libs: list[str]) -> None:
        self.bench = bench
        self.rows = rows
        self.ids: dict[str, set[str]] = {}
        for lib in libs:
            table = TABLES[lib]
            bench.reset([table])
            variant = "aceleryctl-relay" if lib == "aceleryctl" else "dco"
            bench.run(variant, ["fill", "--rows", str(rows)], timeout=900.0)
            bench.sql(f"DROP TABLE IF EXISTS bench_template_{table}")
            bench.sql(f"CREATE TABLE bench_template_{table} AS SELECT * FROM {table}")
            self.ids[lib] = {r[0] for r in bench.sql(f"SELECT task_id FROM {table}")}
            if len(self.ids[lib]) != rows:
                raise RuntimeError(f"{lib}: {len(self.ids[lib])} distinct rows of {rows}")

    def restore(self, lib: str) -> None:
        table = TABLES[lib]
        self.bench.reset([table])
        self.bench.sql(f"INSERT INTO {table} SELECT * FROM bench_template_{table}")
        self.bench.sql(f"ANALYZE {table}")


def measure_relay(
    bench: Bench, templates: Templates, lib: str, relays: int, concurrency: int
) -> Relayed:
    templates.restore(lib)
    timeout = max(120.0, templates.rows / 50)
    result = run_relays(bench, lib, relays, templates.rows, timeout, concurrency)
    problems = list(result.problems)
    problems.extend(check_ids(bench.queued_ids(), templates.rows, templates.ids[lib]))
    return Relayed(
        lib,
        relays,
        concurrency,
        result.rows,
        result.wall,
        result.cpu,
        tuple(problems),
        result.server_cpu,
    )


# -- tables ------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def enqueue_table(results: dict[tuple[str, bool], list[Enqueued]]) -> str:
    lines = [
        "| variant | business row | dispatches/s | settled/s | CPU µs/dispatch, web process | "
        "... PostgreSQL + Redis + relay | loop lag p99 ms | loop lag max ms | in the broker |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (variant, business), runs in results.items():
        landed = (
            f"{runs[0].expected:,} of {runs[0].expected:,}, each once"
            if all(not r.problems for r in runs)
            else "MISMATCH: " + "; ".join(p for r in runs for p in r.problems)
        )
        settled = (
            "(later)" if variant == "dco" else f"{_median([r.settled_rate for r in runs]):,.0f}"
        )
        lines.append(
            f"| {VARIANTS[variant]} | {'yes' if business else 'no'} | "
            f"{_median([r.rate for r in runs]):,.0f} | {settled} | "
            f"{_median([r.cpu_us for r in runs]):,.0f} | "
            f"{_median([r.other_cpu_us for r in runs]):,.0f} | "
            f"{1000 * _median([r.lag_p99 for r in runs]):.1f} | "
            f"{1000 * _median([r.lag_max for r in runs]):.0f} | {landed} |"
        )
    return "\n".join(lines)


def relay_table(results: dict[tuple[str, int, int], list[Relayed]]) -> str:
    lines = [
        "| relay | processes | rows/s | relay CPU µs/row | PostgreSQL + Redis CPU µs/row | "
        "in the broker |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for (lib, relays, concurrency), runs in results.items():
        label = LIBS[lib] + (f", `publish_concurrency={concurrency}`" if concurrency > 1 else "")
        landed = (
            f"{runs[0].rows:,} of {runs[0].rows:,}, each once, table empty"
            if all(not r.problems for r in runs)
            else "MISMATCH: " + "; ".join(p for r in runs for p in r.problems)
        )
        lines.append(
            f"| {label} | {relays} | {_median([r.rate for r in runs]):,.0f} | "
            f"{_median([r.cpu_us for r in runs]):,.0f} | "
            f"{_median([r.server_cpu_us for r in runs]):,.0f} | {landed} |"
        )
    return "\n".join(lines)


def ratio_table(
    enqueued: dict[tuple[str, bool], list[Enqueued]],
    relayed: dict[tuple[str, int, int], list[Relayed]],
) -> str:
    def rate(variant: str, business: bool, settled: bool = False) -> float | None:
        runs = enqueued.get((variant, business))
        if not runs:
            return None
        return _median([r.settled_rate if settled else r.rate for r in runs])

    def relay_rate(lib: str, relays: int) -> float | None:
        runs = relayed.get((lib, relays, 1))
        return _median([r.rate for r in runs]) if runs else None

    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for business in (True, False):
        row = "with" if business else "without"
        outbox = rate("aceleryctl-outbox", business)
        outbox_settled = rate("aceleryctl-outbox", business, settled=True)
        beside = rate("dco+relay", business, settled=True)
        rows += [
            (
                f"outbox / django-celery-outbox, {row} the business row",
                outbox,
                rate("dco", business),
                2.0,
            ),
            (
                f"outbox / Celery `delay_on_commit`, {row} the business row",
                outbox,
                rate("celery", business),
                1.0,
            ),
            (
                f"settled: outbox / django-celery-outbox with its relay beside, "
                f"{row} the business row",
                outbox_settled,
                beside,
                None,
            ),
        ]
    for relays in sorted({key[1] for key in relayed}):
        label = f"relay rows/s, {relays} process{'es' if relays > 1 else ''} each"
        rows.append((label, relay_rate("aceleryctl", relays), relay_rate("dco", relays), 5.0))
    lines = ["| ratio | measured | target | met |", "|---|---:|---:|---|"]
    for label, top, bottom, target in rows:
        wanted = "-" if target is None else f">= {target:g}x"
        if top is None or bottom is None or not bottom:
            lines.append(f"| {label} | (skipped) | {wanted} | - |")
            continue
        value = top / bottom
        met = "-" if target is None else ("yes" if value >= target else "no")
        lines.append(f"| {label} | {value:.2f}x | {wanted} | {met} |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------


def _rotate(items: list[Any], index: int) -> list[Any]:
    shift = index % len(items) if items else 0
    return items[shift:] + items[:shift]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="requests per variant per round")
    parser.add_argument("--callers", type=int, default=100, help="concurrent coroutines")
    parser.add_argument("--pool", type=int, default=20, help="database connections (0: no pool)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--relay-rows", type=int, default=20_000, help="pending rows per relay run")
    parser.add_argument("--relays", default="1,2,4", help="relay process counts")
    parser.add_argument(
        "--relay-batch", type=int, default=100, help="rows a relay claims per round (both)"
    )
    parser.add_argument(
        "--dco-concurrency",
        type=int,
        default=4,
        help="django-celery-outbox publish_concurrency of one extra relay row (1: none)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset (docs untouched)"
    )
    parser.add_argument("--parts", default="enqueue,relay", help="enqueue, relay or both")
    parser.add_argument(
        "--pg-fsync",
        action="store_true",
        help="turn fsync, synchronous_commit and full_page_writes back on (durable commits)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run, docs untouched")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the on-commit and relay children with py-spy into DIR (collapsed "
        "stacks of the thread holding the GIL; docs untouched)",
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.callers, args.rounds, args.relay_rows = 200, 20, 1, 200
        args.relays, args.dco_concurrency = "1,2", 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants must name variants of {list(VARIANTS)}")
    parts = {p.strip() for p in args.parts.split(",")}
    relay_counts = [int(x) for x in args.relays.split(",") if x.strip()]
    notes: list[str] = []
    if not dco_available():
        notes.append(
            "django-celery-outbox is not installed: its variants were skipped "
            "(pip install -e '.[bench]', or pip install django-celery-outbox==0.4.3)"
        )
        variants = [v for v in variants if not v.startswith("dco")]
    pool = args.pool
    if pool and not pool_available():
        notes.append(
            "psycopg_pool is not installed: no connection pool, one persistent "
            "connection per thread (pip install 'psycopg[pool]')"
        )
        pool = 0
    for note in notes:
        print(f"NOTE: {note}", flush=True)
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)

    enqueued: dict[tuple[str, bool], list[Enqueued]] = {}
    relayed: dict[tuple[str, int, int], list[Relayed]] = {}
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    with servers(pool, args.relay_batch, args.py_spy) as bench:
        if args.pg_fsync:
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                bench.sql(f"ALTER SYSTEM SET {name} = on")
            bench.sql("SELECT pg_reload_conf()")
            time.sleep(0.5)
        pg_version = bench.sql("SHOW server_version")[0][0]
        durability = ", ".join(
            f"{name} {bench.sql(f'SHOW {name}')[0][0]}"
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        )
        bench.run("setup-dco" if dco_available() else "setup", ["setup"], timeout=300.0)
        if "enqueue" in parts:
            configs = [(v, b) for b in (True, False) for v in variants]
            enqueued = {config: [] for config in configs}
            for index in range(args.rounds):
                for variant, business in _rotate(configs, index):
                    e = run_enqueue(bench, variant, business, args.n, args.callers)
                    enqueued[(variant, business)].append(e)
                    print(
                        f"round {index + 1} {variant:18s} business={business!s:5s} "
                        f"{e.rate:7,.0f}/s settled {e.settled_rate:7,.0f}/s "
                        f"{e.cpu_us:6,.0f} (sys {1e6 * e.cpu_sys / e.n:5,.0f})"
                        f"+{e.other_cpu_us:5,.0f} µs "
                        f"lag p99 {1000 * e.lag_p99:6.1f} ms "
                        f"landed {e.landed}/{e.expected} {'; '.join(e.problems)}",
                        flush=True,
                    )
        if "relay" in parts:
            libs = ["aceleryctl"] + (["dco"] if dco_available() else [])
            templates = Templates(bench, args.relay_rows, libs)
            relay_configs = [(lib, k, 1) for lib in libs for k in relay_counts]
            if "dco" in libs and args.dco_concurrency > 1:
                relay_configs.append(("dco", 1, args.dco_concurrency))
            relayed = {config: [] for config in relay_configs}
            for index in range(args.rounds):
                for lib, k, concurrency in _rotate(relay_configs, index):
                    r = measure_relay(bench, templates, lib, k, concurrency)
                    relayed[r.key].append(r)
                    print(
                        f"round {index + 1} relay {lib:10s} x{k} c{concurrency} "
                        f"{r.rate:8,.0f} rows/s {r.cpu_us:6,.0f} µs/row {'; '.join(r.problems)}",
                        flush=True,
                    )
        shutil.rmtree(bench.logdir, ignore_errors=True)  # kept when a child failed
    load_after = uptime()
    print(f"load after: {load_after}", flush=True)

    text = report(
        args,
        enqueued,
        relayed,
        pool,
        f"{pg_version} ({durability})",
        load_before,
        load_after,
        notes,
    )
    print()
    print(text)
    bad = [r for runs in enqueued.values() for r in runs if r.problems] + [
        r for runs in relayed.values() for r in runs if r.problems
    ]
    full = (
        not args.smoke
        and args.py_spy is None
        and set(variants) == set(VARIANTS)
        and parts == {"enqueue", "relay"}
    )
    if full:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        replace_section(args.output, HEADING, f"\n{HEADING} ({stamp})\n\n{text}\n")
    if bad:
        print(f"{len(bad)} measurements lost or duplicated messages", file=sys.stderr)
        return 1
    return 0


def report(
    args: argparse.Namespace,
    enqueued: dict[tuple[str, bool], list[Enqueued]],
    relayed: dict[tuple[str, int, int], list[Relayed]],
    pool: int,
    pg_version: str,
    load_before: str,
    load_after: str,
    notes: list[str],
) -> str:
    command = (
        f"python -m bench.outbox --n {args.n} --callers {args.callers} --pool {args.pool} "
        f"--rounds {args.rounds} --relay-rows {args.relay_rows} --relays {args.relays} "
        f"--dco-concurrency {args.dco_concurrency}"
        + (f" --relay-batch {args.relay_batch}" if args.relay_batch != 100 else "")
        + (" --pg-fsync" if args.pg_fsync else "")
    )
    parts = [
        f"`{command}` — {environment()}; PostgreSQL {pg_version}, a throwaway cluster on "
        f"127.0.0.1, psycopg "
        f"{psycopg.__version__}, "
        + (f"a pool of {pool} connections" if pool else "no pool")
        + f"; django-celery-outbox {_version('django-celery-outbox')}. "
        f"Medians over {args.rounds} interleaved rounds; every process (the benchmark's, "
        f"PostgreSQL, redis-server, the relays) on the same 2 cores. "
        f"Load before: `{_load(load_before)}`, after: `{_load(load_after)}`.",
    ]
    parts.extend(f"Note: {note}." for note in notes)
    if enqueued:
        parts.append(
            f"On commit: {args.n:,} requests per variant and round from {args.callers} "
            "coroutines, each its own `ThreadSensitiveContext`, each request "
            "`sync_to_async(fn, thread_sensitive=True)` with `transaction.atomic()` "
            "around the business row and the dispatch."
        )
        parts.append(enqueue_table(enqueued))
    if relayed:
        parts.append(
            f"Relay: {args.relay_rows:,} pending rows, relays in separate processes "
            "released together; rows/s until the broker holds every row; CPU is the "
            "relay processes' own (not PostgreSQL's or Redis's)."
        )
        parts.append(relay_table(relayed))
    parts.append("Ratios (medians) against the targets of the issue:")
    parts.append(ratio_table(enqueued, relayed))
    return "\n\n".join(parts)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def _load(text: str) -> str:
    return text.split("load average:")[-1].strip()


if __name__ == "__main__":
    sys.exit(main())
