"""The ``@task`` functions ``bench.tasks`` enqueues, one per backend (module level, as
Django requires). Imported only after ``bench._tasks_site.setup``."""

from __future__ import annotations

from typing import Any

from bench._tasks_site import available

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef]

__all__ = ["by_backend"]


@task(backend="aceleryctl")
def add_aceleryctl(x: int, y: int) -> int:
    """``x + y`` on aceleryctl's backend."""
    return x + y


@task(backend="aceleryctl_loop")
def add_aceleryctl_loop(x: int, y: int) -> int:
    """``x + y`` on aceleryctl's backend over a ``loop_publish`` controller."""
    return x + y


if available()["dtc"]:

    @task(backend="dtc")
    def add_dtc(x: int, y: int) -> int:
        """``x + y`` on django-tasks-celery."""
        return x + y


if available()["vtasks"]:

    @task(backend="vtasks")
    def add_vtasks(x: int, y: int) -> int:
        """``x + y`` on django-vtasks."""
        return x + y


def by_backend() -> dict[str, Any]:
    """Alias -> its task."""
    return {
        name: fn
        for name, fn in (
            ("aceleryctl", add_aceleryctl),
            ("aceleryctl_loop", add_aceleryctl_loop),
            ("dtc", globals().get("add_dtc")),
            ("vtasks", globals().get("add_vtasks")),
        )
        if fn is not None
    }
