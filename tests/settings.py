"""Django settings for the test suite (pytest-django reads DJANGO_SETTINGS_MODULE).

Two databases: ``default``, SQLite in a file, and ``pg``, PostgreSQL, for the tests
that ask for it (``@pytest.mark.django_db(databases=["default", "pg"])``). The ``pg``
server is started by ``tests/conftest.py`` only when a collected test needs it; see
``tests/_support/pg_alias.py``. A child process given ``pg_alias.child_env()``
reaches the same PostgreSQL test database through this module's ``pg`` entry.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from tests._support import pg_alias
from tests.integration.tasks import site as tasks_site

SECRET_KEY = "aceleryctl-tests-not-a-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "aceleryctl",
]
# django-celery-beat (its PeriodicTask table, read by the schedule checks) where it
# installs: its releases so far declare Django < 6.1, so tests/run.sh adds it to the
# Django 5.2 environments only.
if importlib.util.find_spec("django_celery_beat") is not None:
    INSTALLED_APPS.append("django_celery_beat")
# A file database, not :memory:, so that a transaction committed on one thread is
# visible to others and on-commit behaviour is the real thing.
_DB_DIR = Path(os.environ.get("ACELERYCTL_TEST_DB_DIR", tempfile.gettempdir()))
DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_DB_DIR / f"aceleryctl-tests-{os.getpid()}.sqlite3"),
        "TEST": {"NAME": str(_DB_DIR / f"aceleryctl-tests-{os.getpid()}-test.sqlite3")},
    },
    # Port 1 (nothing listens) until the session's PostgreSQL server is started, or
    # the server and test database named by the environment in a child process.
    pg_alias.ALIAS: pg_alias.database_settings(),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ACELERYCTL: dict[str, object] = {
    "CELERY_APP": "tests.django.celery_fixture:app",
    "DISPATCH_TIMEOUT": 5.0,
    # The integration workers inherit this settings module: no log file in the repo.
    "LOG_FILE": None,
}
# The Django Tasks backend tests (tests/integration/tasks): @task functions publish
# through the controller the tasks_controller fixture sets.
TASKS = tasks_site.TASKS
