"""The Celery app of the Django Tasks backend tests: a Django project's worker, in small.

``celery -A tests.integration.tasks.worker_app worker`` sets Django up with
:mod:`.worker_settings`, and Celery's ``imports`` loads :mod:`.functions`, whose
``@task`` functions register with the backend. The worker also records the
``task_started`` and ``task_finished`` signals (``signals:<id>`` in the records
database). The test process imports it for the app; Django is already set up there.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.tasks.worker_settings")
if not apps.ready:
    django.setup()

from tests._support.celery_apps import configure_env_app, env_worker_app
from tests.integration.tasks.site import DEFAULT_QUEUE

__all__ = ["BACKEND_ENV", "BROKER_ENV", "app", "configure"]

BROKER_ENV = "ACELERYCTL_TASKS_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_TASKS_RESULT_BACKEND"
ENV = {"broker_env": BROKER_ENV, "backend_env": BACKEND_ENV}

app = env_worker_app(
    "aceleryctl_tasks",
    **ENV,
    dbs=(7, 14),
    result_extended=True,
    task_default_queue=DEFAULT_QUEUE,
    imports=["tests.integration.tasks.functions"],
)


def configure(*, broker_url: str, result_backend: str) -> None:
    """Point the app at the session's Redis; call before the app is first used."""
    configure_env_app(app, **ENV, broker_url=broker_url, result_backend=result_backend)


def _connect_signal_records() -> None:
    # Only in the worker: the test process records nothing here.
    from aceleryctl.compat.django_tasks import task_finished, task_started
    from tests.integration.tasks import functions

    def started(sender: Any, task_result: Any, **kwargs: Any) -> None:
        functions.record_signal("started", task_result)

    def finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        functions.record_signal("finished", task_result)

    task_started.connect(started, weak=False)
    task_finished.connect(finished, weak=False)


if os.environ.get("DJANGO_SETTINGS_MODULE") == "tests.integration.tasks.worker_settings":
    _connect_signal_records()
