"""``python -m bench.dispatch --documented``: the cost of the configuration the docs
recommend, live events on against off, side by side.

Each configuration runs in a child process of its own (Django is set up once per
process, with :mod:`bench._dispatch_site`: ``aceleryctl`` installed, a
``channels_redis`` layer, ``EVENTS_ENABLED`` on or off), against one private
Redis. A child runs ``bare delay()`` and ``await controller.delay`` (the default
controller, ``from aceleryctl import controller``) and reports, per mode, the
CPU per dispatch *including* the live events' work done after the last
dispatch returned (the child waits, bounded, until its emitter has sent or
dropped everything), and the events the emitter dropped. Rounds alternate the
configurations; figures are medians. Nothing here is asserted: it prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._support import LagTicker, cpu_seconds, delay_from, redis_server, shares

MODES = ("bare delay()", "await controller.delay")
DRAIN_TIMEOUT = 60.0


def _emitter_counts() -> dict[str, int]:
    """What this process's live events dropped and sent, read from whichever
    modules the installed aceleryctl has (the benchmark also runs older trees)."""
    counts = {"dropped": 0, "sent": 0, "noted": 0}
    emitter = None
    for path in ("aceleryctl.worker.layer", "aceleryctl._emitter"):
        module = sys.modules.get(path)
        if module is not None:
            emitter = module.default_emitter()
            break
    if emitter is not None:
        emitter.flush(DRAIN_TIMEOUT)
        stats = emitter.statistics()
        counts["dropped"] += (
            stats.dropped_full
            + stats.timed_out
            + stats.failed
            + stats.dropped_no_layer
            + stats.dropped_closed
        )
        counts["sent"] += stats.sent
        counts["noted"] += stats.accepted
    sent = sys.modules.get("aceleryctl.live.sent")
    if sent is not None:
        extra = sent.sent_events().statistics()
        counts["dropped"] += extra.dropped_full + extra.failed
        counts["sent"] += extra.sent
        counts["noted"] += extra.noted
    return counts


def _child(n: int, callers: int) -> None:
    import django

    django.setup()
    import redis

    from aceleryctl import controller
    from bench._dispatch_site import _URL, app
    from bench.dispatch import QUEUE

    client = redis.Redis.from_url(f"{_URL}/0")
    add = app.tasks["bench.add"]
    out: dict[str, Any] = {}

    def finish(mode: str, cpu0: float, wall: float, lag: float | None) -> None:
        before = _emitter_counts()  # drains the emitter: its CPU counts too
        landed = int(client.llen(QUEUE))
        client.delete(QUEUE)
        out[mode] = {
            "cpu_us": 1e6 * (cpu_seconds() - cpu0) / n,
            "rate": n / wall,
            "lag_p99": lag,
            "landed": landed,
            **before,
        }

    client.delete(QUEUE)
    base = _emitter_counts()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(n):
        add.delay(i, i)
    finish("bare delay()", cpu0, time.perf_counter() - t0, None)

    async def storm() -> tuple[float, float, float]:
        await controller.delay(add, 0, 0)  # build the default controller first
        client.delete(QUEUE)
        ticker = LagTicker()
        share = shares(n, callers)
        ticker.start()
        cpu_start, start = cpu_seconds(), time.perf_counter()
        await delay_from(controller, add, share)
        wall = time.perf_counter() - start
        p99, _ = await ticker.stop()
        return cpu_start, wall, p99

    reset = _emitter_counts()
    cpu_start, wall, p99 = asyncio.run(storm())
    finish("await controller.delay", cpu_start, wall, p99)
    # Counts are cumulative per process: report each mode's own.
    bare = out["bare delay()"]
    ctl = out["await controller.delay"]
    for key in ("dropped", "sent", "noted"):
        ctl[key] -= reset[key]
        bare[key] -= base[key]
    print(json.dumps(out))


def run(n: int, callers: int, rounds: int) -> str:
    """Run the comparison and return its markdown table."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"on": {}, "off": {}}
    with redis_server() as (url, _process):
        for index in range(rounds):
            order = ("on", "off") if index % 2 == 0 else ("off", "on")
            for config in order:
                env = {
                    **os.environ,
                    "DJANGO_SETTINGS_MODULE": "bench._dispatch_site",
                    "ACELERYCTL_BENCH_REDIS_URL": url,
                    "ACELERYCTL_BENCH_EVENTS": "1" if config == "on" else "0",
                }
                done = subprocess.run(
                    [sys.executable, "-m", "bench._documented", str(n), str(callers)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"the {config} child failed:\n{done.stderr}")
                found = json.loads(done.stdout.strip().splitlines()[-1])
                for mode, figures in found.items():
                    results[config].setdefault(mode, []).append(figures)
                    print(
                        f"round {index + 1} events {config:3s} {mode:24s} "
                        f"{figures['cpu_us']:6.0f} µs {figures['rate']:9,.0f}/s "
                        f"landed {figures['landed']}/{n} dropped {figures['dropped']}"
                        f" noted {figures['noted']} sent {figures['sent']}",
                        flush=True,
                    )
    return _table(results, n)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else float("nan")


def _table(results: dict[str, dict[str, list[dict[str, Any]]]], n: int) -> str:
    lines = [
        "| mode | CPU µs/dispatch, events off | events on | on / off | "
        "dispatches/s off | on | events dropped (on) | landed |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode in MODES:
        off, on = results["off"].get(mode, []), results["on"].get(mode, [])
        if not off or not on:
            continue
        cpu_off, cpu_on = _median(off, "cpu_us"), _median(on, "cpu_us")
        dropped = max(r["dropped"] for r in on)
        landed = all(r["landed"] == n for r in off + on)
        lines.append(
            f"| {mode} | {cpu_off:.0f} | {cpu_on:.0f} | {cpu_on / cpu_off:.2f} | "
            f"{_median(off, 'rate'):,.0f} | {_median(on, 'rate'):,.0f} | "
            f"{dropped} of {n} | {'exact' if landed else 'MISMATCH'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
