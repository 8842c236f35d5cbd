"""The Celery app of a Django project's worker, in small.

Shared by the live-events tests (``tests.integration.live.worker_app``) and the
live-events benchmark (``bench._events_app``): JSON only, UTC, one message
prefetched at a time, the worker's logging left to Celery, and every Redis call
bounded in time.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

__all__ = ["worker_app"]


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
