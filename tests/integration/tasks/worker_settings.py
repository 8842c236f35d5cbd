"""Django settings of the tasks workers (``tests.integration.tasks.worker_app``)."""

from __future__ import annotations

import os

from tests.integration.tasks.site import TASKS

SECRET_KEY = "aceleryctl-tasks-worker-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}
ACELERYCTL = {"LOG_FILE": None, "PROGRESS_MAX_RATE": 1000.0}
#: Live events of the tasks go to the session's channel layer (db 5, as the live tests').
LAYER_ENV = "ACELERYCTL_TASKS_LAYER_URL"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get(LAYER_ENV, "redis://127.0.0.1:1/5")]},
    }
}
TASKS = TASKS
