"""Django's task framework: ``django.tasks`` (Django 6.0+) or the ``django-tasks`` backport.

Both have the same interface (the backport is where Django's was written); only
a few names differ (``InvalidTask`` is ``InvalidTaskError`` in the backport).
This module picks ``django.tasks`` when the installed Django has it, the
backport otherwise, and re-exports what :mod:`aceleryctl.backends` uses under
Django's names. Importing it without either raises ``ImportError`` naming the
package to install.

One private member is used: ``TaskResult._return_value``, the field Django's
own backends fill (its ``return_value`` property reads it); see
:func:`set_return_value`.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

__all__ = [
    "AnyTask",
    "AnyTaskResult",
    "DEFAULT_TASK_PRIORITY",
    "FRAMEWORK",
    "TASK_MAX_PRIORITY",
    "TASK_MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "normalize_json",
    "set_return_value",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]

_HAS_DJANGO_TASKS = importlib.util.find_spec("django.tasks") is not None

if TYPE_CHECKING or _HAS_DJANGO_TASKS:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import (
        DEFAULT_TASK_PRIORITY,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        Task,
        TaskError,
    )
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    #: Which framework this process uses: ``"django.tasks"`` or ``"django_tasks"``.
    FRAMEWORK = "django.tasks"
else:  # pragma: no cover - exercised on Django 5.2 only
    try:
        from django_tasks import (
            TaskContext,
            TaskResult,
            TaskResultStatus,
            task,
            task_backends,
        )
    except ImportError as exc:
        raise ImportError(
            "aceleryctl.backends needs Django's task framework: Django 6.0 or later has it "
            "(django.tasks); on Django 5.2 install the backport: pip install 'aceleryctl[tasks]' "
            "(or django-tasks>=0.12)"
        ) from exc
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import (
        DEFAULT_TASK_PRIORITY,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        Task,
        TaskError,
    )
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    FRAMEWORK = "django_tasks"


if TYPE_CHECKING:
    AnyTask = Task[Any, Any]
    AnyTaskResult = TaskResult[Any, Any]
else:
    AnyTask = Task
    AnyTaskResult = TaskResult


def set_return_value(result: AnyTaskResult, value: Any) -> None:
    """Store ``value`` as ``result``'s return value.

    ``TaskResult`` is a frozen dataclass whose ``return_value`` property reads the
    private field ``_return_value`` (declared ``init=False``): Django's own
    backends set it with ``object.__setattr__``, and so does this. Were the field
    renamed, ``return_value`` would stay ``None`` (``test_compat`` fails first).
    """
    object.__setattr__(result, "_return_value", value)
