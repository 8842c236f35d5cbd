"""The Celery app of a Django project's worker, in small.

Shared by the worker apps of the integration tests (``tests.integration.*.worker_app``)
and the live-events benchmark (``bench._events_app``): JSON only, UTC, one message
prefetched at a time, the worker's logging left to Celery, and every Redis call
bounded in time. :func:`env_worker_app` and :func:`configure_env_app`: an app whose
URLs its worker process reads from the environment.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

__all__ = ["configure_env_app", "env_worker_app", "worker_app"]

#: An app's Redis URL before it is configured: a closed port (database ``db``).
UNCONFIGURED = "redis://127.0.0.1:1/{db}"


def worker_app(name: str, *, broker_url: str, result_backend: str, **settings: Any) -> Celery:
    """A Celery app named ``name`` (never made current); ``settings`` are added to, or
    replace, the common configuration."""
    app = Celery(name, set_as_current=False)
    app.conf.update(
        {
            "broker_url": broker_url,
            "result_backend": result_backend,
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "enable_utc": True,
            "timezone": "UTC",
            "result_expires": 600,
            "worker_prefetch_multiplier": 1,
            "worker_hijack_root_logger": True,
            "worker_redirect_stdouts": False,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": {"socket_timeout": 10.0, "socket_connect_timeout": 2.0},
            "redis_socket_timeout": 10.0,
            "redis_socket_connect_timeout": 2.0,
            **settings,
        }
    )
    return app


def env_worker_app(
    name: str, *, broker_env: str, backend_env: str, dbs: tuple[int, int], **settings: Any
) -> Celery:
    """:func:`worker_app` with its broker and result backend URLs from the environment
    variables ``broker_env`` and ``backend_env`` (unset: :data:`UNCONFIGURED` with the
    databases ``dbs``), giving up quickly on a result store that is gone (results
    garbage-collected after the session's Redis stopped must not retry for a minute)."""
    return worker_app(
        name,
        broker_url=os.environ.get(broker_env, UNCONFIGURED.format(db=dbs[0])),
        result_backend=os.environ.get(backend_env, UNCONFIGURED.format(db=dbs[1])),
        result_backend_transport_options={
            "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
        },
        **settings,
    )


def configure_env_app(
    app: Celery, *, broker_env: str, backend_env: str, broker_url: str, result_backend: str
) -> None:
    """Point ``app`` (from :func:`env_worker_app`) at ``broker_url`` and
    ``result_backend``, and set the variables its workers read them from; call
    before the app is first used."""
    os.environ[broker_env] = broker_url
    os.environ[backend_env] = result_backend
    app.conf.update(broker_url=broker_url, result_backend=result_backend)
