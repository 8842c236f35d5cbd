"""Django settings of the live-events worker (``tests.integration.live.worker_app``).

Everything that differs between the workers comes from the environment, set by
``conftest.py``: the channel-layer Redis, the log files and the logging switches.
"""

from __future__ import annotations

import os

from aceleryctl import DEFAULT_REDACT_KEYS

LAYER_ENV = "ACELERYCTL_LIVE_LAYER_URL"
LOG_FILE_ENV = "ACELERYCTL_LIVE_LOG_FILE"
RECORDS_FILE_ENV = "ACELERYCTL_LIVE_RECORDS_FILE"
SUCCESS_ENV = "ACELERYCTL_LIVE_SUCCESS_LOGGING"
PRERUN_ENV = "ACELERYCTL_LIVE_PRERUN_LOGGING"
RATE_ENV = "ACELERYCTL_LIVE_PROGRESS_RATE"

#: A key substring the live tests plant secrets under (on top of the defaults).
PLANTED_KEY = "launch_code"

SECRET_KEY = "aceleryctl-live-worker-not-a-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["aceleryctl"]
DATABASES: dict[str, object] = {}

#: channels_redis on the session's Redis. The capacity is raised because the tests
#: follow hundreds of tasks from one process, whose channels share one Redis key.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get(LAYER_ENV, "redis://127.0.0.1:1/5")],
            "capacity": 20_000,
        },
    }
}

ACELERYCTL = {
    "LOG_FILE": os.environ.get(LOG_FILE_ENV) or None,
    "PROGRESS_MAX_RATE": float(os.environ.get(RATE_ENV, "10")),
    "REDACT_KEYS": [*DEFAULT_REDACT_KEYS, PLANTED_KEY],
}
CELERY_ENABLE_SUCCESS_LOGGING = os.environ.get(SUCCESS_ENV) == "1"
CELERY_ENABLE_PRERUN_LOGGING = os.environ.get(PRERUN_ENV) == "1"

# Every record of aceleryctl.signals, INFO and up, also goes to a file of its own,
# with the correlation id, so the tests can read exactly what aceleryctl logged.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "records": {
            "format": "%(levelname)s %(name)s correlation_id=%(correlation_id)s %(message)s"
        }
    },
    "handlers": {
        "records": {
            "class": "logging.FileHandler",
            "filename": os.environ.get(RECORDS_FILE_ENV, os.devnull),
            "formatter": "records",
            "level": "INFO",
        }
    },
    "loggers": {
        "aceleryctl.signals": {"handlers": ["records"], "level": "INFO"},
        "aceleryctl.emitter": {"level": "INFO"},
    },
}
