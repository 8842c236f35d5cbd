"""Django Tasks enqueue: aceleryctl's ``CeleryBackend.aenqueue`` against the peers.

    python -m bench.tasks                 # 10,000 enqueues a mode, 3 interleaved rounds
    python -m bench.tasks --n 2000 --rounds 1
    python -m bench.tasks --smoke         # tiny: CI checks that it runs, nothing more
    python -m bench.tasks --modes aenqueue-loop,vtasks --rounds 15 --no-sequential

Modes, each with ``--callers`` coroutines (default 100) and with one, against one
private Redis on 127.0.0.1 (no worker: messages stay queued, and the Celery modes'
landed count is checked exactly):

* ``await controller.delay``: aceleryctl's controller, a Celery task (the reference);
* ``aceleryctl aenqueue``: ``await add.aenqueue(i, i)`` on ``aceleryctl.backends.CeleryBackend``;
* the same two over a controller with ``loop_publish=True`` (written from the loop);
* ``django-tasks-celery aenqueue``: the same call on django-tasks-celery's backend
  (Django's default ``aenqueue``: ``sync_to_async(enqueue, thread_sensitive=True)``);
* ``django-vtasks aenqueue``: the same call on django-vtasks' Valkey backend (its own
  protocol and worker, not Celery), on the same Redis.

``--modes`` runs a subset, by the short names of :data:`SHORT` (docs untouched);
``--no-sequential`` leaves out the one-coroutine rows. Besides the medians, a run
prints, for every pair of aceleryctl's ``aenqueue`` modes and a peer, the median of
the per-round ratios (each round's two figures were measured minutes apart at
most, so a slow stretch of the machine weighs on both).

The peers need Python 3.12 and Django 6 (``pip install -e '.[bench]'`` there); a
mode whose package is missing is skipped with a note. A 1 ms ticker measures how
late the event loop wakes up. Figures are medians over rounds; unless ``--smoke``,
the table goes to docs/benchmarks.md ("Django Tasks enqueue").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import redis

from bench._cli import add_rate_options, finish, new_parser, rotated
from bench._support import Measurement, redis_server
from bench.dispatch import _drive

MODES = [
    "await controller.delay",
    "aceleryctl aenqueue",
    "await controller.delay (loop_publish)",
    "aceleryctl aenqueue (loop_publish)",
    "django-tasks-celery aenqueue",
    "django-vtasks aenqueue",
]
#: Short names for ``--modes``.
SHORT = dict(
    zip(["delay", "aenqueue", "delay-loop", "aenqueue-loop", "dtc", "vtasks"], MODES, strict=True)
)
PEER_OF_MODE = {"django-tasks-celery aenqueue": "dtc", "django-vtasks aenqueue": "vtasks"}
OURS = {
    "aceleryctl aenqueue": "aceleryctl",
    "aceleryctl aenqueue (loop_publish)": "aceleryctl_loop",
}


def run_mode(mode: str, n: int, callers: int, client: redis.Redis) -> Measurement:
    from bench import _tasks_site

    app = _tasks_site.APPS["app"]
    fns = _tasks_site.functions()
    client.flushall()

    ctl = _tasks_site.controller

    async def main() -> Measurement:
        if mode in ("await controller.delay", "await controller.delay (loop_publish)"):
            add = app.tasks["bench.tasks.add"]
            on = ctl if mode == "await controller.delay" else _tasks_site.loop_controller
            return await _drive(mode, n, callers, lambda i: on.delay(add, i, i))
        fn = fns[OURS.get(mode) or PEER_OF_MODE[mode]]
        return await _drive(mode, n, callers, lambda i: fn.aenqueue(i, i))

    m = asyncio.run(main())
    # Plain Celery messages land on the queue's list, prioritised ones (Django's
    # default priority 0 maps to Redis priority 4) on kombu's per-priority lists.
    keys = [_tasks_site.QUEUE] + [f"{_tasks_site.QUEUE}\x06\x16{p}" for p in (3, 6, 9)]
    landed = sum(int(client.llen(key)) for key in keys)
    return Measurement(m.mode, m.n, m.wall, m.cpu, landed, m.lag_p99, m.lag_max)


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(results: dict[tuple[str, int], list[Measurement]], n: int) -> str:
    lines = [
        "| mode | coroutines | enqueues/s | CPU µs/enqueue | loop lag p99 ms | "
        "aceleryctl aenqueue x this | landed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for (mode, callers), runs in results.items():
        rate = med([r.rate for r in runs]) or 0.0
        ours = med([r.rate for r in results.get(("aceleryctl aenqueue", callers), [])]) or 0.0
        lag = med([r.lag_p99 for r in runs])
        celery = mode != "django-vtasks aenqueue"
        landed = ("exact" if all(r.landed == r.n for r in runs) else "MISMATCH") if celery else "-"
        lines.append(
            f"| {mode} | {callers} | {rate:,.0f} | {med([r.cpu_us for r in runs]) or 0:.0f} | "
            f"{'-' if lag is None else f'{1000 * lag:.2f}'} | {ours / rate if rate else 0:.2f} | "
            f"{landed} |"
        )
    return "\n".join(lines)


def paired(results: dict[tuple[str, int], list[Measurement]], callers: int) -> list[str]:
    """For each of our ``aenqueue`` modes and each peer run with ``callers``
    coroutines, the median (and range) of the ratios round by round, ours over theirs."""
    lines = []
    for ours in OURS:
        for peer in PEER_OF_MODE:
            a, b = results.get((ours, callers)), results.get((peer, callers))
            if not a or not b:
                continue
            ratios = sorted(x.rate / y.rate for x, y in zip(a, b, strict=True) if y.rate)
            if ratios:
                plural = "s" if callers > 1 else ""
                lines.append(
                    f"{ours} / {peer}, {callers} coroutine{plural}, round by round: median "
                    f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}, "
                    f"{sum(r >= 1 for r in ratios)} of {len(ratios)} rounds at least 1)"
                )
    return lines


def chosen_modes(text: str | None, parser: argparse.ArgumentParser) -> list[str]:
    """The modes ``--modes`` names (all of :data:`MODES` when not given), in
    :data:`MODES`' order; an unknown name ends the run with the valid ones."""
    if text is None:
        return list(MODES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHORT]
    if unknown or not names:
        parser.error(f"--modes: unknown {unknown or text!r}; choose from {', '.join(SHORT)}")
    return [mode for short, mode in SHORT.items() if short in names]


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    add_rate_options(parser, n=10_000, n_help="enqueues per mode per round")
    parser.add_argument("--modes", help="a comma-separated subset: " + ", ".join(SHORT))
    parser.add_argument(
        "--no-sequential", action="store_true", help="leave out the one-coroutine rows"
    )
    args = parser.parse_args(argv)
    wanted = chosen_modes(args.modes, parser)
    if args.smoke:
        args.n, args.rounds, args.callers = 200, 1, 20
    from bench import _tasks_site

    with redis_server() as (url, _process):
        app = _tasks_site.setup(url)
        from aceleryctl import AsyncCeleryController

        # One controller for the run (it serves every loop asyncio.run makes), the
        # one behind the aceleryctl backend's OPTIONS["CONTROLLER"].
        for name, loop_publish in (("controller", False), ("loop_controller", True)):
            made = AsyncCeleryController(
                app, dispatch_timeout=10.0, max_pending=args.n + args.callers,
                loop_publish=loop_publish,
            )  # fmt: skip
            setattr(_tasks_site, name, made)
        peers = _tasks_site.available()
        modes = [m for m in wanted if m not in PEER_OF_MODE or peers[PEER_OF_MODE[m]]]
        for mode in wanted:
            if mode not in modes:
                print(
                    f"skipped {mode}: not installed here (needs Python 3.12, Django 6, bench extra)"
                )
        counts = (args.callers,) if args.no_sequential else (args.callers, 1)
        keys = [(m, c) for c in counts for m in modes]
        results: dict[tuple[str, int], list[Measurement]] = {k: [] for k in keys}
        client = redis.Redis.from_url(f"{url}/0")
        for round_index in range(args.rounds):
            for mode, callers in rotated(keys, round_index):
                n = args.n if callers > 1 else max(1, args.n // 5)
                m = run_mode(mode, n, callers, client)
                results[(mode, callers)].append(m)
                print(
                    f"round {round_index + 1} {mode:30s} x{callers:<3d} {m.rate:9,.0f}/s "
                    f"{m.cpu_us:6.0f} µs lag p99 {1000 * (m.lag_p99 or 0):6.2f} ms",
                    flush=True,
                )
        client.close()
        _tasks_site.controller.sync.close()
        _tasks_site.loop_controller.sync.close()
    text = table(results, args.n)
    pairs = [line for c in counts for line in paired(results, c)]
    mismatched = [
        k for k, runs in results.items()
        if k[0] != "django-vtasks aenqueue" and not all(r.landed == r.n for r in runs)
    ]  # fmt: skip
    text_with_pairs = "\n\n".join([text, *pairs]) if pairs else text
    if args.smoke or len(modes) < len(MODES) or args.no_sequential:
        return finish(text_with_pairs, mismatched, None)  # docs untouched
    from bench.dispatch import rate_report

    detail = (
        f". Medians over {args.rounds} interleaved rounds; {args.n:,} enqueues per mode "
        f"with {args.callers} coroutines, {max(1, args.n // 5):,} with one."
    )
    heading = "## Django Tasks enqueue"
    return finish(
        text_with_pairs,
        mismatched,
        lambda: rate_report(args.output, heading, text_with_pairs, args, "tasks", detail),
    )


if __name__ == "__main__":
    sys.exit(main())
