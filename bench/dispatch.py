"""Dispatch throughput, CPU and event-loop lag: aceleryctl against the ways people offload.

    python -m bench.dispatch                # 20,000 dispatches a mode, 3 interleaved rounds
    python -m bench.dispatch --n 2000 --rounds 1
    python -m bench.dispatch --smoke        # tiny: CI checks that it runs, nothing more
    python -m bench.dispatch --documented --n 5000   # the docs' configuration, events on/off
    python -m bench.dispatch --metrics       # the metrics listeners' cost (docs updated)
    python -m bench.dispatch --loop-prototype   # publishing from the loop thread (prototype)

Modes, all against one private Redis on 127.0.0.1, publishing ``add(i, i)`` to a
queue nobody consumes (the landed count is then checked exactly):

* ``bare delay()``: a plain loop on one thread, no event loop (the reference);
* ``sync_to_async(thread_sensitive=True)``: each caller in its own
  ``ThreadSensitiveContext``, as Django's ASGI handler runs a request;
* ``sync_to_async(thread_sensitive=False)``, ``anyio.to_thread``,
  ``run_in_executor`` (the loop's default executor);
* ``await controller.delay``: aceleryctl.

The async modes run ``--callers`` coroutines (default 100) sharing the work, with
a 1 ms ticker measuring how late the event loop wakes up. Rounds interleave the
modes so that drift on a shared machine hits all of them alike; each figure is the
median over rounds. The table is printed and, unless ``--smoke``, written to
docs/benchmarks.md.

``--documented`` measures instead the configuration the docs recommend
(``aceleryctl`` installed, a ``channels_redis`` layer) with live events on and
off, side by side, as ratios (see :mod:`bench._documented`); with ``--smoke`` it
only checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import celery
import django
import kombu
import redis
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from celery import Celery

from aceleryctl import AsyncCeleryController
from bench._cli import add_rate_options, finish, new_parser, rotated, section, today
from bench._support import LagTicker, Measurement, cpu_seconds, redis_server, shares

QUEUE = "bench"


def make_app(url: str) -> Celery:
    app = Celery("bench", broker=f"{url}/0", set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def run_bare(app: Celery, n: int, callers: int) -> Measurement:
    add = app.tasks["bench.add"]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(n):
        add.delay(i, i)
    return Measurement("bare delay()", n, time.perf_counter() - t0, cpu_seconds() - cpu0, 0)


Dispatch = Callable[[int], Awaitable[Any]]


async def _drive(
    mode: str, n: int, callers: int, dispatch: Dispatch, per_caller: Any = None
) -> Measurement:
    ticker = LagTicker()
    share = shares(n, callers)

    async def caller(count: int, base: int) -> None:
        async def body() -> None:
            for i in range(count):
                await dispatch(base + i)

        if per_caller is None:
            await body()
        else:
            async with per_caller():
                await body()

    bases = [sum(share[:c]) for c in range(callers)]
    ticker.start()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(caller(share[c], bases[c]) for c in range(callers)))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    p99, worst = await ticker.stop()
    return Measurement(mode, n, wall, cpu, 0, p99, worst)


def run_async_mode(mode: str, app: Celery, n: int, callers: int) -> Measurement:
    add = app.tasks["bench.add"]

    async def main() -> Measurement:
        if mode == "sync_to_async(thread_sensitive=True)":
            call = sync_to_async(add.delay, thread_sensitive=True)
            return await _drive(mode, n, callers, lambda i: call(i, i), ThreadSensitiveContext)
        if mode == "sync_to_async(thread_sensitive=False)":
            call = sync_to_async(add.delay, thread_sensitive=False)
            return await _drive(mode, n, callers, lambda i: call(i, i))
        if mode == "anyio.to_thread":
            return await _drive(
                mode, n, callers, lambda i: anyio.to_thread.run_sync(add.delay, i, i)
            )
        if mode == "run_in_executor":
            loop = asyncio.get_running_loop()
            return await _drive(
                mode, n, callers, lambda i: loop.run_in_executor(None, add.delay, i, i)
            )
        if mode in ("await controller.delay", LOOP_MODE):
            ctl = AsyncCeleryController(
                app, dispatch_timeout=10.0, max_pending=n + callers, loop_publish=mode == LOOP_MODE
            )
            try:
                return await _drive(mode, n, callers, lambda i: ctl.delay(add, i, i))
            finally:
                await ctl.aclose()
        raise ValueError(mode)

    return asyncio.run(main())


#: The controller with ``loop_publish=True`` (written from the loop, no thread hop).
LOOP_MODE = "await controller.delay (loop_publish)"

MODES = [
    "bare delay()",
    "sync_to_async(thread_sensitive=True)",
    "sync_to_async(thread_sensitive=False)",
    "anyio.to_thread",
    "run_in_executor",
    "await controller.delay",
    LOOP_MODE,
]


def run_mode(mode: str, app: Celery, client: redis.Redis, n: int, callers: int) -> Measurement:
    client.delete(QUEUE)
    if mode == "bare delay()":
        m = run_bare(app, n, callers)
    else:
        m = run_async_mode(mode, app, n, callers)
    landed = int(client.llen(QUEUE))
    client.delete(QUEUE)
    return Measurement(m.mode, m.n, m.wall, m.cpu, landed, m.lag_p99, m.lag_max)


def median_of(runs: list[Measurement]) -> dict[str, float | None]:
    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return {
        "rate": med([r.rate for r in runs]),
        "cpu_us": med([r.cpu_us for r in runs]),
        "lag_p99": med([r.lag_p99 for r in runs]),
        "lag_max": med([r.lag_max for r in runs]),
        "landed_ok": float(all(r.landed == r.n for r in runs)),
    }


def table(results: dict[str, list[Measurement]], n: int) -> str:
    """The markdown table of the modes in ``results`` (``bare delay()`` among them)."""
    bare = median_of(results["bare delay()"])
    lines = [
        "| mode | dispatches/s | CPU µs/dispatch | x bare throughput | CPU x bare | "
        "loop lag p99 ms | loop lag max ms | landed |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in results:
        m = median_of(results[mode])
        rate, cpu = m["rate"] or 0.0, m["cpu_us"] or 0.0
        lag = "-" if m["lag_p99"] is None else f"{1000 * m['lag_p99']:.2f}"
        worst = "-" if m["lag_max"] is None else f"{1000 * m['lag_max']:.1f}"
        landed = f"{n}/{n} exact" if m["landed_ok"] else "MISMATCH"
        lines.append(
            f"| {mode} | {rate:,.0f} | {cpu:.0f} | {rate / (bare['rate'] or 1):.2f} | "
            f"{cpu / (bare['cpu_us'] or 1):.2f} | {lag} | {worst} | {landed} |"
        )
    return "\n".join(lines)


def environment() -> str:
    return (
        f"Python {platform.python_version()}, Django {django.get_version()}, "
        f"Celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}; "
        f"{platform.machine()}, {__import__('os').cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    add_rate_options(parser, n=20_000, n_help="dispatches per mode per round")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset (docs untouched)"
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="the metrics listeners' cost: controller.delay with each, and without",
    )
    parser.add_argument(
        "--documented",
        action="store_true",
        help="the documented configuration, live events on against off (docs untouched)",
    )
    parser.add_argument(
        "--loop-prototype",
        action="store_true",
        help="publishing from the event-loop thread (a prototype) against the controller",
    )
    args = parser.parse_args(argv)
    if args.loop_prototype:
        from bench import _loop_rate

        if args.smoke:
            args.n, args.rounds, args.callers = 200, 1, 20
        print(_loop_rate.run(args.n, args.callers, args.rounds))
        return 0
    if args.documented:
        from bench import _documented

        if args.smoke:
            args.n, args.rounds, args.callers = 200, 2, 20
        print(_documented.run(args.n, args.callers, args.rounds))
        return 0
    if args.metrics:
        from bench import _metrics

        if args.smoke:
            args.n, args.rounds, args.callers = 300, 1, 20
        text = _metrics.run(args.n, args.callers, args.rounds)
        print(text)
        if not args.smoke:
            write_metrics_report(args.output, text, args)
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "bare delay()" not in modes:
        parser.error(f"--modes must name modes of {MODES} and include 'bare delay()'")
    if args.smoke:
        args.n, args.rounds, args.callers = 200, 1, 20
    results: dict[str, list[Measurement]] = {mode: [] for mode in MODES if mode in modes}
    with redis_server() as (url, _process):
        app = make_app(url)
        client = redis.Redis.from_url(f"{url}/0")
        for round_index in range(args.rounds):
            for mode in rotated(list(results), round_index):
                m = run_mode(mode, app, client, args.n, args.callers)
                results[mode].append(m)
                print(
                    f"round {round_index + 1} {mode:40s} {m.rate:9,.0f}/s {m.cpu_us:6.0f} µs"
                    f" landed {m.landed}/{m.n}",
                    flush=True,
                )
        client.close()
    text = table(results, args.n)
    mismatched = [mode for mode in results if not all(r.landed == r.n for r in results[mode])]
    if args.smoke or len(results) < len(MODES):
        return finish(text, mismatched, None)  # docs untouched
    detail = (
        f". Medians over {args.rounds} interleaved rounds of {args.n:,} dispatches per mode; "
        f"async modes use {args.callers} concurrent coroutines."
    )
    heading = "## Dispatch throughput"
    return finish(
        text, mismatched, lambda: rate_report(args.output, heading, text, args, "dispatch", detail)
    )


def rate_report(
    path: Path, heading: str, text: str, args: argparse.Namespace, command: str, detail: str
) -> None:
    """Write ``text`` into ``path`` under ``heading``, after how ``python -m
    bench.<command>`` ran (``--n``, ``--callers``, ``--rounds``), on what
    (:func:`environment`), then ``detail``."""
    intro = (
        f"`python -m bench.{command} --n {args.n} --callers {args.callers} "
        f"--rounds {args.rounds}` — {environment()}{detail}"
    )
    replace_section(path, heading, section(heading, intro, text))


def write_metrics_report(path: Path, text: str, args: argparse.Namespace) -> None:
    body = (
        f"\n## Metrics overhead ({today()})\n\n"
        f"`python -m bench.dispatch --metrics --n {args.n} --callers {args.callers} "
        f"--rounds {args.rounds}` — {environment()}. `await controller.delay` from "
        f"{args.callers} coroutines ({args.n:,} dispatches) and from one "
        f"({max(args.n // 10, 100):,}), without a metrics listener, with `PrometheusMetrics` "
        "(its own registry; and in `prometheus_client`'s multiprocess mode) and with "
        "`OpenTelemetryMetrics` (an SDK meter provider, in-memory reader); one collection "
        f"inside each measured window; medians over {args.rounds} rotated rounds. "
        "Target: the listener under 5% of a dispatch's CPU (CPU x no metrics < 1.05).\n\n"
        f"{text}\n"
    )
    replace_section(path, "## Metrics overhead", body)


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the section starting with ``heading`` (up to the next ``## ``) in ``path``."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    start = existing.find(heading)
    if start == -1:
        path.write_text(existing.rstrip() + "\n" + body)
        return
    end = existing.find("\n## ", start + len(heading))
    tail = existing[end:] if end != -1 else "\n"
    path.write_text(existing[:start].rstrip() + "\n" + body + tail)


if __name__ == "__main__":
    sys.exit(main())
