"""Django settings of the durable suite's child processes: uvicorn, waitress, the
relay command (``python -m django aceleryctl_relay``) and the Celery worker.

Everything that differs between them comes from the environment, set by
``conftest.py``:

* the database: ``ACELERYCTL_DURABLE_SQLITE`` (the path of the SQLite test database
  the test session created), else PostgreSQL when ``pg_alias.child_env()`` was given
  (the session's ``pg`` test database), else none (the worker needs none);
* the broker, result backend and records Redis: the variables
  :mod:`tests.integration.celery_app` reads;
* the outbox's hand-off grace, batch size and the dispatch deadline.

The outbox is on with ``RELAY = "command"``, so the worker that loads this module
runs the run-once guard (``ACELERYCTL["RUN_ONCE"]`` is on by default with the
outbox; its claims go to the Celery app's result backend, the session Redis).
Live events are off: no channel layer is needed.
"""

from __future__ import annotations

import os
from typing import Any

from tests._support import pg_alias

SQLITE_ENV = "ACELERYCTL_DURABLE_SQLITE"
GRACE_ENV = "ACELERYCTL_DURABLE_GRACE"
BATCH_ENV = "ACELERYCTL_DURABLE_BATCH"
DEADLINE_ENV = "ACELERYCTL_DURABLE_DEADLINE"

SECRET_KEY = "aceleryctl-durable-not-a-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "aceleryctl"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.integration.durable.views"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES: dict[str, dict[str, Any]] = {}
if os.environ.get(SQLITE_ENV):
    # Writers wait for each other up to 20 s instead of failing at once.
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ[SQLITE_ENV],
        "OPTIONS": {"timeout": 20},
    }
elif os.environ.get(pg_alias.PORT_ENV):
    DATABASES["default"] = pg_alias.database_settings()

ACELERYCTL: dict[str, Any] = {
    "CELERY_APP": "tests.integration.celery_app:app",
    "DISPATCH_TIMEOUT": float(os.environ.get(DEADLINE_ENV, "2.0")),
    "EVENTS_ENABLED": False,
    "LOG_FILE": None,
    # Opens after three failed publishes; probes again after 0.5 s, at most 2 s apart.
    "BREAKER": {"FAILURE_THRESHOLD": 3, "RESET_TIMEOUT": 0.5, "MAX_RESET_TIMEOUT": 2.0},
    "OUTBOX": {
        "ENABLED": True,
        "RELAY": "command",
        "HANDOFF_GRACE": float(os.environ.get(GRACE_ENV, "30")),
        "BATCH_SIZE": int(os.environ.get(BATCH_ENV, "100")),
        "POLL_INTERVAL": 0.2,
        "RETRY_BACKOFF": 0.2,
        "RETRY_BACKOFF_MAX": 1.0,
        "MAX_ATTEMPTS": 50,
    },
}

# aceleryctl's records (the relay's rounds, failed publishes, the guard's skips) on
# stderr, which the conftest sends to each child's log file.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"aceleryctl": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}
