"""Beat schedule entries as plain records, read from ``app.conf.beat_schedule``.

Nothing here imports a task or talks to a broker: an entry is what the schedule
says, and :attr:`ScheduleEntry.problems` lists what makes it unusable (no task,
no schedule, arguments of the wrong shape), worded so the message says what to
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule, solar

from aceleryctl.compat.celery import crontab_spec

__all__ = [
    "BEAT_SCHEDULE",
    "DATABASE",
    "ScheduleEntry",
    "beat_schedule_entries",
    "cron_sets",
    "describe_schedule",
    "period_seconds",
    "schedule_key",
]

#: :attr:`ScheduleEntry.source` of an entry of ``app.conf.beat_schedule``.
BEAT_SCHEDULE = "beat_schedule"
#: :attr:`ScheduleEntry.source` of a django-celery-beat ``PeriodicTask`` row.
DATABASE = "database"


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One periodic task as beat would run it.

    Attributes:
        name: the entry's name (its key in ``beat_schedule``, or the row's name).
        source: :data:`BEAT_SCHEDULE` or :data:`DATABASE`.
        task: the task name it sends, or ``None`` when it names none.
        schedule: Celery's schedule object (numbers and timedeltas already made
            ``celery.schedules.schedule``), or ``None`` when it has none.
        args: positional arguments it sends.
        kwargs: keyword arguments it sends.
        enabled: ``False`` for a disabled database row (not checked further).
        problems: what makes the entry unusable, each a sentence naming the fix.
    """

    name: str
    source: str
    task: str | None
    schedule: BaseSchedule | None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    problems: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``'name' (source)``, how messages name the entry."""
        return f"{self.name!r} ({self.source})"


def beat_schedule_entries(app: Celery) -> list[ScheduleEntry]:
    """The entries of ``app.conf.beat_schedule``, in its order (none when unset)."""
    raw = app.conf.beat_schedule or {}
    if not isinstance(raw, Mapping):
        return [
            ScheduleEntry(
                name="beat_schedule",
                source=BEAT_SCHEDULE,
                task=None,
                schedule=None,
                problems=(
                    f"beat_schedule is a {type(raw).__name__}; make it a dict of entry "
                    "name to {'task': ..., 'schedule': ...}",
                ),
            )
        ]
    return [_from_mapping(str(name), spec, app) for name, spec in raw.items()]


def _from_mapping(name: str, spec: Any, app: Celery) -> ScheduleEntry:
    if not isinstance(spec, Mapping):
        problem = f"the entry is a {type(spec).__name__}; make it a dict with 'task' and 'schedule'"
        return ScheduleEntry(name, BEAT_SCHEDULE, None, None, problems=(problem,))
    problems: list[str] = []
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        problems.append("it names no task; set 'task' to a registered task's name")
        task = None
    sched = _schedule_of(spec.get("schedule"), bool(spec.get("relative")), app, problems)
    args = spec.get("args", ())
    if args is None:
        args = ()
    if not isinstance(args, list | tuple):
        problems.append(f"'args' is a {type(args).__name__}; make it a list or a tuple")
        args = ()
    kwargs = spec.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        problems.append(f"'kwargs' is a {type(kwargs).__name__}; make it a dict")
        kwargs = {}
    options = spec.get("options", {})
    if options is not None and not isinstance(options, Mapping):
        problems.append(f"'options' is a {type(options).__name__}; make it a dict")
    return ScheduleEntry(
        name, BEAT_SCHEDULE, task, sched, tuple(args), dict(kwargs), problems=tuple(problems)
    )


def _schedule_of(
    value: Any, relative: bool, app: Celery, problems: list[str]
) -> BaseSchedule | None:
    if value is None:
        problems.append(
            "it has no 'schedule'; set one (seconds, a timedelta, or celery.schedules.crontab)"
        )
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta | BaseSchedule):
        problems.append(
            f"its 'schedule' is a {type(value).__name__}; use seconds, a timedelta, "
            "or a celery.schedules schedule such as crontab(...)"
        )
        return None
    if isinstance(value, int | float) and value <= 0:
        problems.append(f"its 'schedule' is {value} seconds; use a positive number")
        return None
    if isinstance(value, BaseSchedule):
        return value
    every = value if isinstance(value, timedelta) else timedelta(seconds=value)
    return schedule(every, relative=relative, app=app)


def schedule_key(sched: BaseSchedule) -> tuple[Any, ...]:
    """What makes two schedules fire at the same moments: equal keys, same firings.

    crontab: its expanded fields; an interval: its period in seconds; solar: event
    and place; django-celery-beat's clocked: its time; anything else: its repr.
    """
    if isinstance(sched, crontab):
        return ("crontab", *cron_sets(sched))
    if isinstance(sched, schedule):
        return ("every", period_seconds(sched))
    if isinstance(sched, solar):
        return ("solar", sched.event, sched.lat, sched.lon)
    clocked_time = getattr(sched, "clocked_time", None)
    if clocked_time is not None:
        return ("clocked", clocked_time)
    return ("other", repr(sched))


def cron_sets(sched: crontab) -> tuple[frozenset[int], ...]:
    """A crontab's expanded fields: minutes, hours, days of the week (Sunday = 0),
    days of the month and months, each the set of values it fires on."""
    fields: Any = sched  # set in crontab's __init__; the type stubs do not declare them
    return (
        frozenset(fields.minute),
        frozenset(fields.hour),
        frozenset(fields.day_of_week),
        frozenset(fields.day_of_month),
        frozenset(fields.month_of_year),
    )


def period_seconds(sched: schedule) -> float:
    """An interval schedule's period, in seconds."""
    every: timedelta = getattr(sched, "run_every")  # noqa: B009  (undeclared in the stubs)
    return every.total_seconds()


def describe_schedule(sched: BaseSchedule | None) -> str:
    """A short human description: ``every 30 s``, ``crontab 0 */6 * * 1-5``, ..."""
    if sched is None:
        return "no schedule"
    if isinstance(sched, crontab):
        return "crontab " + " ".join(crontab_spec(sched))
    if isinstance(sched, schedule):
        return f"every {period_seconds(sched):g} s"
    if isinstance(sched, solar):
        return f"solar {sched.event} at ({sched.lat}, {sched.lon})"
    clocked_time = getattr(sched, "clocked_time", None)
    if clocked_time is not None:
        return f"once at {clocked_time.isoformat()}"
    return repr(sched)
