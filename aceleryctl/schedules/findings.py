"""What is wrong with a set of schedule entries: invalid, orphaned, duplicated.

Pure functions over :class:`~aceleryctl.schedules.entries.ScheduleEntry` lists;
each :class:`Finding` names the entries, says what is wrong and what to change.
Crowded minutes are :mod:`aceleryctl.schedules.hotspots`' concern.
"""

from __future__ import annotations

import difflib
import enum
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aceleryctl.schedules.entries import (
    BEAT_SCHEDULE,
    ScheduleEntry,
    describe_schedule,
    schedule_key,
)

__all__ = ["Finding", "Level", "checked_entries", "duplicates", "invalid", "orphaned"]


class Level(enum.Enum):
    """How bad a finding is: an error fails the check command, a warning does not
    (unless it runs with ``--fail-on-warnings``)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem.

    Attributes:
        level: :class:`Level`.
        check: which check found it: ``invalid``, ``orphaned``, ``duplicate`` or
            ``hotspot``.
        entries: labels of the entries concerned (``'name' (source)``).
        message: what is wrong.
        fix: what to change.
    """

    level: Level
    check: str
    entries: tuple[str, ...]
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level.value.upper()} [{self.check}] {self.message} Fix: {self.fix}"


def checked_entries(entries: Iterable[ScheduleEntry]) -> list[ScheduleEntry]:
    """The entries beat runs: enabled ones, one per name.

    django-celery-beat's scheduler writes ``beat_schedule`` into its table when beat
    starts, so a name found in both sources is one entry, as ``beat_schedule`` says.
    """
    chosen: dict[str, ScheduleEntry] = {}
    for entry in entries:
        if not entry.enabled:
            continue
        known = chosen.get(entry.name)
        if known is None or (entry.source == BEAT_SCHEDULE and known.source != BEAT_SCHEDULE):
            chosen[entry.name] = entry
    return list(chosen.values())


def invalid(entries: Iterable[ScheduleEntry]) -> list[Finding]:
    """An error for each problem an entry carries (no task, no schedule, bad shapes)."""
    return [
        Finding(
            Level.ERROR,
            "invalid",
            (entry.label,),
            f"entry {entry.label} cannot run: {problem.split('; ', 1)[0]}.",
            problem.split("; ", 1)[-1].rstrip(".") + ".",
        )
        for entry in entries
        for problem in entry.problems
    ]


def orphaned(entries: Iterable[ScheduleEntry], registered: Collection[str]) -> list[Finding]:
    """An error for each entry whose task is not among ``registered`` task names:
    beat sends it, no worker knows it, and nothing says so where anyone looks."""
    names = sorted(registered)
    found = []
    for entry in entries:
        if entry.task is None or entry.task in registered:
            continue
        close = difflib.get_close_matches(entry.task, names, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        found.append(
            Finding(
                Level.ERROR,
                "orphaned",
                (entry.label,),
                f"entry {entry.label} sends the task {entry.task!r}, which is not "
                f"registered{hint}.",
                "point the entry at a registered task, make the task's module imported "
                "where beat and the workers run (autodiscovery or CELERY_IMPORTS), or "
                "delete the entry.",
            )
        )
    return found


def duplicates(entries: Sequence[ScheduleEntry]) -> list[Finding]:
    """An error for each group of differently named entries that send the same task
    with the same arguments on the same schedule: the work runs twice each time.
    Malformed entries are left out (:func:`invalid` reports them)."""
    groups: dict[tuple[Any, ...], list[ScheduleEntry]] = defaultdict(list)
    for entry in entries:
        if entry.problems or entry.task is None or entry.schedule is None:
            continue  # a malformed entry is reported as such; its arguments are unknown
        groups[(entry.task, _arguments_key(entry), schedule_key(entry.schedule))].append(entry)
    found = []
    for same in groups.values():
        if len(same) < 2:
            continue
        first = same[0]
        labels = tuple(entry.label for entry in same)
        found.append(
            Finding(
                Level.ERROR,
                "duplicate",
                labels,
                f"entries {', '.join(labels)} all send {first.task!r} with the same "
                f"arguments on the same schedule ({describe_schedule(first.schedule)}): "
                f"it runs {len(same)} times each time.",
                "keep one of them and delete the others.",
            )
        )
    return found


def _arguments_key(entry: ScheduleEntry) -> str:
    """The entry's arguments as one comparable string (``repr`` for what JSON lacks)."""
    return json.dumps([list(entry.args), dict(entry.kwargs)], sort_keys=True, default=repr)
