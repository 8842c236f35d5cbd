"""Every use of a private Celery, kombu or redis-py internal, in one place.

Each function here reaches into something its library does not promise to keep
(an underscored attribute, a per-thread cache, a method replaced on an
instance). Its docstring says why aceleryctl needs it; ``tests/unit/test_compat.py``
checks that each internal still has the shape relied on, so that an upgrade that
changes one fails that test instead of a dispatch in production.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend

__all__ = ["prepare_publishing_thread", "release_thread_backend"]


def prepare_publishing_thread(app: Celery) -> None:
    """Runs once on each new publishing thread, before its first publish.

    Makes the controller's app current here (a ``@shared_task`` resolves against
    the thread's current app). And for a Redis result backend, stops Celery from
    subscribing this thread to every task it publishes: Celery keeps a result
    backend per thread, and ``on_task_call`` subscribes that backend's pub/sub
    connection to each task id (a SUBSCRIBE and later an UNSUBSCRIBE per dispatch,
    on a connection nothing closes). The result built here is thrown away and
    rebuilt in the caller's thread, whose backend subscribes when someone waits
    on it and then reads the stored state, so nothing is lost.

    Internal used: ``RedisBackend.on_task_call``, replaced on this thread's
    backend instance.
    """
    app.set_current()
    backend = app.backend  # this thread's own instance
    if isinstance(backend, RedisBackend):
        backend.on_task_call = _no_subscription  # type: ignore[method-assign]


def release_thread_backend(app: Celery) -> None:
    """Close the calling thread's result backend connections, if it made any.

    Celery keeps a result backend per thread and nothing closes it when the
    thread ends. Only a Redis backend is handled here (its client pool and
    pub/sub consumer); others are left to their own cleanup.

    Internals used: ``app._local.backend`` (the per-thread backend),
    ``RedisBackend.result_consumer._pubsub`` / ``.subscribed_to`` and the cached
    ``client`` property in the instance ``__dict__``.
    """
    backend = getattr(getattr(app, "_local", None), "backend", None)
    if not isinstance(backend, RedisBackend):
        return
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer.subscribed_to.clear()
        consumer.stop()
    client = backend.__dict__.get("client")  # a cached property: only if ever used
    if client is not None:
        client.connection_pool.disconnect()


def _no_subscription(producer: Any, task_id: str) -> None:
    """Stands in for ``RedisBackend.on_task_call`` on publishing threads."""
