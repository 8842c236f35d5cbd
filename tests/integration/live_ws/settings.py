"""Django settings of the ASGI app the live websocket tests serve with uvicorn.

URLs come from the environment: ``ACELERYCTL_LIVE_LAYER_URL`` (channels_redis) and
``ACELERYCTL_LIVE_RESULTS_URL`` (the Celery result backend snapshots are read from).
"""

from __future__ import annotations

import os

from tests.settings import SECRET_KEY  # tokens minted by the test process must verify

__all__ = ["SECRET_KEY"]

DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("ACELERYCTL_LIVE_LAYER_URL", "redis://127.0.0.1:1/0")]},
    }
}
ACELERYCTL = {"CELERY_APP": "tests.integration.live_ws.asgi_app:celery_app"}
