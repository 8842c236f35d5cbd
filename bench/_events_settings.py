"""Django settings of the live-events benchmark's worker and ASGI server (bench.events).

Both run as subprocesses of ``python -m bench.events`` with
``DJANGO_SETTINGS_MODULE=bench._events_settings``; the Redis URLs and the knobs come
from the environment set there.
"""

from __future__ import annotations

import os

LAYER_ENV = "ACELERYCTL_BENCH_LAYER_URL"
RATE_ENV = "ACELERYCTL_BENCH_PROGRESS_RATE"
EVENTS_ENV = "ACELERYCTL_BENCH_EVENTS"
#: The cookie the ASGI app takes the session key from (not a Django setting).
SESSION_COOKIE = "bench_session"

#: Tokens minted by the benchmark process (which configures Django with the same
#: key) must verify in the server.
SECRET_KEY = "aceleryctl-bench-events-not-a-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get(LAYER_ENV, "redis://127.0.0.1:1/2")]},
    }
}
ACELERYCTL = {
    "CELERY_APP": "bench._events_app:app",  # the server reads snapshots from its backend
    "EVENTS_ENABLED": os.environ.get(EVENTS_ENV, "1") == "1",
    "PROGRESS_MAX_RATE": float(os.environ.get(RATE_ENV, "10")),
    "LOG_FILE": None,
}
