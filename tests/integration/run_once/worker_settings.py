"""Django settings of the run-once workers (``tests.integration.run_once.worker_app``).

What differs between the workers comes from the environment, set by
``conftest.py``: ``ACELERYCTL["RUN_ONCE"]`` as JSON, and the file every
``aceleryctl.guard`` record goes to (INFO and up, with its level and logger name).
"""

from __future__ import annotations

import json
import os

RUN_ONCE_ENV = "ACELERYCTL_ONCE_SETTING"
RECORDS_FILE_ENV = "ACELERYCTL_ONCE_RECORDS_FILE"

SECRET_KEY = "aceleryctl-run-once-worker-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}

ACELERYCTL = {
    "LOG_FILE": None,
    "EVENTS_ENABLED": False,
    "RUN_ONCE": json.loads(os.environ.get(RUN_ONCE_ENV) or "{}"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"records": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "records": {
            "class": "logging.FileHandler",
            "filename": os.environ.get(RECORDS_FILE_ENV, os.devnull),
            "formatter": "records",
            "level": "INFO",
        }
    },
    "loggers": {"aceleryctl.guard": {"handlers": ["records"], "level": "INFO"}},
}
