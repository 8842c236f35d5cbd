"""Django settings for the demo. Everything that varies comes from the environment.

``REDIS_URL`` (default ``redis://127.0.0.1:6379``) names the Redis server: the broker
uses database 0, the result backend database 1 and the Channels layer (live task
events) database 2. The SQLite database lives in
``DEMO_DATA_DIR`` (default ``<repository root>/.demo``).

``DJANGO_SECRET_KEY`` unset: a demo-only key, for the local run. Set but empty (what
docker-compose.yml passes when no key was given): refuse to start. ``DJANGO_DEBUG=1``
turns DEBUG on; ``DJANGO_ALLOWED_HOSTS`` is a comma-separated list (unset or empty:
the loopback names). ``DEMO_FAULT_SWITCH=1`` (set by ``python -m demo_site.run``; on
whenever DEBUG is) enables the page's dead-broker switch.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", REPO_ROOT / ".demo"))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def redis_db_url(url: str, db: int) -> str:
    """``url`` with its database number replaced by ``db`` (``redis://host:port/<db>``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")

# A demo running on your own machine: not a production configuration.
_secret_key = os.environ.get("DJANGO_SECRET_KEY")
if _secret_key is None:  # the local demo (python -m demo_site.run)
    SECRET_KEY = "demo-only-insecure-key-do-not-deploy"
elif _secret_key.strip():
    SECRET_KEY = _secret_key
else:  # set but empty: a deployment (docker-compose.yml) that was given no key
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is empty: set it to a long random string, in the environment or "
        "in .env next to docker-compose.yml (python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))' makes one)"
    )
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = [
    host.strip()
    for host in (os.environ.get("DJANGO_ALLOWED_HOSTS") or "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]

#: The page's "dead broker" switch (``demo_site.faults``): never in a real deployment.
DEMO_FAULT_SWITCH = DEBUG or os.environ.get("DEMO_FAULT_SWITCH", "") == "1"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",  # subscription tokens are bound to the visitor's session
    "django.contrib.staticfiles",  # serves aceleryctl/client.js and the page's own files
    "rest_framework",
    "aceleryctl",
    "demo_site",
]
MIDDLEWARE = [
    "aceleryctl.correlation.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "demo_site.urls"
ASGI_APPLICATION = "demo_site.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
        # The web server and the worker write to the same file.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Served by Django itself (demo_site.asgi wraps the app in ASGIStaticFilesHandler):
# the demo has no web server in front of it.
STATIC_URL = "static/"

REST_FRAMEWORK = {
    # No users in the demo: DRF's views are open, and (without SessionAuthentication)
    # exempt from CSRF. Django's own views keep CSRF protection.
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

# Django's task framework: @task functions (demo_site.tasks.count_words) run on the
# Celery worker, enqueued through aceleryctl's controller.
TASKS = {"default": {"BACKEND": "aceleryctl.backends.CeleryBackend"}}

# Read by demo_site.celery_app (namespace "CELERY").
CELERY_BROKER_URL = redis_db_url(REDIS_URL, 0)
CELERY_RESULT_BACKEND = redis_db_url(REDIS_URL, 1)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_TRACK_STARTED = True
CELERY_RESULT_EXTENDED = True  # a late subscriber's snapshot names the task and attempt
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_RESULT_EXPIRES = 3600
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Bounded client timeouts, so a dead broker fails calls instead of hanging them.
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
CELERY_REDIS_SOCKET_TIMEOUT = 5.0
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 2.0

# Live task events: workers publish to this layer, the web process reads from it.
# redis-py 8 reads with a 5 s socket timeout by default, the same 5 s channels_redis
# blocks in BZPOPMIN: without socket_timeout None an idle layer raises TimeoutError.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": redis_db_url(REDIS_URL, 2), "socket_timeout": None}]},
    }
}

ACELERYCTL = {
    "CELERY_APP": "demo_site.celery_app:app",
    "DISPATCH_TIMEOUT": 2.0,
    "MAX_WORKERS": 2,
    # The transactional outbox: an on-commit dispatch is written to the outbox table in
    # the caller's transaction, and a durable one (durable=True) is stored when the
    # broker does not take it; a relay publishes what the broker did not get.
    "OUTBOX": {
        "ENABLED": True,
        # Not the library's in-process relay: the demo runs the relay itself, on a
        # thread of the web process that publishes through the controller the
        # dead-broker switch points at (demo_site.outbox), so that the switch reaches
        # the relay too. "command" tells aceleryctl not to start a relay of its own.
        "RELAY": "command",
        # A stored dispatch is retried at least every 4 s (and its breaker, while open,
        # refuses it without spending an attempt), so a report stored while the broker
        # was dead runs a few seconds after it is back.
        "RETRY_BACKOFF": 0.5,
        "RETRY_BACKOFF_MAX": 4.0,
        "MAX_ATTEMPTS": 100,
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "aceleryctl": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "demo_site": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
