"""Result waiting: ``await aget(result)`` against ``await asyncio.to_thread(result.get)``.

    python -m bench.results                 # 300 waits a mode, 3 interleaved rounds
    python -m bench.results --n 100 --rounds 1
    python -m bench.results --smoke         # tiny: CI checks that it runs, nothing more

A private ``redis-server`` on 127.0.0.1 (broker db 0, results db 1) and one
prefork ``celery worker`` (2 children) of :mod:`bench._results_app`. Each sample
dispatches ``stamp(work)`` through an ``AsyncCeleryController`` and waits for it
in the mode under test; the task sleeps ``--work`` seconds (so that the wait has
begun) and returns ``time.time()`` as it ends, on the worker. The latency is the
time from that stamp to the wait returning, in the benchmark process (same
machine, same clock): what a view waiting on a result loses after the task is
done. ``--concurrent`` samples run at once (default 4).

Then the thread cost: ``--fanout`` (default 1,000) waits at once on as many
tasks (sent with ``--countdown``, 2 s, so that all the waits have begun when
the first ends), in each mode; the peak of ``threading.active_count()`` above the
baseline while they wait (the loop's default executor made afresh first), and
the same end-to-return latency for each of those waits (the worker runs the
tasks two at a time, so most of them wait a while: the figure says how soon
a wait sees its task's end when a thousand are pending), and how long, at
worst, a ``to_thread`` call with nothing to do takes meanwhile (other code of
the process needing the default executor).

Modes alternate within each round; figures are medians over rounds, printed with
the ratio of ``to_thread``'s to ``aget``'s, and written to docs/benchmarks.md
unless ``--smoke``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import celery
import redis
from celery.result import AsyncResult

from aceleryctl import AsyncCeleryController, aget
from aceleryctl.awaiting import aclose_endpoints
from bench._support import percentile, redis_server, uptime
from bench.dispatch import replace_section
from tests._support.worker import CeleryWorker

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("aget", "to_thread(get)")

Wait = Callable[[AsyncResult[Any]], Awaitable[Any]]


async def _wait_aget(result: AsyncResult[Any]) -> Any:
    return await aget(result, timeout=120.0)


async def _wait_thread(result: AsyncResult[Any]) -> Any:
    return await asyncio.to_thread(result.get, timeout=120.0)


WAITS: dict[str, Wait] = {"aget": _wait_aget, "to_thread(get)": _wait_thread}


async def latencies(
    controller: AsyncCeleryController, wait: Wait, n: int, concurrent: int, work: float
) -> list[float]:
    """``n`` samples of (wait returned) - (task ended), in seconds."""
    from bench._results_app import stamp

    found: list[float] = []
    remaining = iter(range(n))

    async def sampler() -> None:
        for _ in remaining:
            result = await controller.delay(stamp, work)
            ended = await wait(result)
            found.append(time.time() - ended)

    await asyncio.gather(*(sampler() for _ in range(concurrent)))
    return found


async def fanout(
    controller: AsyncCeleryController, wait: Wait, n: int, work: float, countdown: float
) -> tuple[int, list[float], list[float]]:
    """``n`` waits at once: (peak extra threads, end-to-return latencies, probe latencies).

        The loop gets a fresh default executor first, so that threads an earlier
        mode started are not counted as already there. The tasks are sent with
        ``countdown`` so that none ends before all the waits have begun. While the
        waits run, a probe keeps calling ``asyncio.to_thread`` with nothing to do,
        one call at a time: how long, at worst, other code needing a thread waits
    meanwhile.
    """
    from bench._results_app import stamp

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="bench-default"))
    results = await asyncio.gather(
        *(controller.apply_async(stamp, args=(work,), countdown=countdown) for _ in range(n))
    )
    await asyncio.to_thread(int)  # the probe's thread: part of the baseline
    baseline = threading.active_count()
    found: list[float] = []
    probes: list[float] = []

    async def one(result: AsyncResult[Any]) -> None:
        ended = await wait(result)
        found.append(time.time() - ended)

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.to_thread(int)
            probes.append(time.perf_counter() - before)
            await asyncio.sleep(0.05)

    waits = [asyncio.ensure_future(one(r)) for r in results]
    prober = asyncio.ensure_future(probe())
    peak = baseline
    while not all(w.done() for w in waits):
        peak = max(peak, threading.active_count())
        await asyncio.sleep(0.01)
    await asyncio.gather(*waits)
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    return peak - baseline, found, probes


async def run(args: argparse.Namespace, broker: str, backend: str) -> dict[str, Any]:
    from bench._results_app import app

    app.conf.update(broker_url=broker, result_backend=backend)
    controller = AsyncCeleryController(app=app, dispatch_timeout=10.0)
    samples: dict[str, list[list[float]]] = {m: [] for m in MODES}
    fan: dict[str, list[tuple[int, list[float], list[float]]]] = {m: [] for m in MODES}
    try:
        for mode in MODES:  # warm up: connections, executor threads, worker children
            await latencies(controller, WAITS[mode], 5, 1, args.work)
        for round_index in range(args.rounds):
            order = MODES if round_index % 2 == 0 else MODES[::-1]
            for mode in order:
                found = await latencies(controller, WAITS[mode], args.n, args.concurrent, args.work)
                samples[mode].append(found)
                print(
                    f"round {round_index + 1} {mode:16s} p50 {1e3 * percentile(found, 0.5):7.2f} ms"
                    f"  p99 {1e3 * percentile(found, 0.99):7.2f} ms",
                    flush=True,
                )
            for mode in order:
                threads, found, probes = await fanout(
                    controller, WAITS[mode], args.fanout, args.work, args.countdown
                )
                fan[mode].append((threads, found, probes))
                print(
                    f"round {round_index + 1} {mode:16s} {args.fanout} waits at once: "
                    f"+{threads} threads, p50 {1e3 * percentile(found, 0.5):7.2f} ms"
                    f"  p99 {1e3 * percentile(found, 0.99):7.2f} ms; to_thread(int) meanwhile"
                    f" at worst {1e3 * max(probes, default=0.0):.1f} ms",
                    flush=True,
                )
    finally:
        await controller.aclose()
        await aclose_endpoints()
    return {"samples": samples, "fanout": fan}


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    def median_of(runs: dict[str, list[list[float]]], q: float) -> dict[str, float]:
        return {m: statistics.median(percentile(r, q) for r in runs[m]) for m in MODES}

    samples = {m: figures["samples"][m] for m in MODES}
    fanned = {m: [run[1] for run in figures["fanout"][m]] for m in MODES}
    probed = {m: [run[2] for run in figures["fanout"][m]] for m in MODES}
    p50, p99 = median_of(samples, 0.5), median_of(samples, 0.99)
    f50, f99 = median_of(fanned, 0.5), median_of(fanned, 0.99)
    probe = median_of(probed, 1.0)  # the worst call of each run
    threads = {m: statistics.median(run[0] for run in figures["fanout"][m]) for m in MODES}
    fan = f"{args.fanout:,}"
    rows = [
        f"| mode | end→return p50 | p99 | threads added by {fan} waits "
        f"| end→return p50, {fan} at once | p99, {fan} at once "
        "| `to_thread(int)` meanwhile, worst |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        rows.append(
            f"| `{mode}` | {1e3 * p50[mode]:.2f} ms | {1e3 * p99[mode]:.2f} ms "
            f"| +{threads[mode]:.0f} | {1e3 * f50[mode]:.1f} ms | {1e3 * f99[mode]:.1f} ms "
            f"| {1e3 * probe[mode]:.1f} ms |"
        )
    base, other = "aget", "to_thread(get)"

    def ratio(values: dict[str, float]) -> str:
        return f"{values[other] / values[base]:.2f}x" if values[base] else "n/a"

    rows.append(
        f"| ratio `{other}` / `{base}` | {ratio(p50)} | {ratio(p99)} "
        f"| +{threads[other]:.0f} against +{threads[base]:.0f} | {ratio(f50)} | {ratio(f99)} "
        f"| {ratio(probe)} |"
    )
    return "\n".join(rows)


def environment() -> str:
    return (
        f"Python {platform.python_version()}, Celery {celery.__version__}, "
        f"redis-py {redis.__version__}; {platform.machine()}, {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="latency samples per mode per round")
    parser.add_argument("--concurrent", type=int, default=4, help="samples at once")
    parser.add_argument("--fanout", type=int, default=1000, help="waits at once (thread cost)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--work", type=float, default=0.02, help="task's sleep, seconds")
    parser.add_argument(
        "--countdown", type=float, default=2.0, help="fan-out tasks' countdown, seconds"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run, docs untouched")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.rounds, args.fanout, args.concurrent, args.countdown = 10, 1, 20, 2, 0.5
    print(uptime(), flush=True)
    with redis_server() as (url, _process):
        env = {"ACELERYCTL_BENCH_BROKER": f"{url}/0", "ACELERYCTL_BENCH_BACKEND": f"{url}/1"}
        worker = CeleryWorker.start(
            app="bench._results_app",
            name=f"bench-results-{os.getpid()}",
            queues=["bench-results"],
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            figures = asyncio.run(
                run(args, env["ACELERYCTL_BENCH_BROKER"], env["ACELERYCTL_BENCH_BACKEND"])
            )
        finally:
            worker.stop()
            worker.remove_log()
    text = table(figures, args)
    print()
    print(text)
    print(uptime())
    if not args.smoke:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        body = (
            f"\n## Result waiting ({stamp})\n\n"
            f"`python -m bench.results --n {args.n} --concurrent {args.concurrent} "
            f"--fanout {args.fanout} --rounds {args.rounds} --work {args.work} "
            f"--countdown {args.countdown}` — "
            f"{environment()}; Redis broker and result backend, one prefork worker "
            f"(2 children). Medians over {args.rounds} interleaved rounds.\n\n{text}\n"
        )
        replace_section(args.output, "## Result waiting", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
