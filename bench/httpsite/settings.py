"""Django settings of the HTTP benchmark's server (``bench.httpsite``).

The broker URL comes from ``ACELERYCTL_BENCH_HTTP_BROKER`` (set by ``bench.http``).
``MIDDLEWARE`` is empty and ``INSTALLED_APPS`` too: aceleryctl's default controller
reads ``ACELERYCTL`` without its app being installed, and its event receivers stay
unconnected (what is measured is the dispatch).
"""

from __future__ import annotations

SECRET_KEY = "aceleryctl-bench-http-not-a-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.httpsite.urls"
DATABASES: dict[str, object] = {}
ACELERYCTL = {
    "CELERY_APP": "bench.httpsite.tasks:app",
    "LOG_FILE": None,
}
