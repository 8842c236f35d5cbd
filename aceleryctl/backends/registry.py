"""The task functions the Celery backend may run: those decorated with ``@task`` for it.

A function is registered when its ``Task`` is made (``@task`` runs the backend's
``validate_task``), in whichever process imports its module: the web process,
and the worker, which imports the project's task modules at start (Celery's
``autodiscover_tasks`` or its ``imports`` setting). The worker runs a message's
function only if its module path is registered here: a path from a message is
never imported.

Thread-safe: registration is a ``dict.setdefault`` (atomic under the GIL).
"""

from __future__ import annotations

from typing import Any

__all__ = ["register", "registered", "registered_paths"]

_tasks: dict[str, Any] = {}


def register(task: Any) -> None:
    """Register ``task`` (a Django ``Task``) under its module path. The first
    registration of a path wins: ``task.using(...)`` makes variants of the
    decorated task, which keep the decorated one registered."""
    _tasks.setdefault(task.module_path, task)


def registered(path: str) -> Any:
    """The registered ``Task`` whose function is at ``path``, or ``None``."""
    return _tasks.get(path)


def registered_paths() -> list[str]:
    """Every registered module path, sorted (for logs and checks)."""
    return sorted(_tasks)
