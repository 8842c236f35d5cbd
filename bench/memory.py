"""Memory of the dispatching process over a long run of ``await controller.delay``.

    python -m bench.memory                  # 1,000,000 dispatches (about 5-10 minutes)
    python -m bench.memory --n 200000 --tracemalloc --no-docs
    python -m bench.memory --smoke          # 20,000: CI checks that it runs; docs untouched

One process, one event loop: ``--callers`` coroutines (default 100) share ``--n``
``await controller.delay(add, i, i)`` calls against a private ``redis-server`` on
127.0.0.1. Nobody consumes the queue; a thread of this process empties it every
``--trim-interval`` seconds on a client of its own (``LLEN`` and ``LTRIM`` in one
``MULTI``), so Redis's memory stays bounded and the messages that landed are still
counted exactly. What is measured is this client process:

* current RSS (``/proc/self/statm``) and the number of objects the garbage
  collector tracks, every ``--sample-every`` dispatches (and at 0);
* peak RSS (``getrusage`` ``ru_maxrss``) at the end;
* with ``--tracemalloc``, the lines whose allocations grew most between the
  100,000th dispatch (or the first sample after it) and the end. Tracing slows
  dispatch several times; run it with a smaller ``--n``.

The run is bounded in count (``--n``) and time (``--max-seconds``: callers stop
taking new work after that and the partial figures are reported). Nothing here
asserts a size.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import resource
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import redis

from aceleryctl import AsyncCeleryController, TaskDispatchError
from bench._support import cpu_seconds, redis_server, uptime
from bench.dispatch import QUEUE, environment, make_app, replace_section

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss() -> int:
    """Largest resident set size this process has had, in bytes.

    ``ru_maxrss`` (KiB on Linux) is the kernel's high-water mark, which it updates
    lazily, so it can trail the current RSS; the larger of the two is returned.
    """
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, current_rss())


@dataclass(frozen=True, slots=True)
class Sample:
    dispatched: int
    elapsed: float  # seconds since the first dispatch
    rss: int  # bytes
    peak: int  # bytes
    objects: int  # gc-tracked objects


class Trimmer:
    """Empties the queue every ``interval`` seconds from its own thread and client."""

    def __init__(self, url: str, interval: float) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.interval = interval
        self.removed = 0
        self.longest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-trimmer", daemon=True)

    def trim(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(QUEUE)
        pipe.ltrim(QUEUE, 1, 0)  # start > end: the list is emptied (and its key deleted)
        length, _ = pipe.execute()
        self.removed += int(length)
        self.longest = max(self.longest, int(length))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.trim()
        self.client.close()


@dataclass
class Run:
    n: int
    callers: int
    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    landed: int = 0
    longest_queue: int = 0
    stopped_early: bool = False
    baseline: Sample | None = None  # before the controller's first dispatch
    growth: list[str] = field(default_factory=list)  # tracemalloc top lines


def sample(done: int, t0: float) -> Sample:
    return Sample(done, time.perf_counter() - t0, current_rss(), peak_rss(), len(gc.get_objects()))


async def drive(
    url: str, n: int, callers: int, every: int, max_seconds: float, trace: bool, trim: float
) -> Run:
    app = make_app(url)
    add = app.tasks["bench.add"]
    run = Run(n, callers)
    trimmer = Trimmer(f"{url}/0", trim)
    ctl = AsyncCeleryController(app, dispatch_timeout=10.0)
    run.baseline = sample(0, time.perf_counter())
    trace_from: tracemalloc.Snapshot | None = None
    next_index = 0
    trimmer.start()
    try:
        # One dispatch first: Celery's lazy configuration, the broker connection and
        # the publishing thread exist before the first sample is taken.
        await ctl.delay(add, -1, -1)
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        cpu0 = cpu_seconds()
        deadline = t0 + max_seconds
        run.samples.append(sample(0, t0))

        async def caller() -> None:
            nonlocal next_index, trace_from
            while next_index < n:
                if time.perf_counter() > deadline:
                    run.stopped_early = True
                    return
                i = next_index
                next_index += 1
                try:
                    await ctl.delay(add, i, i)
                except TaskDispatchError:
                    run.failed += 1
                run.done += 1
                if run.done % every == 0 or run.done == n:
                    s = sample(run.done, t0)
                    run.samples.append(s)
                    print(
                        f"{s.dispatched:>9,} dispatched {s.elapsed:7.1f} s  "
                        f"RSS {s.rss / MIB:7.1f} MiB  peak {s.peak / MIB:7.1f} MiB  "
                        f"objects {s.objects:,}",
                        flush=True,
                    )
                    if trace and trace_from is None and run.done >= min(100_000, n // 2):
                        trace_from = tracemalloc.take_snapshot()

        await asyncio.gather(*(caller() for _ in range(callers)))
        run.wall = time.perf_counter() - t0
        run.cpu = cpu_seconds() - cpu0
        if run.samples[-1].dispatched != run.done:
            run.samples.append(sample(run.done, t0))
        if trace:
            end = tracemalloc.take_snapshot()
            tracemalloc.stop()
            if trace_from is not None:
                stats = end.compare_to(trace_from, "lineno")
                grown = sorted(
                    (stat for stat in stats if stat.size_diff > 0),
                    key=lambda stat: stat.size_diff,
                    reverse=True,
                )
                net = sum(stat.size_diff for stat in stats)
                run.growth = [f"net change of traced memory: {net / 1024:+.1f} KiB"]
                run.growth += [str(stat) for stat in grown[:10]]
    finally:
        await ctl.aclose()
        trimmer.stop()
    run.landed = trimmer.removed - 1  # the warm-up dispatch
    run.longest_queue = trimmer.longest
    return run


def at_least(samples: list[Sample], count: int) -> Sample:
    return next((s for s in samples if s.dispatched >= count), samples[-1])


def slope_per_100k(samples: list[Sample], start: int) -> float:
    """Least-squares RSS growth in bytes per 100,000 dispatches over samples >= ``start``."""
    points = [(s.dispatched, s.rss) for s in samples if s.dispatched >= start]
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return 100_000 * sxy / sxx if sxx else 0.0


def summary(run: Run) -> list[tuple[str, str]]:
    first, last = run.samples[0], run.samples[-1]
    mark = 100_000 if run.done > 100_000 else max(1, run.done // 2)
    warm = at_least(run.samples, mark)
    assert run.baseline is not None
    peak = max(x.peak for x in run.samples)
    return [
        ("dispatches", f"{run.done:,} of {run.n:,} ({run.failed} failed)"
         + (" — stopped by --max-seconds" if run.stopped_early else "")),
        ("wall time, rate", f"{run.wall:.0f} s, {run.done / (run.wall or 1):,.0f}/s"),
        ("CPU per dispatch", f"{1e6 * run.cpu / max(1, run.done):.0f} µs"),
        ("messages landed", f"{run.landed:,}" + (" (exact)" if run.landed == run.done else
                                               " (MISMATCH)")),
        ("longest queue between trims", f"{run.longest_queue:,} messages"),
        ("RSS before the first dispatch", f"{run.baseline.rss / MIB:.1f} MiB"),
        ("RSS at start (connected, 0 dispatches)", f"{first.rss / MIB:.1f} MiB"),
        (f"RSS after {warm.dispatched:,}", f"{warm.rss / MIB:.1f} MiB"),
        (f"RSS at end ({last.dispatched:,})", f"{last.rss / MIB:.1f} MiB"),
        (f"RSS growth {warm.dispatched:,} -> end",
         f"{(last.rss - warm.rss) / MIB:+.2f} MiB"
         f" (fit: {slope_per_100k(run.samples, warm.dispatched) / 1024:+.0f} KiB per 100,000)"),
        ("peak RSS (ru_maxrss, or a larger sample)", f"{peak / MIB:.1f} MiB"),
        ("gc-tracked objects: start / after warm-up / end",
         f"{first.objects:,} / {warm.objects:,} / {last.objects:,}"),
    ]  # fmt: skip


def render(run: Run) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary(run)]
    lines += ["", "| dispatched | elapsed s | RSS MiB | peak MiB | gc objects |",
              "|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {s.dispatched:,} | {s.elapsed:.0f} | {s.rss / MIB:.1f} | {s.peak / MIB:.1f} | "
        f"{s.objects:,} |"
        for s in run.samples
    ]
    if run.growth:
        lines += ["", "tracemalloc, lines that grew most from the warm-up sample to the end:"]
        lines += ["", "```"]
        lines += run.growth
        lines += ["```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="dispatches in all")
    parser.add_argument("--callers", type=int, default=100, help="concurrent coroutines")
    parser.add_argument("--sample-every", type=int, default=50_000, help="dispatches a sample")
    parser.add_argument("--trim-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="time bound")
    parser.add_argument("--tracemalloc", action="store_true", help="top growth (slow)")
    parser.add_argument("--smoke", action="store_true", help="20,000 dispatches; docs untouched")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.sample_every, args.max_seconds = 20_000, 5_000, 120.0
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    with redis_server() as (url, _process):
        run = asyncio.run(
            drive(
                url,
                args.n,
                args.callers,
                args.sample_every,
                args.max_seconds,
                args.tracemalloc,
                args.trim_interval,
            )
        )
    load_after = uptime()
    text = render(run)
    print()
    print(text)
    print(f"\nload after: {load_after}")
    if not (args.smoke or args.no_docs):
        write_report(args, text, load_before, load_after)
    return 0 if run.landed == run.done and not run.failed else 1


def write_report(args: argparse.Namespace, text: str, before: str, after: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    command = f"python -m bench.memory --n {args.n}" + (
        " --tracemalloc" if args.tracemalloc else ""
    )
    body = (
        f"\n## Memory ({stamp})\n\n"
        f"`{command}` — {environment()}. One process, {args.callers} coroutines "
        f"awaiting `controller.delay` (`dispatch_timeout` 10 s, other settings default) "
        f"against a private Redis whose queue a thread of the same process empties every "
        f"{args.trim_interval:g} s (`LLEN` + `LTRIM` in one `MULTI`, so landed messages "
        f"are still counted). RSS is the client process's: current from "
        f"`/proc/self/statm`, peak from `ru_maxrss`; sampled every {args.sample_every:,} "
        f"dispatches. Load average before: `{before.split('load average:')[-1].strip()}`, "
        f"after: `{after.split('load average:')[-1].strip()}`.\n\n{text}\n"
    )
    replace_section(args.output, "## Memory", body)


if __name__ == "__main__":
    sys.exit(main())
