"""Django settings of ``python -m bench.dispatch --documented``: the configuration
the docs recommend (``aceleryctl`` installed, a ``channels_redis`` layer, live
events on unless ``ACELERYCTL_BENCH_EVENTS=0``), and the Celery app the default
controller dispatches with.

Read by a child process of the benchmark, with the private Redis's URL in
``ACELERYCTL_BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os

from bench.dispatch import make_app

URL_ENV = "ACELERYCTL_BENCH_REDIS_URL"
EVENTS_ENV = "ACELERYCTL_BENCH_EVENTS"
_URL = os.environ.get(URL_ENV, "redis://127.0.0.1:1")

SECRET_KEY = "aceleryctl-bench-dispatch-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [f"{_URL}/2"]},
    }
}
ACELERYCTL = {
    "CELERY_APP": "bench._dispatch_site:app",
    "EVENTS_ENABLED": os.environ.get(EVENTS_ENV, "1") == "1",
    "DISPATCH_TIMEOUT": 10.0,
    "LOG_FILE": None,
}

app = make_app(_URL)
