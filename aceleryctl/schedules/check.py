"""System check ``aceleryctl.W006``: beat entries naming tasks nobody registered.

The same orphan check as ``manage.py aceleryctl_check_schedule
--check-orphaned-tasks``, run by ``manage.py check`` (and before ``runserver``
and ``migrate``): one warning per entry of ``beat_schedule`` whose task is not
registered once the app's task modules are imported. django-celery-beat's rows
are read only when the check runs with databases (``manage.py check
--database default``), as Django's own database checks are. A warning, not an
error: ``manage.py check --fail-level WARNING`` makes it fail a CI job.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks import CheckMessage, register

from aceleryctl.conf import SETTING_NAME, resolve_celery_app, settings_problems
from aceleryctl.schedules.findings import checked_entries, orphaned
from aceleryctl.schedules.sources import (
    all_entries,
    importing_task_modules,
    registered_task_names,
)

__all__ = ["check_orphaned_schedule_entries"]


@register()
def check_orphaned_schedule_entries(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """``aceleryctl.W006``: one warning per orphaned beat entry (module docstring)."""
    if importing_task_modules():
        return []  # run by Celery's Django fixup inside the outer check's import
    if settings_problems(getattr(settings, SETTING_NAME, None)):
        return []  # E001 says what to fix first
    try:
        app = resolve_celery_app()
    except Exception:
        return []  # E002 reports it
    database = next(iter(databases or ()), None)
    try:
        entries = checked_entries(
            all_entries(app, database=database, use_database=database is not None)
        )
        registered = registered_task_names(app)
    except Exception as exc:
        return [
            checks.Warning(
                f"aceleryctl could not check the beat schedule: {type(exc).__name__}: {exc}",
                hint="Run manage.py aceleryctl_check_schedule to see the whole report.",
                id="aceleryctl.W006",
            )
        ]
    return [
        checks.Warning(
            finding.message, hint=finding.fix[:1].upper() + finding.fix[1:], id="aceleryctl.W006"
        )
        for finding in orphaned(entries, registered)
    ]
