"""Entries of django-celery-beat's ``PeriodicTask`` table, when that app is installed.

Read with the ORM on the calling thread (one query, the four schedule tables
joined). A row whose arguments are not JSON, or that has no schedule, becomes an
entry with problems, never an exception: the check reports it and goes on.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any

from celery.schedules import BaseSchedule

from aceleryctl.schedules.entries import DATABASE, ScheduleEntry

__all__ = ["APP_LABEL", "database_entries", "installed"]

#: django-celery-beat's app label.
APP_LABEL = "django_celery_beat"


def installed() -> bool:
    """Whether django-celery-beat is in ``INSTALLED_APPS``."""
    from django.apps import apps

    return apps.is_installed(APP_LABEL)


def database_entries(using: str | None = None) -> list[ScheduleEntry]:
    """Every ``PeriodicTask`` row as an entry (disabled ones with ``enabled=False``);
    none when django-celery-beat is not installed.

    Raises:
        django.db.Error: the table cannot be read (not migrated, database down).
    """
    if not installed():
        return []
    # Imported by name: django-celery-beat ships no type information.
    periodic_task: Any = importlib.import_module(f"{APP_LABEL}.models").PeriodicTask
    rows = periodic_task.objects.using(using).select_related(
        "interval", "crontab", "solar", "clocked"
    )
    return [_entry(row) for row in rows.order_by("name")]


def _entry(row: Any) -> ScheduleEntry:
    problems: list[str] = []
    args = _json(row.args, "[]", list, "args", "a JSON list such as [1, 2]", problems)
    kwargs = _json(row.kwargs, "{}", dict, "kwargs", 'a JSON object such as {"a": 1}', problems)
    sched = _schedule(row, problems)
    return ScheduleEntry(
        name=row.name,
        source=DATABASE,
        task=row.task or None,
        schedule=sched,
        args=tuple(args),
        kwargs=kwargs if isinstance(kwargs, Mapping) else {},
        enabled=bool(row.enabled),
        problems=tuple(problems)
        + (() if row.task else ("it names no task; set its task to a registered task's name",)),
    )


def _json(
    text: str | None, empty: str, kind: type, field: str, shape: str, problems: list[str]
) -> Any:
    try:
        value = json.loads(text or empty)
    except ValueError as exc:
        problems.append(f"its {field} are not JSON ({exc}); make them {shape}")
        return kind()
    if not isinstance(value, kind):
        problems.append(f"its {field} are a JSON {type(value).__name__}; make them {shape}")
        return kind()
    return value


def _schedule(row: Any, problems: list[str]) -> BaseSchedule | None:
    for relation in ("interval", "crontab", "solar", "clocked"):
        model = getattr(row, relation)
        if model is not None:
            made: BaseSchedule = model.schedule
            return made
    problems.append("it has no schedule; give it an interval, crontab, solar or clocked one")
    return None
