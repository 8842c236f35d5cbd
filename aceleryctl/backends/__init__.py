"""A Django Tasks backend on Celery, enqueueing through aceleryctl's controller.

::

    TASKS = {"default": {"BACKEND": "aceleryctl.backends.CeleryBackend"}}

Works with ``django.tasks`` (Django 6.0+) and with the ``django-tasks`` backport
(Django 5.2: ``pip install 'aceleryctl[tasks]'``). See docs/django-tasks.md.
"""

from __future__ import annotations

from typing import Any

from aceleryctl.backends.backend import CeleryBackend
from aceleryctl.backends.options import CELERY_TASK_OPTIONS, CeleryTask
from aceleryctl.backends.records import TaskFunctionError

__all__ = [
    "CELERY_TASK_OPTIONS",
    "CeleryBackend",
    "CeleryTask",
    "TaskFunctionError",
    "report_progress",
]


def report_progress(current: float, total: float | None = None, message: str | None = None) -> None:
    """Report the progress of the Django task function running on this thread:
    :func:`aceleryctl.signals.report_progress` for its Celery task (stored as the
    ``PROGRESS`` state, and a live ``task.progress`` event). Outside a task run by
    this backend's worker, does nothing. Never raises for a lost event; see there.

    Raises:
        ValueError: ``message`` is not a string, or the numbers are invalid.
    """
    from aceleryctl.backends.runner import current_celery_task

    task = current_celery_task()
    if task is None:
        return
    from aceleryctl.signals import report_progress as report

    report(task, current, total, message)


def __getattr__(name: str) -> Any:  # pragma: no cover - a clearer error than Python's
    raise AttributeError(f"module 'aceleryctl.backends' has no attribute {name!r}")
