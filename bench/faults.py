"""Fault figures: what a dead or silent broker costs a caller, aceleryctl against bare Celery.

    python -m bench.faults            # full figures (about a minute: includes a 10 s pause)
    python -m bench.faults --smoke    # short pauses, CI checks that it runs

Scenarios, each against servers this script starts on 127.0.0.1:

1. tarpit (accepts TCP connections, never answers): time for one call to fail,
   the event loop's worst lag meanwhile, and once the breaker is open the p50/p99
   cost of a rejected call. Bare Celery is run in a thread and given up on after
   ``--bare-limit`` seconds (it does not fail by itself).
2. Redis paused (SIGSTOP) for ``--pause`` seconds under 100 concurrent callers: how
   many calls waited longer than their deadline, for aceleryctl and for bare
   ``delay()`` on threads; and the time from SIGCONT to the first successful
   dispatch through aceleryctl.

Nothing here asserts a speed; the figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from celery import Celery

from aceleryctl import AsyncCeleryController, BreakerState, CircuitBreaker
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError
from bench._support import LagTicker, percentile, redis_server
from bench.dispatch import replace_section
from tests._support.tarpit import Tarpit

DEADLINE = 2.0  # seconds: aceleryctl's default dispatch_timeout


def make_app(broker: str) -> Celery:
    app = Celery("faults-bench", broker=broker, set_as_current=False)

    @app.task(name="faults.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


async def tarpit_figures(bare_limit: float) -> dict[str, str]:
    tarpit = Tarpit().start()
    url = tarpit.url
    out: dict[str, str] = {}
    try:
        app = make_app(url)
        # Celery loads its configuration and task registry lazily, on first use;
        # a project does that at start-up, so the lag measured here is the calls'.
        app.finalize(auto=True)
        app.amqp.router  # noqa: B018
        ctl = AsyncCeleryController(app, dispatch_timeout=DEADLINE)
        ticker = LagTicker()
        ticker.start()
        started = time.perf_counter()
        try:
            await ctl.delay(app.tasks["faults.add"], 1, 1)
        except TaskDispatchError as exc:
            out["first call"] = (
                f"{type(exc).__name__} after {time.perf_counter() - started:.2f} s "
                f"(deadline {DEADLINE:g} s)"
            )
        # Keep calling until the breaker opens (each failure takes a deadline).
        for _ in range(20):
            if ctl.breaker.state is BreakerState.OPEN:
                break
            with contextlib.suppress(TaskDispatchError):
                await ctl.delay(app.tasks["faults.add"], 1, 1)
        p99, worst = await ticker.stop()
        out["event loop lag while failing, p99 / max"] = f"{p99 * 1000:.1f} / {worst * 1000:.1f} ms"
        rejections: list[float] = []
        for _ in range(2000):
            t0 = time.perf_counter()
            try:
                await ctl.delay(app.tasks["faults.add"], 1, 1)
            except CircuitOpenError:
                rejections.append(time.perf_counter() - t0)
        out["rejected call while open, p50 / p99"] = (
            f"{percentile(rejections, 0.5) * 1e6:.1f} / {percentile(rejections, 0.99) * 1e6:.1f} µs"
            f" ({len(rejections)} calls)"
        )
        await ctl.aclose(0)
        # Bare Celery against the same tarpit: one delay() on a thread, given up on.
        bare = make_app(url)
        done = threading.Event()
        t0 = time.perf_counter()

        def bare_call() -> None:
            try:
                with contextlib.suppress(Exception):
                    bare.tasks["faults.add"].delay(1, 1)
            finally:
                done.set()

        threading.Thread(target=bare_call, daemon=True).start()
        if done.wait(bare_limit):
            out["bare delay()"] = f"returned after {time.perf_counter() - t0:.1f} s"
        else:
            out["bare delay()"] = f"still blocked after {bare_limit:g} s, no error (abandoned)"
    finally:
        tarpit.stop()
    return out


async def pause_figures(pause: float) -> dict[str, str]:
    out: dict[str, str] = {}
    with redis_server() as (url, process):
        app = make_app(f"{url}/0")
        add = app.tasks["faults.add"]
        ctl = AsyncCeleryController(
            app, dispatch_timeout=DEADLINE, breaker=CircuitBreaker(reset_timeout=0.5)
        )
        await ctl.delay(add, 0, 0)  # connect first
        waits: list[float] = []

        async def caller() -> None:
            t0 = time.perf_counter()
            with contextlib.suppress(TaskDispatchError):
                await ctl.delay(add, 1, 1)
            waits.append(time.perf_counter() - t0)

        bare_waits: list[float] = []

        def bare_call() -> None:
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                add.delay(1, 1)
            bare_waits.append(time.perf_counter() - t0)

        # Both sets of 100 callers start together, as the pause begins.
        os.kill(process.pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(100) as pool:
                futures = [pool.submit(bare_call) for _ in range(100)]
                await asyncio.gather(*(caller() for _ in range(100)))
                await asyncio.sleep(max(0.0, pause - max(waits)))  # the rest of the pause
                os.kill(process.pid, signal.SIGCONT)
                resumed_at = time.perf_counter()
                for f in futures:
                    f.result(timeout=60)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        over = sum(w > DEADLINE + 0.1 for w in waits)
        out["aceleryctl: callers past their deadline"] = (
            f"{over} of 100 (longest wait {max(waits):.2f} s)"
        )
        over_bare = sum(w > DEADLINE + 0.1 for w in bare_waits)
        out[f"bare delay() on 100 threads: callers past {DEADLINE:g} s"] = (
            f"{over_bare} of 100 (longest wait {max(bare_waits):.2f} s)"
        )
        first = None
        for _ in range(400):
            try:
                await ctl.delay(add, 2, 2)
                first = time.perf_counter() - resumed_at
                break
            except TaskDispatchError:
                await asyncio.sleep(0.01)  # polling for recovery
        out["Redis back -> first successful dispatch"] = (
            f"{first:.2f} s" if first is not None else "not within 4 s"
        )
        await ctl.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pause", type=float, default=10.0, help="seconds Redis stays paused")
    parser.add_argument("--bare-limit", type=float, default=30.0, help="seconds to wait on bare")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.pause, args.bare_limit = 3.0, 3.0
    figures = asyncio.run(tarpit_figures(args.bare_limit))
    figures.update(asyncio.run(pause_figures(args.pause)))
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in figures.items()]
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        body = (
            f"\n## Fault figures\n\n`python -m bench.faults --pause {args.pause:g}` — "
            f"dispatch_timeout {DEADLINE:g} s; Redis paused {args.pause:g} s.\n\n{text}\n"
        )
        replace_section(args.output, "## Fault figures", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
