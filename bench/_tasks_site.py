"""Django settings and ``@task`` functions of ``bench.tasks`` (imported after :func:`setup`).

Three task backends over one private Redis: aceleryctl's ``CeleryBackend``
(alias ``aceleryctl``), django-tasks-celery's (``dtc``) and django-vtasks' Valkey
backend (``vtasks``); the last two only where they are installed (they need
Python 3.12 and Django 6).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from celery import Celery

__all__ = ["APPS", "QUEUE", "available", "setup"]

QUEUE = "bench-tasks"

#: The Celery app both Celery backends and the controller publish with.
APPS: dict[str, Any] = {}
#: The controllers behind the aceleryctl backends (set by bench.tasks): the default
#: one, and one with ``loop_publish=True`` (alias ``aceleryctl_loop``).
controller: Any = None
loop_controller: Any = None


def available() -> dict[str, bool]:
    """Which peer backends can be measured here."""
    django6 = importlib.util.find_spec("django.tasks") is not None
    return {
        "dtc": django6 and importlib.util.find_spec("django_tasks_celery") is not None,
        "vtasks": django6 and importlib.util.find_spec("django_vtasks") is not None,
    }


def setup(url: str) -> Celery:
    """Configure Django for the run (broker ``url``, db 0) and return the Celery app."""
    import django
    from django.conf import settings

    app = Celery("bench_tasks", broker=f"{url}/0", set_as_current=True)
    app.conf.update(
        task_default_queue=QUEUE,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )

    @app.task(name="bench.tasks.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    APPS["app"] = app
    peers = available()
    tasks: dict[str, Any] = {
        "aceleryctl": {
            "BACKEND": "aceleryctl.backends.CeleryBackend",
            "OPTIONS": {"CONTROLLER": "bench._tasks_site.controller"},
        },
        "aceleryctl_loop": {
            "BACKEND": "aceleryctl.backends.CeleryBackend",
            "OPTIONS": {"CONTROLLER": "bench._tasks_site.loop_controller"},
        },
    }
    if peers["dtc"]:
        tasks["dtc"] = {
            "BACKEND": "django_tasks_celery.CeleryBackend",
            "OPTIONS": {"CELERY_APP": "bench._tasks_site.celery_app"},
        }
    if peers["vtasks"]:
        tasks["vtasks"] = {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "OPTIONS": {"BROKER_URL": f"{url}/1"},
        }
    tasks["default"] = tasks["aceleryctl"]
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=["aceleryctl"],
        DATABASES={},
        TASKS=tasks,
        ACELERYCTL={"LOG_FILE": None, "EVENTS_ENABLED": False},
        LOGGING_CONFIG=None,
    )
    django.setup()
    globals()["celery_app"] = app
    return app


def functions() -> dict[str, Any]:
    """The ``@task`` function of each backend (made after :func:`setup`)."""
    from bench import _tasks_functions

    return _tasks_functions.by_backend()
