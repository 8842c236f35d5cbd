"""What a Django task's settings become in a Celery message: options, queue, priority, eta.

:class:`CeleryTask` is the backend's ``task_class``: Django's ``Task`` plus the
Celery calling options ``@task(...)`` may pass through (Django 6.1 and the
backport hand ``@task``'s extra keyword arguments to ``task_class``). An unknown
option raises ``TypeError`` naming it and listing what is taken. The backend's
``OPTIONS["CELERY_OPTIONS"]`` sets the same options for every task.

Pure functions and frozen data; no I/O. Thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from aceleryctl.compat.django_tasks import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task

__all__ = [
    "CELERY_TASK_OPTIONS",
    "CeleryTask",
    "celery_priority",
    "check_celery_options",
    "message_options",
]

#: The Celery calling options a task (``@task(...)``) or the backend
#: (``OPTIONS["CELERY_OPTIONS"]``) may set, each a number of seconds.
CELERY_TASK_OPTIONS: tuple[str, ...] = ("countdown", "expires", "soft_time_limit", "time_limit")

#: Django's priority range, mapped onto Redis's 0 (first) .. 9 (last).
REDIS_PRIORITY_RANGE = 9


def check_celery_options(options: Mapping[str, Any], where: str) -> dict[str, float]:
    """Validate Celery options given as ``where`` (for the message); return them as floats.

    Raises:
        TypeError: an option is not among :data:`CELERY_TASK_OPTIONS`, or not a number.
        ValueError: a value is not a finite number of seconds (``countdown`` may be 0).
    """
    checked: dict[str, float] = {}
    for name, value in options.items():
        if name not in CELERY_TASK_OPTIONS:
            raise TypeError(
                f"{where} got the option {name!r}, which the aceleryctl Celery backend does "
                f"not pass to Celery; it takes {', '.join(CELERY_TASK_OPTIONS)} (seconds). "
                "Other Celery options are set with Celery's task_routes and task "
                "annotations, or by dispatching a Celery task with aceleryctl's controller"
            )
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"{where}: {name} must be a number of seconds, got {type(value).__name__}"
            )
        if not math.isfinite(value) or value < 0 or (value == 0 and name != "countdown"):
            raise ValueError(
                f"{where}: {name} must be a finite number of seconds greater than 0, got {value!r}"
            )
        checked[name] = float(value)
    return checked


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class CeleryTask(Task):  # type: ignore[type-arg]
    """A Django ``Task`` that may carry Celery options (seconds; ``None``: not set).

    Made by ``@task(..., expires=60)`` when the task's backend is
    :class:`~aceleryctl.backends.CeleryBackend`. ``using()`` keeps the options.

    Raises:
        TypeError: an unknown keyword (named in the message) or a non-number option.
        ValueError: an option that is not a positive, finite number of seconds.
    """

    countdown: float | None = None
    expires: float | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def __init__(self, **values: Any) -> None:
        names = {f.name for f in fields(type(self)) if f.init}
        unknown = sorted(set(values) - names)
        if unknown:
            check_celery_options({unknown[0]: values[unknown[0]]}, "@task()")
        celery = {n: values.get(n) for n in CELERY_TASK_OPTIONS}
        check_celery_options(celery, "@task()")
        for f in fields(type(self)):
            if not f.init:
                continue
            value = values.get(f.name, f.default)
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    def celery_options(self) -> dict[str, float]:
        """The Celery options this task sets (those not ``None``)."""
        return {n: v for n in CELERY_TASK_OPTIONS if (v := getattr(self, n)) is not None}


def celery_priority(priority: int, redis: bool, max_priority: int) -> int | None:
    """Map Django's priority (-100 lowest .. 100 highest) onto the broker's.

    Redis (kombu sorts by number, 0 first): 100 -> 0, 0 -> 4, -100 -> 9, then kombu
    puts them in its buckets 0, 3, 6 and 9 (its ``priority_steps``). Other brokers
    (AMQP: higher first): -100 -> 0 .. 100 -> ``max_priority`` (Celery's
    ``task_queue_max_priority``; ``None`` when it is unset: the queue has no
    priorities, so none is sent).
    """
    span = TASK_MAX_PRIORITY - TASK_MIN_PRIORITY
    if redis:
        return round((TASK_MAX_PRIORITY - priority) * REDIS_PRIORITY_RANGE / span)
    if max_priority <= 0:
        return None
    return round((priority - TASK_MIN_PRIORITY) * max_priority / span)


def message_options(
    task: Any,
    defaults: Mapping[str, float],
    queue: str | None,
    priority: int | None,
) -> dict[str, Any]:
    """The Celery options of one enqueue: the backend's defaults, the task's own
    options over them, the queue, the priority and ``eta`` from ``run_after``."""
    options: dict[str, Any] = dict(defaults)
    own = task.celery_options() if isinstance(task, CeleryTask) else None
    if own:
        options.update(own)
    if queue is not None:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = priority
    run_after: datetime | None = task.run_after
    if run_after is not None:
        options["eta"] = run_after
        options.pop("countdown", None)
    return options
