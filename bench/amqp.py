"""Dispatch throughput, CPU and event-loop lag on RabbitMQ: the AMQP wire against Celery.

    python -m bench.amqp                 # 10,000 dispatches a mode, 3 interleaved rounds
    python -m bench.amqp --n 2000 --rounds 1
    python -m bench.amqp --smoke         # tiny: CI checks that it runs, nothing more

Modes, all against one private RabbitMQ node on 127.0.0.1 (started here, stopped at
the end), publishing ``add(i, i)`` to a durable queue nobody consumes (the landed
count is then checked exactly):

* ``bare delay()``: a plain loop on one thread, Celery's default (no publisher
  confirms: "ok" once the bytes are in a socket buffer; the reference);
* ``bare delay(), confirm_publish``: the same with ``confirm_publish`` on, so each
  publish waits for RabbitMQ's ack, as the issue's users set it by hand;
* ``await controller.delay``: aceleryctl's AMQP wire (every message confirmed,
  acks of a batch awaited together) from ``--callers`` coroutines;
* ``await controller.delay, direct off``: the same wire with Celery's own
  ``apply_async`` building each message on kombu's ``Producer`` (what the direct
  path saves).

The async modes run with a 1 ms ticker measuring how late the event loop wakes up.
Rounds interleave the modes; each figure is the median over rounds. Targets: the
controller at least as fast as unconfirmed bare ``delay()`` and at least 4x the
confirmed one. The table is printed and, unless ``--smoke``, written to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import amqp
from celery import Celery

from aceleryctl import AsyncCeleryController
from bench._cli import add_rate_options, finish, new_parser, rotated
from bench._support import Measurement, cpu_seconds
from bench.dispatch import _drive, rate_report, table
from tests._support.rabbitmq_server import RabbitMQServer

QUEUE = "bench"

MODES = [
    "bare delay()",
    "bare delay(), confirm_publish",
    "await controller.delay",
    "await controller.delay, direct off",
]


def make_app(url: str, confirm: bool = False) -> Celery:
    app = Celery("bench-amqp", broker=url, set_as_current=False)
    options: dict[str, object] = {"read_timeout": 5, "write_timeout": 5}
    if confirm:
        options.update(confirm_publish=True, confirm_timeout=5)
    app.conf.update(task_default_queue=QUEUE, broker_transport_options=options)

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def run_bare(app: Celery, mode: str, n: int) -> Measurement:
    add = app.tasks["bench.add"]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(n):
        add.delay(i, i)
    return Measurement(mode, n, time.perf_counter() - t0, cpu_seconds() - cpu0, 0)


def run_controller(app: Celery, mode: str, n: int, callers: int) -> Measurement:
    add = app.tasks["bench.add"]
    direct = mode == "await controller.delay"

    async def main() -> Measurement:
        ctl = AsyncCeleryController(
            app, dispatch_timeout=10.0, max_pending=n + callers, direct_publish=direct
        )
        try:
            return await _drive(mode, n, callers, lambda i: ctl.delay(add, i, i))
        finally:
            await ctl.aclose()

    return asyncio.run(main())


class Queue:
    """Counts and purges the bench queue on its own connection."""

    def __init__(self, port: int) -> None:
        self._connection = amqp.Connection(f"127.0.0.1:{port}", connect_timeout=5)
        self._connection.connect()
        self._channel = self._connection.channel()
        self._channel.queue_declare(QUEUE, durable=True, auto_delete=False)

    def version(self) -> str:
        """The node's RabbitMQ version, as it announced itself."""
        version = self._connection.server_properties.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)

    def count(self) -> int:
        declared = self._channel.queue_declare(QUEUE, passive=True)
        return int(declared.message_count)

    def purge(self) -> None:
        self._channel.queue_purge(QUEUE)

    def close(self) -> None:
        self._connection.close()


def run_mode(
    mode: str, apps: dict[bool, Celery], queue: Queue, n: int, callers: int
) -> Measurement:
    queue.purge()
    if mode.startswith("bare"):
        m = run_bare(apps["confirm_publish" in mode], mode, n)
    else:
        m = run_controller(apps[False], mode, n, callers)
    # Unconfirmed publishes return before RabbitMQ has taken them: wait (bounded)
    # until the count settles before judging what landed.
    landed, deadline = queue.count(), time.monotonic() + 10
    while landed < n and time.monotonic() < deadline:
        time.sleep(0.05)
        landed = queue.count()
    queue.purge()
    return Measurement(m.mode, m.n, m.wall, m.cpu, landed, m.lag_p99, m.lag_max)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    add_rate_options(parser, n=10_000, n_help="dispatches per mode per round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.rounds, args.callers = 200, 1, 20
    results: dict[str, list[Measurement]] = {mode: [] for mode in MODES}
    version = "?"
    with RabbitMQServer.start() as server:
        apps = {False: make_app(server.url()), True: make_app(server.url(), confirm=True)}
        queue = Queue(server.port)
        version = queue.version()
        try:
            for round_index in range(args.rounds):
                for mode in rotated(MODES, round_index):
                    m = run_mode(mode, apps, queue, args.n, args.callers)
                    results[mode].append(m)
                    print(
                        f"round {round_index + 1} {mode:36s} {m.rate:9,.0f}/s "
                        f"{m.cpu_us:6.0f} µs landed {m.landed}/{m.n}",
                        flush=True,
                    )
        finally:
            queue.close()
            for app in apps.values():
                app.close()
    text = table(results, args.n)
    mismatched = [mode for mode in results if not all(r.landed == r.n for r in results[mode])]
    write = None if args.smoke else (lambda: write_report(args.output, text, args, version))
    return finish(text, mismatched, write)


def write_report(path: Path, text: str, args: argparse.Namespace, version: str) -> None:
    detail = (
        f", RabbitMQ {version}. Medians over {args.rounds} interleaved rounds of {args.n:,} "
        f"dispatches per mode to a durable queue; the controller's modes use {args.callers} "
        "concurrent coroutines and confirm every message; `bare delay()` is Celery's "
        "default (unconfirmed)."
    )
    rate_report(path, "## RabbitMQ: confirmed dispatch", text, args, "amqp", detail)


if __name__ == "__main__":
    sys.exit(main())
