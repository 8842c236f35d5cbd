"""Django settings of the tasks workers (``tests.integration.tasks.worker_app``)."""

from __future__ import annotations

from tests.integration.tasks.site import TASKS

SECRET_KEY = "aceleryctl-tasks-worker-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}
ACELERYCTL = {"LOG_FILE": None, "EVENTS_ENABLED": False}
TASKS = TASKS
