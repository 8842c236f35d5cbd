"""The run-once guard's cost on the worker: CPU per task with the guard on against off.

    python -m bench.guard             # 5 rounds of 2,000 tasks a worker (about a minute)
    python -m bench.guard --smoke     # 1 round of 50: checks that it runs
    python -m bench.guard --pool solo --rounds 3 --n 1000
    python -m bench.guard --acks-late # tasks acked when they end

Everything runs on 127.0.0.1, started here and stopped by PID (even on error): a
private ``redis-server`` (broker db 0, result backend and the guard's claims db 1,
task records db 2) and two ``celery worker`` processes of the run-once tests' app
(:mod:`tests.integration.run_once.worker_app`), identical but for
``ACELERYCTL["RUN_ONCE"]["ENABLED"]``, each on a queue of its own (prefork with
one child by default). Each round sends ``--n`` no-op tasks (``once.count``: one
``INCR``, result ignored) to each worker in turn, the order alternating between
rounds so that the machine's drift hits both alike, and reads the CPU time of the
worker's processes (main process and pool children, ``/proc/<pid>/stat``) before
the first task is sent and after the last one has run.

Printed: per mode, the medians over rounds of CPU per task (main process, pool
children, both) and tasks per second; the on / off ratio of each round's total CPU
(median and range: the spread the machine's load puts on the figures); then the
guard's cost as a ratio (on / off) and as microseconds added per task. The guard's
work is in the main process: a claim (one ``EVALSHA``) when a message arrives and
a ``SET`` when it is acked (``once.count`` acks early, when it starts;
``--acks-late`` sends ``once.count_late``, acked when it ends).
Nothing is asserted. Every wait is bounded (``--max-seconds`` per round and worker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery

from bench._support import redis_server, uptime
from tests._support.waiting import wait_until
from tests._support.worker import CeleryWorker
from tests.integration.run_once import worker_app
from tests.integration.run_once import worker_settings as ws

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKER_DB, CLAIMS_DB, RECORDS_DB = 0, 1, 2
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid`` and of its live children, in all."""
    main = _stat(pid)[1]
    children = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        try:
            parent, cpu = _stat(int(entry))
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children += cpu
    return main, children


@dataclass(frozen=True)
class Round:
    """One round of one worker: CPU seconds (main, children) and wall seconds."""

    main: float
    children: float
    wall: float


def start_worker(url: str, name: str, guarded: bool, pool: str) -> tuple[CeleryWorker, str]:
    queue = f"bench-guard-{name}"
    env = {
        worker_app.BROKER_ENV: f"{url}/{BROKER_DB}",
        worker_app.BACKEND_ENV: f"{url}/{CLAIMS_DB}",
        worker_app.RECORDS_ENV: f"{url}/{RECORDS_DB}",
        ws.RUN_ONCE_ENV: json.dumps({"ENABLED": guarded}),
        ws.RECORDS_FILE_ENV: os.devnull,
        "DJANGO_SETTINGS_MODULE": "tests.integration.run_once.worker_settings",
    }
    worker = CeleryWorker.launch(
        app="tests.integration.run_once.worker_app",
        name=f"bench-guard-{name}-{os.getpid()}",
        queues=[queue],
        env=env,
        cwd=REPO_ROOT,
        concurrency=1,
        extra_args=[f"--pool={pool}"],
    )
    return worker, queue


def one_round(
    app: Celery,
    records: redis.Redis,
    worker: CeleryWorker,
    queue: str,
    n: int,
    limit: float,
    task: str = "once.count",
) -> Round:
    key = f"bench-guard-{uuid.uuid4().hex}"
    main0, children0 = tree_cpu(worker.process.pid)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("once.count", (key,), queue=queue, ignore_result=True, producer=producer)
    wait_until(
        lambda: int(records.get(key) or 0) >= n,
        timeout=limit,
        interval=0.01,
        message=lambda: f"{records.get(key)} of {n} tasks ran; {worker.log_tail(20)}",
    )
    wall = time.perf_counter() - started
    main1, children1 = tree_cpu(worker.process.pid)
    return Round(main1 - main0, children1 - children0, wall)


def summary(rounds: list[Round], n: int) -> dict[str, float]:
    def per_task(values: list[float]) -> float:
        return 1e6 * statistics.median(values) / n

    return {
        "main_us": per_task([r.main for r in rounds]),
        "children_us": per_task([r.children for r in rounds]),
        "total_us": per_task([r.main + r.children for r in rounds]),
        "rate": n / statistics.median([r.wall for r in rounds]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per worker per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="per round and worker")
    parser.add_argument(
        "--acks-late", action="store_true", help="tasks acked when they end (two round trips)"
    )
    parser.add_argument("--smoke", action="store_true", help="1 round of 50 tasks")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.rounds, args.max_seconds = 50, 1, 60.0
    print(f"load before: {uptime()}")
    task = "once.count_late" if args.acks_late else "once.count"
    print(f"{args.rounds} rounds of {args.n} no-op tasks ({task}) per worker, --pool={args.pool}")
    with redis_server() as (url, _process), tempfile.TemporaryDirectory() as scratch:
        os.environ["ACELERYCTL_TEST_DB_DIR"] = scratch
        worker_app.configure(
            broker_url=f"{url}/{BROKER_DB}",
            result_backend=f"{url}/{CLAIMS_DB}",
            records_url=f"{url}/{RECORDS_DB}",
        )
        app = worker_app.app
        records = redis.Redis.from_url(f"{url}/{RECORDS_DB}", socket_timeout=10)
        workers = {
            "off": start_worker(url, "off", False, args.pool),
            "on": start_worker(url, "on", True, args.pool),
        }
        try:
            for worker, _queue in workers.values():
                worker.wait_ready(timeout=120.0)
            for worker, queue in workers.values():  # warm-up: imports, connections
                one_round(app, records, worker, queue, min(args.n, 200), args.max_seconds, task)
            results: dict[str, list[Round]] = {"off": [], "on": []}
            for index in range(args.rounds):
                order = ("off", "on") if index % 2 == 0 else ("on", "off")
                for mode in order:
                    worker, queue = workers[mode]
                    results[mode].append(
                        one_round(app, records, worker, queue, args.n, args.max_seconds, task)
                    )
        finally:
            for worker, _queue in workers.values():
                worker.stop()
                worker.remove_log()
            records.close()
            app.close()
    off, on = summary(results["off"], args.n), summary(results["on"], args.n)
    print()
    print("| guard | main process µs/task | pool children µs/task | total µs/task | tasks/s |")
    print("|---|---|---|---|---|")
    for mode, figures in (("off", off), ("on", on)):
        print(
            f"| {mode} | {figures['main_us']:.0f} | {figures['children_us']:.0f} "
            f"| {figures['total_us']:.0f} | {figures['rate']:.0f} |"
        )
    print()
    paired = sorted(
        (a.main + a.children) / (b.main + b.children)
        for a, b in zip(results["on"], results["off"], strict=True)
    )
    print(
        f"on / off per round (total CPU): median {statistics.median(paired):.2f}x, "
        f"range {paired[0]:.2f}-{paired[-1]:.2f}x"
    )
    print(
        f"on / off: total CPU {on['total_us'] / off['total_us']:.2f}x, main process "
        f"{on['main_us'] / off['main_us']:.2f}x, tasks/s {on['rate'] / off['rate']:.2f}x; "
        f"added per task: {on['total_us'] - off['total_us']:+.0f} µs CPU "
        f"({on['main_us'] - off['main_us']:+.0f} µs in the main process)"
    )
    print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
