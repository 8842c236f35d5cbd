"""This tree's dispatch path against an earlier commit's, interleaved in one run.

    python -m bench.compare 411313b            # 5 rounds of 20,000 dispatches a tree
    python -m bench.compare HEAD~3 --rounds 3 --n 10000
    python -m bench.compare HEAD --smoke       # tiny: checks that it runs

The other commit is checked out with ``git worktree`` into a temporary folder
(removed afterwards). Each round runs, in a fresh child process per tree and in
alternating order, ``await controller.delay`` from 100 coroutines and a bare
``delay()`` loop against one private Redis, so that the machine's drift hits both
trees alike; the figures are medians over rounds, and the last column is this
tree's figure over the other's. Nothing is asserted: it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._support import redis_server

HERE = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
import redis
from bench.dispatch import make_app, run_async_mode, run_bare
url, n = sys.argv[1], int(sys.argv[2])
app = make_app(url)
run_async_mode("await controller.delay", app, min(n, 2000), 100)  # warm-up
ctl = run_async_mode("await controller.delay", app, n, 100)
redis.Redis.from_url(url + "/0").flushdb()
bare = run_bare(app, max(n // 5, 200), 1)
redis.Redis.from_url(url + "/0").flushdb()
print(json.dumps({
    "rate": ctl.n / ctl.wall, "cpu_us": ctl.cpu / ctl.n * 1e6,
    "lag_p99_ms": (ctl.lag_p99 or 0.0) * 1e3,
    "bare_rate": bare.n / bare.wall, "bare_cpu_us": bare.cpu / bare.n * 1e6,
}))
"""


def _run_child(tree: Path, url: str, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}"}
    # The other tree's package must win over this one's editable install.
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(n)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def compare(ref: str, n: int, rounds: int) -> str:
    """Run the comparison against ``ref`` and return its markdown table."""
    with tempfile.TemporaryDirectory(prefix="aceleryctl-compare-") as scratch:
        other = Path(scratch) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(other), ref], cwd=HERE, check=True
        )
        try:
            runs: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
            with redis_server() as (url, _process):
                for index in range(rounds):
                    order = ("this", "other") if index % 2 == 0 else ("other", "this")
                    for which in order:
                        tree = HERE if which == "this" else other
                        figures = _run_child(tree, url, n)
                        runs[which].append(figures)
                        print(f"round {index + 1} {which:5s} {_line(figures)}", flush=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(other)], cwd=HERE, check=False
            )
    return _table(ref, runs, n, rounds)


def _line(figures: dict[str, float]) -> str:
    return (
        f"{figures['rate']:8,.0f}/s {figures['cpu_us']:6.1f} µs  "
        f"lag p99 {figures['lag_p99_ms']:5.2f} ms  "
        f"bare {figures['bare_rate']:6,.0f}/s {figures['bare_cpu_us']:5.0f} µs"
    )


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _table(ref: str, runs: dict[str, list[dict[str, Any]]], n: int, rounds: int) -> str:
    rows = [
        ("`await controller.delay` dispatches/s", "rate", "{:,.0f}"),
        ("CPU µs per dispatch", "cpu_us", "{:.1f}"),
        ("event-loop lag p99, ms", "lag_p99_ms", "{:.2f}"),
        ("x bare `delay()` throughput (same child)", None, "{:.2f}"),
        ("CPU x bare `delay()` (same child)", None, "{:.3f}"),
    ]
    lines = [
        f"Medians of {rounds} interleaved rounds, {n:,} dispatches from 100 coroutines each.",
        "",
        f"| figure | this tree | `{ref}` | this / that |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        if key is None:
            top, bottom = (
                ("rate", "bare_rate") if "throughput" in label else ("cpu_us", "bare_cpu_us")
            )
            a = statistics.median(r[top] / r[bottom] for r in runs["this"])
            b = statistics.median(r[top] / r[bottom] for r in runs["other"])
        else:
            a, b = _median(runs["this"], key), _median(runs["other"], key)
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ref", help="the commit to compare against (e.g. HEAD~5)")
    parser.add_argument("--n", type=int, default=20_000, help="dispatches per tree per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.rounds = 300, 1
    print(compare(args.ref, args.n, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
