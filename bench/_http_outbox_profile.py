"""Where the GIL goes in ``bench.http_outbox``'s servers: py-spy's stacks summed by part.

``python -m bench.http_outbox --py-spy DIR`` records, for each slice, py-spy's
raw (collapsed) stacks of the thread holding the GIL in the uvicorn process
(``DIR/<configuration>-r<round>.txt``, 250 samples a second) and then prints
:func:`table`: each sample is one 4 ms tick in which some thread of the server
held the GIL, put in the first part of :data:`PARTS` whose frames it contains,
and the ticks are divided by the slice's committed rows (µs of GIL a request).
Stacks without a Python caller (thread start and exit in C, psycopg's
generators driven by its C wait loop) land in "unattributed".
"""

from __future__ import annotations

import collections
import statistics
from pathlib import Path

__all__ = ["RATE", "table"]

#: py-spy's sampling rate, samples a second (``--rate``).
RATE = 250

#: (part, frames that all must appear in the stack), first match wins. Frame
#: names are py-spy's ``function (file:line)`` without the line.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("outbox rows: deletes (row writer thread)", ("RowWriter._run",)),
    ("publishing thread (build, LPUSH, results)", ("PublishPool._work",)),
    ("publishing thread (build, LPUSH, results)", ("ThreadPublisher.run",)),
    ("request: outbox row INSERT (`store.insert_one`)", ("thread_handler", "insert_one")),
    ("request: outbox row encoding, rest of `store_on_commit`", ("handler", "store_on_commit")),
    ("request: building the dispatch (`delay_on_commit`)", ("handler", "SyncCeleryController")),
    ("request: on-commit callbacks (Celery: the publish)", ("thread_handler", "commit_hooks")),
    ("request: the business row (`Order.objects.create`)", ("thread_handler", "_order (bench/")),
    ("request: COMMIT (`Atomic.__exit__`)", ("thread_handler", "Atomic.__exit__")),
    ("request: BEGIN, pool checkout (`Atomic.__enter__`)", ("thread_handler", "Atomic.__enter__")),
    ("request: the rest of the request's thread", ("thread_handler",)),
    ("event loop: a thread for each request (start)", ("_run_once", "Thread.start")),
    ("event loop: a thread for each request (start)", ("_run_once", "_adjust_thread_count")),
    ("event loop: uvicorn, h11, Django's handler, asyncio", ("_run_once",)),
    ("request threads: idle, handing results back, exit", ("Thread._bootstrap",)),
    ("unattributed", ()),
]


def _frames(stack: str) -> str:
    """The stack with line numbers dropped (``f (file.py:12)`` -> ``f (file.py)``)."""
    return ";".join(frame.rsplit(":", 1)[0] for frame in stack.split(";"))


def part(stack: str) -> str:
    """The part of :data:`PARTS` a collapsed stack belongs to."""
    frames = _frames(stack)
    for name, needles in PARTS:
        if all(needle in frames for needle in needles):
            return name
    return "unattributed"


def ticks(path: Path) -> collections.Counter[str]:
    """Samples per part in one py-spy raw file (``stack count`` lines)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[part(stack)] += int(count)
    return counts


def table(directory: Path, requests: dict[str, int], labels: dict[str, str]) -> str:
    """A Markdown table: µs of GIL a request per part (rows) and configuration
    (columns), the median over rounds. ``requests`` maps a file's stem
    (``outbox-r1``) to its slice's committed rows; ``labels`` a configuration
    key to its column title, in column order. Files without an entry are skipped."""
    per: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for path in sorted(directory.glob("*-r*.txt")):
        n = requests.get(path.stem)
        if not n:
            continue
        counts = ticks(path)
        row = {name: 1e6 * c / RATE / n for name, c in counts.items()}
        row["total"] = 1e6 * sum(counts.values()) / RATE / n
        per[path.stem.rsplit("-r", 1)[0]].append(row)
    keys = [k for k in labels if k in per]
    names = [*dict.fromkeys(name for name, _ in PARTS), "total"]
    lines = [
        "| GIL µs a request | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name in names:
        values = [statistics.median(r.get(name, 0.0) for r in per[k]) for k in keys]
        if name != "total" and not any(round(v) for v in values):
            continue
        lines.append(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")
    return "\n".join(lines)
