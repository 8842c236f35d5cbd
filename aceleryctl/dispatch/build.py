"""Turn what a caller passed (task, signature, canvas, callable, name) into a :class:`Dispatch`.

Runs on the caller's thread, where it is cheap and raises ``TypeError`` /
``ValueError`` for bad input at once, before the breaker is asked or a thread
is used. The task id is fixed here (generated when not given) so that every
error and log record can name it; inside a running task, the parent links
Celery would add on the publishing thread are taken here, where the parent is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import Celery, Signature, Task

from aceleryctl.compat.celery import (
    CANVAS_TYPES,
    TASK_PROXY_TYPE,
    current_app_object,
    current_worker_task_of,
)
from aceleryctl.correlation import CORRELATION_HEADER, correlation_id
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.dispatch.record import Dispatch, DispatchKind

__all__ = [
    "CONTROLLER_OPTIONS",
    "Built",
    "build_apply_async",
    "build_callable",
    "build_send_task",
    "check_timeout",
    "current_celery_app",
]

#: Option names the controller consumes; they are never handed to Celery.
CONTROLLER_OPTIONS = frozenset({"dispatch_timeout", "durable"})

#: What a builder returns: the dispatch, and the Celery task running on the
#: caller's thread (whose trail gets the result), or ``None``.
Built = tuple[Dispatch, Any]


def check_timeout(value: object, *, name: str = "dispatch_timeout", zero: bool = False) -> float:
    """Validate a duration in seconds: a finite number greater than zero (or >= 0
    with ``zero=True``). The one place every timeout argument is checked.

    Raises:
        TypeError: ``value`` is not a number (``bool`` is refused too).
        ValueError: ``value`` is not finite, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "greater than 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return seconds


def _check_args(args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kind = type(args)
    if (kind is tuple or kind is list) and type(kwargs) is dict:  # no ABC checks: most calls
        return tuple(args), dict(kwargs)  # type: ignore[arg-type]
    if args is None:
        args = ()
    elif isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise TypeError(
            f"args must be a list or tuple of positional arguments, got {type(args).__name__}"
        )
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}")
    return tuple(args), dict(kwargs)


def _resolve_task(app: Celery, task: Task) -> Task:  # type: ignore[type-arg]
    """The controller app's own copy of ``task`` when it has one.

    A ``@shared_task`` is a proxy that resolves against the *thread's* current
    app, and a task object may be bound to another app; publishing must use the
    controller's app (its broker, its routes) whichever thread runs it.
    """
    if not isinstance(task, TASK_PROXY_TYPE) and task.app is app:
        return task
    resolved: Task | None = app.tasks.get(task.name)  # type: ignore[type-arg]
    return resolved if resolved is not None else task


def current_celery_app() -> Celery:
    """Celery's current app for this thread, as the real object (not its proxy)."""
    return current_app_object()


def _inherit_parent(app: Celery, options: dict[str, Any]) -> Any:
    """Do on the caller's thread what Celery does on the publishing one.

    Inside a running task, Celery links a child to its parent (``parent_id``,
    ``root_id``, optionally the priority) by reading the *thread's* current task;
    the pool thread has none, so the links are taken here. Returns the parent task
    (for ``add_trail``) or ``None``.
    """
    parent = current_worker_task_of(app)
    if not parent:
        return None
    request = parent.request
    options.setdefault("parent_id", request.id)
    options.setdefault("root_id", request.root_id or request.id)
    if app.conf.task_inherit_parent_priority:
        options.setdefault("priority", (request.delivery_info or {}).get("priority"))
    return parent if options.get("add_to_parent", True) else None


def _with_correlation(options: dict[str, Any]) -> str | None:
    """Put the current request's correlation id in the task's headers; return the
    id the message will carry.

    Read on the caller's thread (the context variable is the caller's); a header
    the caller set itself wins.
    """
    headers = options.get("headers") or {}
    given = headers.get(CORRELATION_HEADER) if isinstance(headers, Mapping) else None
    if given is not None:
        return str(given)
    cid = correlation_id.get()
    if cid is not None:
        options["headers"] = {**headers, CORRELATION_HEADER: cid}
    return cid


