"""Where the checks read from: the Celery app's registered tasks and every entry.

Runs on the calling thread. Importing the task modules is what a worker does at
start (``app.loader.import_default_modules()``: ``imports``/``include`` and the
modules autodiscovery finds), so a task is "registered" here exactly when a worker
of the same project would know it.
"""

from __future__ import annotations

import threading

from celery import Celery

from aceleryctl.schedules.database import database_entries
from aceleryctl.schedules.entries import ScheduleEntry, beat_schedule_entries

__all__ = ["all_entries", "importing_task_modules", "registered_task_names"]

_state = threading.local()


def registered_task_names(app: Celery) -> frozenset[str]:
    """Names of the tasks ``app`` knows once its task modules are imported.

    Runs on the calling thread; a call made while this thread is already importing
    them (a re-entrant call) does not import again.

    Raises:
        ImportError: a task module listed in the app's configuration fails to import
            (a worker would fail the same way).
    """
    if not importing_task_modules():
        # Celery's Django fixup runs Django's system checks while the modules are
        # imported, and so this module's own check: that inner call finds the
        # import under way and reads what is registered so far.
        _state.importing = True
        try:
            app.loader.import_default_modules()
        finally:
            _state.importing = False
    return frozenset(app.tasks.keys())


def importing_task_modules() -> bool:
    """Whether :func:`registered_task_names` is importing task modules on this thread."""
    return bool(getattr(_state, "importing", False))


def all_entries(app: Celery, *, database: str | None, use_database: bool) -> list[ScheduleEntry]:
    """``app.conf.beat_schedule``'s entries, then django-celery-beat's rows when
    ``use_database`` (and the app is installed), read from ``database``.

    Raises:
        django.db.Error: the django-celery-beat table cannot be read.
    """
    entries = beat_schedule_entries(app)
    if use_database:
        entries.extend(database_entries(database))
    return entries
