"""Turn what a caller passed (task, signature, canvas, callable, name) into one publish.

A :class:`Call` is built on the caller's thread, where it is cheap and raises
``TypeError``/``ValueError`` for bad input at once, and its ``publish`` callable
runs later on a pool thread whose current Celery app is the controller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task, current_app
from celery.canvas import Signature, _chain, chord, group
from celery.local import Proxy
from kombu import Producer

from aceleryctl._direct import DirectMessage, DirectPath
from aceleryctl._ids import new_task_id
from aceleryctl.correlation import CORRELATION_HEADER, correlation_id

__all__ = ["Call", "build_apply_async", "build_callable", "build_send_task", "check_timeout"]

#: Option names the controller consumes; they are never handed to Celery.
CONTROLLER_OPTIONS = frozenset({"dispatch_timeout"})


@dataclass(slots=True)
class Call:
    """One dispatch, prepared on the caller's thread.

    Attributes:
        method: the controller method that made it (for logs).
        task_name: a task name, or a description of the canvas or callable.
        task_id: the id the message is sent under; known before publishing for
            tasks and signatures, filled in by the publishing thread for canvases,
            ``None`` for zero-argument callables.
        args, kwargs: the task's arguments, for the failure log only (redacted there).
        timeout: the deadline of this call, in seconds.
        publish: runs on a pool thread and returns what Celery returned. It gets
            the thread's bounded producer, or ``None`` on the stock path.
        accepts_producer: whether ``publish`` can use a producer (a zero-argument
            callable dispatches on its own and cannot).
        deadline: ``time.monotonic()`` by which the caller gives up, set when the
            call is started.
        prepare: runs on the pool thread before connecting (canvases freeze their
            ids there, so that a deadline passing mid-connect can still name them).
        parent_task: the Celery task executing on the caller's thread, if any; the
            result joins its trail as Celery's own ``apply_async`` would do.
        signature_of: the task object whose signature names positional arguments
            in the failure log (so secrets passed positionally are masked too).
        counted: ``False`` for broker probes, which are neither dispatches nor
            failures in the statistics and are not logged.
        started_at, finished_at: ``time.monotonic()`` stamps set by the pool thread.
        direct: the call as the direct path sees it, when that path accepts it
            (:mod:`aceleryctl._direct`); the publishing thread may still send it
            through ``publish`` instead.
        sent_direct: set by the publishing thread when the direct path sent it;
            the future then holds only the task id.
    """

    method: str
    task_name: str
    task_id: str | None
    args: Any
    kwargs: Any
    timeout: float
    publish: Callable[[Producer | None], Any] = field(repr=False)
    accepts_producer: bool = True
    deadline: float = 0.0
    prepare: Callable[[], None] | None = field(default=None, repr=False)
    parent_task: Any = field(default=None, repr=False)
    signature_of: Any = field(default=None, repr=False)
    counted: bool = True
    started_at: float = 0.0
    finished_at: float = 0.0
    direct: DirectMessage | None = field(default=None, repr=False)
    sent_direct: bool = False


def check_timeout(value: object, *, name: str = "dispatch_timeout") -> float:
    """Validate a deadline in seconds: a finite number greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds greater than 0, got {value!r}")
    return seconds


