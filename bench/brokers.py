"""The direct wire on Redis Sentinel and on TLS Redis, against plain Redis, in one run.

    python -m bench.brokers                 # 20,000 dispatches a broker, 3 rotated rounds
    python -m bench.brokers --n 5000 --rounds 1
    python -m bench.brokers --smoke         # tiny: CI checks that it runs, nothing more

``await controller.delay`` from ``--callers`` coroutines (default 100), publishing
``add(i, i)`` to a queue nobody consumes, on four brokers started here on 127.0.0.1:

* ``plain Redis``: ``redis://`` (the reference);
* ``Sentinel``: ``sentinel://...;sentinel://...;sentinel://...`` with
  ``master_name``, a primary, one replica and three ``redis-sentinel`` processes;
* ``Sentinel, REPLICA_ACKS=1``: the same, each batch waiting for the replica (``WAIT``);
* ``TLS + ACL user``: ``rediss://user:password@...`` with ``broker_use_ssl``
  verifying a certificate the run made.

Rounds rotate the order so that drift on a shared machine hits all alike; figures
are medians; the ratio column is each broker's throughput over plain Redis's
(target: the direct wire within 20%, a ratio of 0.80 or more). The landed count is
checked exactly on each broker. The table is printed and, unless ``--smoke``,
written to docs/benchmarks.md ("## Redis Sentinel and TLS").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from aceleryctl import AsyncCeleryController
from bench._support import LagTicker, Measurement, cpu_seconds, delay_from, shares
from bench.dispatch import environment, replace_section
from tests._support.redis_sentinel import SentinelCluster
from tests._support.redis_server import RedisServer
from tests._support.redis_tls import TlsRedis

QUEUE = "bench"


@dataclass(frozen=True)
class Broker:
    """One broker under test: how Celery reaches it and how to count what landed."""

    name: str
    url: str
    conf: dict[str, Any]
    client: redis.Redis
    replica_acks: int = 0


def make_app(broker: Broker) -> Celery:
    app = Celery("bench-brokers", broker=broker.url, set_as_current=False)
    options = {"socket_timeout": 5, "socket_connect_timeout": 5}
    app.conf.update(task_default_queue=QUEUE, broker_transport_options=options)
    app.conf.update(broker.conf)

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


async def measure(broker: Broker, n: int, callers: int) -> Measurement:
    app = make_app(broker)
    add = app.tasks["bench.add"]
    ctl = AsyncCeleryController(
        app, dispatch_timeout=10.0, max_pending=n + callers, replica_acks=broker.replica_acks
    )
    share = shares(n, callers)
    try:
        await ctl.delay(add, 0, 0)  # connect before the clock starts
        ticker = LagTicker()
        ticker.start()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await delay_from(ctl, add, share)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        p99, worst = await ticker.stop()
        assert ctl.statistics().direct == n + 1, "a call left the direct wire"
    finally:
        await ctl.aclose()
    return Measurement(broker.name, n, wall, cpu, 0, p99, worst)


def run_one(broker: Broker, n: int, callers: int) -> Measurement:
    broker.client.delete(QUEUE)
    m = asyncio.run(measure(broker, n, callers))
    landed = int(broker.client.llen(QUEUE)) - 1  # the warm-up call
    broker.client.delete(QUEUE)
    return Measurement(m.mode, m.n, m.wall, m.cpu, landed, m.lag_p99, m.lag_max)


@contextlib.contextmanager
def brokers() -> Iterator[list[Broker]]:
    """Start the four brokers; stop them (by PID) on exit."""
    server = os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server")
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(RedisServer.start(executable=server))
        cluster = stack.enter_context(SentinelCluster.start(server=server))
        tls = stack.enter_context(TlsRedis.start(executable=server))
        clients = [plain.client(), cluster.client(cluster.primary_port), tls.client()]
        for client in clients:
            stack.callback(client.close)
        sentinel_conf = {"broker_transport_options": cluster.transport_options()}
        yield [
            Broker("plain Redis", plain.url(0), {}, clients[0]),
            Broker("Sentinel", cluster.url(0), sentinel_conf, clients[1]),
            Broker("Sentinel, REPLICA_ACKS=1", cluster.url(0), sentinel_conf, clients[1], 1),
            Broker("TLS + ACL user", tls.url(0), {"broker_use_ssl": tls.ssl_options()}, clients[2]),
        ]


def table(results: dict[str, list[Measurement]], n: int) -> str:
    """Markdown: medians per broker and the ratio to plain Redis."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    base = med([r.rate for r in results["plain Redis"]]) or 1.0
    lines = [
        "| broker | dispatches/s | x plain Redis | CPU µs/dispatch | loop lag p99 ms | landed |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, runs in results.items():
        rate = med([r.rate for r in runs]) or 0.0
        cpu = med([r.cpu_us for r in runs]) or 0.0
        lag = med([r.lag_p99 for r in runs])
        shown_lag = "-" if lag is None else f"{1000 * lag:.2f}"
        landed = f"{n}/{n} exact" if all(r.landed == r.n for r in runs) else "MISMATCH"
        lines.append(
            f"| {name} | {rate:,.0f} | {rate / base:.2f} | {cpu:.0f} | {shown_lag} | {landed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="dispatches per broker per round")
    parser.add_argument("--callers", type=int, default=100, help="concurrent coroutines")
    parser.add_argument("--rounds", type=int, default=3, help="rotated rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny run, docs untouched")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.callers, args.rounds = 200, 20, 1
    results: dict[str, list[Measurement]] = {}
    with brokers() as under_test:
        for round_no in range(args.rounds):
            shift = round_no % len(under_test)
            for broker in under_test[shift:] + under_test[:shift]:
                m = run_one(broker, args.n, args.callers)
                results.setdefault(broker.name, []).append(m)
                print(f"round {round_no + 1}: {broker.name}: {m.rate:,.0f}/s", flush=True)
    ordered = {b: results[b] for b in ("plain Redis", *[k for k in results if k != "plain Redis"])}
    text = table(ordered, args.n)
    print(text)
    if not args.smoke:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        body = (
            f"\n## Redis Sentinel and TLS ({stamp})\n\n"
            f"`python -m bench.brokers --n {args.n} --callers {args.callers} --rounds "
            f"{args.rounds}` — {environment()}. `await controller.delay` from {args.callers} "
            "coroutines on the direct wire, per broker; medians over rotated rounds. "
            "Target: Sentinel and TLS within 20% of plain Redis (x plain Redis >= 0.80).\n\n"
            f"{text}\n"
        )
        replace_section(args.output, "## Redis Sentinel and TLS", body)
    if any(r.landed != r.n for runs in results.values() for r in runs):
        print("landed-count mismatch", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
