"""The benchmarks' command line, rounds and reports: options every benchmark takes,
the load generator of the HTTP ones, the rotation of modes between rounds, the
date a report is stamped with, and how a run ends (its table printed, written into
the docs, the exit status).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "add_http_options",
    "add_rate_options",
    "finish",
    "http_client",
    "load_average",
    "new_parser",
    "rotated",
    "section",
    "today",
]

T = TypeVar("T")


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, ``doc`` (its module docstring) as the description,
    with the options every benchmark takes: ``--smoke`` and ``--output``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run, docs untouched")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    return parser


def add_rate_options(parser: argparse.ArgumentParser, *, n: int, n_help: str) -> None:
    """``--n`` (default ``n``), ``--callers`` (concurrent coroutines, 100) and
    ``--rounds`` (interleaved rounds, 3)."""
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--callers", type=int, default=100, help="concurrent coroutines")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")


def add_http_options(
    parser: argparse.ArgumentParser,
    *,
    duration: float,
    duration_help: str,
    rounds: int,
    warmup_help: str,
) -> None:
    """The options of a benchmark under HTTP load: ``--duration``, ``--rounds``,
    ``--connections`` (100), ``--warmup`` (2 s) and ``--client`` (see :func:`http_client`)."""
    parser.add_argument("--duration", type=float, default=duration, help=duration_help)
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--warmup", type=float, default=2.0, help=warmup_help)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")


def http_client(choice: str) -> tuple[bool, str] | None:
    """Whether the load comes from ``wrk`` and how the report names the generator,
    for ``--client`` ``choice`` (``auto``: ``wrk`` when installed, else the asyncio
    client, saying so). ``None``, after saying why on stderr, when ``wrk`` was asked
    for and is not installed."""
    have_wrk = shutil.which("wrk") is not None
    if choice == "wrk" and not have_wrk:
        print("wrk is not installed (Debian: apt-get install -y wrk)", file=sys.stderr)
        return None
    use_wrk = have_wrk and choice != "python"
    if not use_wrk and choice == "auto":
        print(
            "wrk not found (Debian: apt-get install -y wrk); falling back to the asyncio "
            "client in bench/_httpclient.py, which costs more CPU: expect lower figures",
            flush=True,
        )
    return use_wrk, "wrk -t1" if use_wrk else "the asyncio client (bench/_httpclient.py)"


def load_average(line: str) -> str:
    """The load averages of an :func:`uptime` line."""
    return line.split("load average:")[-1].strip()


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` started at ``round_index`` (modulo its length): round after round,
    each item takes its turn first."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def today() -> str:
    """The date (UTC, ``YYYY-MM-DD``) a report in the docs is stamped with."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def section(heading: str, intro: str, text: str) -> str:
    """A report's section of the docs: ``heading`` stamped with :func:`today`, the
    ``intro`` paragraph (how it was run, on what), then the table ``text``."""
    return f"\n{heading} ({today()})\n\n{intro}\n\n{text}\n"


def finish(text: str, mismatched: Sequence[object], write: Callable[[], None] | None) -> int:
    """The end of a run: print its table ``text``, ``write`` it into the docs (unless
    ``None``), and the exit status: 1, saying which, when ``mismatched`` names modes
    whose messages did not all land exactly once, else 0."""
    print()
    print(text)
    if write is not None:
        write()
    if mismatched:
        print(f"landed-count mismatch in: {list(mismatched)}", file=sys.stderr)
        return 1
    return 0