def _check_args(args: object, kwargs: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
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
    if not isinstance(task, Proxy) and task.app is app:
        return task
    resolved: Task | None = app.tasks.get(task.name)  # type: ignore[type-arg]
    return resolved if resolved is not None else task


def current_celery_app() -> Celery:
    """Celery's current app for this thread, as the real object (not its proxy)."""
    app: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def _sending(options: dict[str, Any], producer: Producer | None) -> dict[str, Any]:
    """Options for one publish: on the bounded path, this thread's producer, and no
    publish retry unless the caller asked for one (a retried publish can land twice)."""
    if producer is None:
        return options
    sent = {**options, "producer": producer}
    sent.setdefault("retry", False)
    return sent


def _inherit_parent(app: Celery, options: dict[str, Any]) -> Any:
    """Do on the caller's thread what Celery does on the publishing one.

    Inside a running task, Celery links a child to its parent (``parent_id``,
    ``root_id``, optionally the priority) by reading the *thread's* current task;
    the pool thread has none, so the links are taken here. Returns the parent task
    (for ``add_trail``) or ``None``.
    """
    parent = app.current_worker_task
    if not parent:
        return None
    request = parent.request
    options.setdefault("parent_id", request.id)
    options.setdefault("root_id", request.root_id or request.id)
    if app.conf.task_inherit_parent_priority:
        options.setdefault("priority", (request.delivery_info or {}).get("priority"))
    return parent if options.get("add_to_parent", True) else None


def _with_correlation(options: dict[str, Any]) -> None:
    """Put the current request's correlation id in the task's headers.

    Read on the caller's thread (the context variable is the caller's); a header
    the caller set itself wins.
    """
    cid = correlation_id.get()
    if cid is None:
        return
    headers = options.get("headers") or {}
    if CORRELATION_HEADER not in headers:
        options["headers"] = {**headers, CORRELATION_HEADER: cid}


def _new_id() -> str:
    return new_task_id()


def build_apply_async(
    app: Celery,
    method: str,
    task: object,
    args: object,
    kwargs: object,
    options: dict[str, Any],
    timeout: float,
    direct: DirectPath | None = None,
) -> Call:
    """Prepare ``apply_async`` for a task, a signature or a canvas.

    With ``direct``, a plain task call also carries what the direct path needs.

    Raises:
        TypeError: ``task`` is none of those, or ``args``/``kwargs`` have the wrong shape.
    """
    call_args, call_kwargs = _check_args(args, kwargs)
    if isinstance(task, group | _chain | chord):
        return _canvas_call(app, method, task, call_args, call_kwargs, options, timeout)
    if isinstance(task, Signature):
        task_id = options.get("task_id") or task.options.get("task_id") or _new_id()
        options["task_id"] = task_id
        parent = _inherit_parent(app, options)
        _with_correlation(options)
        sig = task
        return Call(
            method,
            str(sig.get("task")),
            task_id,
            (*call_args, *tuple(sig.args or ())),
            {**dict(sig.kwargs or {}), **call_kwargs},
            timeout,
            lambda producer: sig.apply_async(call_args, call_kwargs, **_sending(options, producer)),
            parent_task=parent,
            signature_of=sig.type if sig.get("task") in app.tasks else None,
        )
    if isinstance(task, Task):
        bound = _resolve_task(app, task)
        task_id = options.get("task_id") or _new_id()
        options["task_id"] = task_id
        parent = _inherit_parent(app, options)
        _with_correlation(options)
        call = Call(
            method,
            bound.name,
            task_id,
            call_args,
            call_kwargs,
            timeout,
            lambda producer: bound.apply_async(
                call_args, call_kwargs, **_sending(options, producer)
            ),
            parent_task=parent,
            signature_of=bound,
        )
        if direct is not None and bound.app is app and direct.accepts(bound, options):
            call.direct = DirectMessage(bound, call_args, call_kwargs, options)
        return call
    if callable(task):
        if call_args or call_kwargs or options:
            raise TypeError(
                "a zero-argument callable is dispatched as it is: pass the arguments inside "
                "it (lambda: task.delay(x)), or pass the task itself with its arguments"
            )
        return build_callable(method, task, timeout)
    raise TypeError(
        "task must be a Celery task, a signature, a group/chain/chord, or a zero-argument "
        f"callable that dispatches; got {type(task).__name__}"
    )


def _canvas_call(
    app: Celery,
    method: str,
    canvas: Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    timeout: float,
) -> Call:
    parent = _inherit_parent(app, options)
    _with_correlation(options)
    call = Call(
        method,
        f"{type(canvas).__name__.lstrip('_')}({canvas!r:.120})",
        options.get("task_id"),
        args,
        kwargs,
        timeout,
        publish=lambda producer: None,
        parent_task=parent,
    )

    def prepare() -> None:
        # Freezing assigns every id in the canvas. It runs on the pool thread (the
        # controller's app current) before connecting, and the id is recorded on
        # the call, so that a deadline passing mid-connect or mid-publish can still
        # name the id the canvas is sent under.
        call.task_id = canvas.freeze(_id=options.get("task_id")).id

    def publish(producer: Producer | None) -> Any:
        sent = _sending({**options, "task_id": call.task_id}, producer)
        return canvas.apply_async(args, kwargs, **sent)

    call.prepare = prepare
    call.publish = publish
    return call


def build_send_task(
    app: Celery,
    method: str,
    name: object,
    args: object,
    kwargs: object,
    options: dict[str, Any],
    timeout: float,
) -> Call:
    """Prepare ``app.send_task(name, ...)`` (dispatch by registered name)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"send_task needs the task's registered name as a str, got {name!r}")
    call_args, call_kwargs = _check_args(args, kwargs)
    task_id = options.get("task_id") or _new_id()
    options["task_id"] = task_id
    parent = _inherit_parent(app, options)
    _with_correlation(options)
    return Call(
        method,
        name,
        task_id,
        call_args,
        call_kwargs,
        timeout,
        lambda producer: app.send_task(name, call_args, call_kwargs, **_sending(options, producer)),
        parent_task=parent,
    )


def build_callable(method: str, fn: Callable[[], Any], timeout: float) -> Call:
    """Prepare a zero-argument dispatcher (the original controller's lambda wrapper)."""
    label = getattr(fn, "__qualname__", None) or type(fn).__name__
    return Call(
        method, f"callable {label}", None, (), {}, timeout, lambda _: fn(), accepts_producer=False
    )
