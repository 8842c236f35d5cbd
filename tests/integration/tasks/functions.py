"""The ``@task`` functions of the Django Tasks backend tests.

Imported by the test process (to enqueue) and by the tasks workers (Celery's
``imports`` setting), which registers them with the backend in both. Functions
that must be observed from the test write to the records database
(``ACELERYCTL_TASKS_RECORDS_URL``).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

import redis

from aceleryctl.backends import report_progress
from aceleryctl.compat.django_tasks import TaskContext, task

__all__ = [
    "aadd",
    "add",
    "echo",
    "fail",
    "gated",
    "limited",
    "noted",
    "progress",
    "with_context",
]

RECORDS_ENV = "ACELERYCTL_TASKS_RECORDS_URL"


def records() -> redis.Redis:
    """A client of the records database (closed by the caller)."""
    return redis.Redis.from_url(os.environ[RECORDS_ENV], socket_timeout=30)


@task
def add(a: int, b: int) -> int:
    """``a + b``."""
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """What it was called with."""
    return {"args": list(args), "kwargs": kwargs}


@task
def fail(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


@task(queue_name="prio", priority=0)
def noted(label: str) -> str:
    """Append ``label`` to the list ``noted`` (the order functions ran in)."""
    with records() as client:
        client.rpush("noted", label)
    return label


@task(queue_name="other")
def gated(key: str, timeout: float) -> str:
    """Wait (at most ``timeout`` s) until ``key`` is pushed in the records database."""
    with records() as client:
        client.rpush(f"{key}:started", "1")
        client.blpop([key], timeout=timeout)
    return "opened"


@task
async def aadd(a: int, b: int) -> dict[str, Any]:
    """``a + b``, computed in a coroutine; says on which loop and thread it ran."""
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    return {
        "sum": a + b,
        "loop": id(loop),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
    }


@task(takes_context=True)
def with_context(context: TaskContext, x: int) -> dict[str, Any]:  # type: ignore[type-arg]
    """What the context says: attempt, result id, status."""
    result = context.task_result
    return {
        "x": x,
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "worker_ids": list(result.worker_ids),
    }


@task
def progress(steps: int, gate: str | None = None) -> int:
    """Wait for ``gate`` (when given, at most 30 s), then report ``steps`` progress steps."""
    if gate is not None:
        with records() as client:
            client.blpop([gate], timeout=30)
    for step in range(1, steps + 1):
        report_progress(step, steps, f"step {step}")
    return steps


@task(expires=120, time_limit=30, soft_time_limit=20)  # type: ignore[call-overload, untyped-decorator]
def limited() -> str:
    """A task carrying Celery options."""
    return "limited"


def record_signal(kind: str, task_result: Any) -> None:
    """Write what a Django task signal carried to the list ``signals:<id>``."""
    with records() as client:
        client.rpush(
            f"signals:{task_result.id}",
            json.dumps(
                {
                    "kind": kind,
                    "status": str(task_result.status),
                    "path": task_result.task.module_path,
                    "worker_ids": list(task_result.worker_ids),
                    "errors": [e.exception_class_path for e in task_result.errors],
                    "pid": os.getpid(),
                }
            ),
        )


# -- the conformance tests' functions (the django-tasks backport's tests/tasks.py
# exercises the same behaviours) ---------------------------------------------------


@task
def noop(*args: Any, **kwargs: Any) -> None:
    """Nothing."""


@task
async def anoop(*args: Any, **kwargs: Any) -> None:
    """Nothing, in a coroutine."""


@task
def meaning_of_life() -> int:
    """42."""
    return 42


@task
def exits() -> None:
    """``sys.exit(1)``."""
    raise SystemExit(1)


@task
def nested_exception() -> None:
    """An exception whose argument is an exception."""
    raise ValueError(ValueError("nested"))


@task
def returns_a_function() -> Any:
    """A return value that is not JSON."""
    return lambda: True


@task(takes_context=True)
def own_id(context: TaskContext) -> str:  # type: ignore[type-arg]
    """The result id, read from the context."""
    return context.task_result.id
