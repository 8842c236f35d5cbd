"""Every use of a private or undocumented library internal, in one place.

Each function or constant here reaches into something its library does not
promise to keep: an underscored attribute, a class or module documented only
among the library's internals, a hook replaced on an instance, or an API some
supported versions lack. Its docstring says why aceleryctl needs it and what
happens when it is absent; ``tests/unit/test_compat.py`` checks that each
internal still has the shape relied on, so that an upgrade that changes one
fails that test instead of a dispatch in production, and fails when a module
outside this package reaches into a library's private attribute.

* :mod:`aceleryctl.compat.celery`: Celery (app state, task classes, routing,
  message building, result backends);
* :mod:`aceleryctl.compat.celery_worker`: the worker side's (running task,
  retries, request messages, the Redis result backend);
* :mod:`aceleryctl.compat.celery_consumer`: the worker consumer's task strategies
  (the run-once guard);
* :mod:`aceleryctl.compat.kombu_redis`: kombu's Redis channel and redis-py's
  connection, and which publish a delivered message came from;
* :mod:`aceleryctl.compat.channels`: reading back a Django Channels routing tree;
* :mod:`aceleryctl.compat.stdlib_json`: the standard library's C JSON encoder,
  made once.

``docs/design.md`` ("Private library internals") lists them in a table.
"""

from __future__ import annotations

from aceleryctl.compat.celery import prepare_publishing_thread, release_thread_backend

__all__ = ["prepare_publishing_thread", "release_thread_backend"]
