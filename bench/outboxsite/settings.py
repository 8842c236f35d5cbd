"""Django settings of the children of ``python -m bench.outbox`` and of the
uvicorn servers of ``python -m bench.http_outbox``.

Read from the environment (set by :mod:`bench.outbox` or :mod:`bench.http_outbox`):

* ``ACELERYCTL_BENCH_OUTBOX_VARIANT``: ``aceleryctl-outbox`` (aceleryctl with its
  outbox on), ``aceleryctl`` (outbox off), ``celery`` (Celery's own
  ``delay_on_commit``), ``dco`` (django-celery-outbox) or ``setup`` (every app
  installed, to create the tables);
* ``ACELERYCTL_BENCH_PG_PORT`` / ``ACELERYCTL_BENCH_PG_NAME``: the private
  PostgreSQL on 127.0.0.1;
* ``ACELERYCTL_BENCH_POOL``: the size of the psycopg connection pool (``0``: no
  pool, one persistent connection per thread);
* ``ACELERYCTL_BENCH_REDIS_URL``: the private Redis (broker on database 0);
* ``ACELERYCTL_BENCH_RELAY_BATCH``: rows a relay claims per round (default 100,
  both libraries' default).

django-celery-outbox is installed only in its own variant (and for the setup);
aceleryctl's app is installed in every variant (its outbox table must exist), with
live events off so that no variant pays for them. django-celery-outbox's metrics
are switched off (nothing listens for its StatsD packets here).
"""

from __future__ import annotations

import os
from typing import Any

VARIANT_ENV = "ACELERYCTL_BENCH_OUTBOX_VARIANT"
PORT_ENV = "ACELERYCTL_BENCH_PG_PORT"
NAME_ENV = "ACELERYCTL_BENCH_PG_NAME"
POOL_ENV = "ACELERYCTL_BENCH_POOL"
REDIS_ENV = "ACELERYCTL_BENCH_REDIS_URL"
BATCH_ENV = "ACELERYCTL_BENCH_RELAY_BATCH"

VARIANT = os.environ.get(VARIANT_ENV, "setup")
POOL = int(os.environ.get(POOL_ENV, "0"))
#: Rows a relay claims per round, both libraries (their default: 100).
RELAY_BATCH = int(os.environ.get(BATCH_ENV, "100"))

SECRET_KEY = "aceleryctl-bench-outbox-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
#: The views ``python -m bench.http_outbox`` serves with uvicorn (no middleware).
ROOT_URLCONF = "bench.outboxsite.urls"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["aceleryctl", "bench.outboxsite.apps.OutboxSiteConfig"]
if VARIANT in ("dco", "setup-dco"):
    INSTALLED_APPS.append("django_celery_outbox")

_options: dict[str, Any] = {"connect_timeout": 5}
if POOL:
    # Django's psycopg pool: a connection is taken at the first query of a request
    # and given back when the request ends (close_old_connections, CONN_MAX_AGE 0).
    _options["pool"] = {"min_size": POOL, "max_size": POOL, "timeout": 60}
DATABASES: dict[str, Any] = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get(PORT_ENV, "1"),
        "NAME": os.environ.get(NAME_ENV, "bench_outbox"),
        "USER": "postgres",
        "PASSWORD": "",
        "CONN_MAX_AGE": 0 if POOL else None,
        "OPTIONS": _options,
    }
}
ACELERYCTL = {
    "CELERY_APP": "bench.outboxsite.tasks:app",
    "EVENTS_ENABLED": False,
    "LOG_FILE": None,
    "DISPATCH_TIMEOUT": 10.0,
    "OUTBOX": {
        "ENABLED": VARIANT in ("aceleryctl-outbox", "aceleryctl-relay"),
        "BATCH_SIZE": RELAY_BATCH,
    },
}
CELERY_OUTBOX_APP = "bench.outboxsite.tasks.app"
MONITORING_METRICS_ENABLED = False
