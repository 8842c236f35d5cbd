"""The controller the test process's ``CeleryBackend`` publishes with.

``tests.settings`` names :data:`controller` as the backend's ``OPTIONS["CONTROLLER"]``;
the ``tasks_controller`` fixture puts a fresh controller behind it for each test.
Imports no Django.
"""

from __future__ import annotations

from typing import Any

from aceleryctl._proxy import LazyProxy

__all__ = ["DEFAULT_QUEUE", "OTHER_QUEUE", "PRIO_QUEUE", "TASKS", "controller", "use"]

_current: Any = None


class _Unset:
    """Stands in outside the tasks tests (other tests' processes run Django's checks,
    which read the backend's app): it has the app, and refuses to dispatch."""

    @property
    def app(self) -> Any:
        from tests.integration.tasks.worker_app import app

        return app

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no controller for the tasks backend: use the tasks_controller fixture")


def _get() -> Any:
    return _Unset() if _current is None else _current


#: What the backend sees: forwards to the controller of the running test.
controller: Any = LazyProxy(_get)


def use(ctl: Any) -> None:
    """Put ``ctl`` (or ``None``) behind :data:`controller`."""
    global _current
    _current = ctl


#: Celery queues of the Django queue names the tests use (``QUEUE_MAP``).
OTHER_QUEUE = "aceleryctl-tasks-other"
PRIO_QUEUE = "aceleryctl-tasks-prio"
#: Celery's default queue on the tasks app (Django's ``"default"`` queue).
DEFAULT_QUEUE = "aceleryctl-tasks"

#: ``settings.TASKS`` of the test process and of the tasks workers.
TASKS: dict[str, Any] = {
    "default": {
        "BACKEND": "aceleryctl.backends.CeleryBackend",
        "QUEUES": ["default", "other", "prio"],
        "OPTIONS": {
            "CONTROLLER": "tests.integration.tasks.site.controller",
            "QUEUE_MAP": {"other": OTHER_QUEUE, "prio": PRIO_QUEUE},
            "CELERY_OPTIONS": {"expires": 600},
        },
    }
}