def build_apply_async(
    app: Celery,
    method: str,
    task: object,
    args: object,
    kwargs: object,
    options: dict[str, Any],
    timeout: float,
) -> Built:
    """Build the dispatch of ``apply_async`` for a task, a signature, a canvas or a
    zero-argument callable. ``options`` is the caller's dict of Celery options
    (controller options already removed); it is taken over, not copied.

    Raises:
        TypeError: ``task`` is none of those, or ``args``/``kwargs`` have the wrong shape.
    """
    call_args, call_kwargs = _check_args(args, kwargs)
    if isinstance(task, CANVAS_TYPES):
        name = f"{type(task).__name__.lstrip('_')}({task!r:.120})"
        # A canvas's id is assigned when it is frozen, on the publishing thread.
        return _made(
            app,
            DispatchKind.CANVAS,
            name,
            call_args,
            call_kwargs,
            options,
            timeout,
            method,
            signature=task,
            target=task,
        )
    if isinstance(task, Signature):
        options["task_id"] = options.get("task_id") or task.options.get("task_id") or new_task_id()
        return _made(
            app,
            DispatchKind.SIGNATURE,
            str(task.get("task")),
            call_args,
            call_kwargs,
            options,
            timeout,
            method,
            signature=task,
            target=task,
        )
    if isinstance(task, Task):
        bound = _resolve_task(app, task)
        options["task_id"] = options.get("task_id") or new_task_id()
        return _made(
            app,
            DispatchKind.TASK,
            bound.name,
            call_args,
            call_kwargs,
            options,
            timeout,
            method,
            target=bound,
        )
    if callable(task):
        if call_args or call_kwargs or options:
            raise TypeError(
                "a zero-argument callable is dispatched as it is: pass the arguments inside "
                "it (lambda: task.delay(x)), or pass the task itself with its arguments"
            )
        return build_callable(method, task, timeout), None
    raise TypeError(
        "task must be a Celery task, a signature, a group/chain/chord, or a zero-argument "
        f"callable that dispatches; got {type(task).__name__}"
    )


def build_send_task(
    app: Celery,
    method: str,
    name: object,
    args: object,
    kwargs: object,
    options: dict[str, Any],
    timeout: float,
) -> Built:
    """Build the dispatch of ``app.send_task(name, ...)`` (by registered name).

    Raises:
        TypeError: ``name`` is not a non-empty str, or the arguments have the wrong shape.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"send_task needs the task's registered name as a str, got {name!r}")
    call_args, call_kwargs = _check_args(args, kwargs)
    options["task_id"] = options.get("task_id") or new_task_id()
    return _made(
        app, DispatchKind.TASK, name, call_args, call_kwargs, options, timeout, method, by_name=True
    )


def _made(
    app: Celery,
    kind: DispatchKind,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    timeout: float,
    method: str,
    *,
    signature: Any = None,
    target: Any = None,
    by_name: bool = False,
) -> Built:
    # What every kind but a callable shares: the parent links and the correlation
    # header go into ``options`` here, on the caller's thread, after the task id.
    parent = _inherit_parent(app, options)
    correlation = _with_correlation(options)
    dispatch = Dispatch(
        kind,
        name,
        options.get("task_id"),
        args,
        kwargs,
        options,
        timeout,
        method,
        signature=signature,
        correlation_id=correlation,
        by_name=by_name,
        target=target,
    )
    return dispatch, parent


def build_callable(method: str, fn: Callable[[], Any], timeout: float) -> Dispatch:
    """The dispatch of a zero-argument dispatcher (the original controller's lambda wrapper)."""
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    return Dispatch(
        DispatchKind.CALLABLE, f"callable {label}", None, (), {}, {}, timeout, method, target=fn
    )
