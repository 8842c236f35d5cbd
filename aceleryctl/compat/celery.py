"""Celery internals aceleryctl relies on, each behind one function or constant.

Every name here stands for something Celery does not promise to keep: an
underscored attribute, a module or class documented only in Celery's internals
reference, a hook replaced on an instance, or a helper that older supported
versions lack. Each docstring says what the internal is, why aceleryctl needs
it, and what happens when it is missing. ``tests/unit/test_compat.py`` checks
the shape of each one.

The worker side's internals follow the dispatch side's: the task a worker thread
runs, ``Task.retry``'s frame (the retry pre-announcement), the wrapper Celery puts
around an exception it cannot pickle, a worker request's message, and the Redis
result backend's private methods the one-round-trip progress store reproduces.

Functions on the direct path's per-message route are plain functions doing the
same attribute reads the call sites did, so moving them here costs one call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from types import CodeType
from typing import Any, Final, NamedTuple

from celery import Celery, Task, current_app
from celery import _state as _celery_state
from celery.app.routes import MapRoute
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.canvas import _chain, chord, group
from celery.exceptions import Retry
from celery.local import Proxy
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_make_aware

__all__ = [
    "CANVAS_TYPES",
    "REDIS_RESULT_STORE_METHODS",
    "TASK_PROXY_TYPE",
    "TASK_RETRY_CODE",
    "RetryCall",
    "active_apps",
    "anon_nodename",
    "backend_sees_publishes",
    "current_app_object",
    "current_worker_task",
    "exec_options",
    "freeze_canvas",
    "has_publish_quirks",
    "has_receivers",
    "is_fallback_app",
    "max_stored_value_size",
    "prepare_publishing_thread",
    "release_thread_backend",
    "reply_to_oid",
    "result_meta",
    "retry_call_on_stack",
    "saferepr",
    "seconds_until",
    "signature_checker",
    "static_route",
    "task_message_v2",
    "unpickleable_exception_name",
    "worker_request_dict",
]

# -- building a dispatch (caller's thread) ------------------------------------------

#: The classes of a group, chain or chord. ``celery.canvas.chain`` is a thin
#: subclass whose constructor returns instances of the private ``_chain``, and
#: ``a | b`` builds a ``_chain`` too, so ``isinstance(x, chain)`` misses most
#: chains: aceleryctl needs the private class to recognise a chain. Were it
#: renamed, importing this module fails (at once, not per dispatch).
CANVAS_TYPES: Final = (group, _chain, chord)

#: Celery's lazy proxy class (``celery.local.Proxy``, an internals-reference
#: module). A ``@shared_task`` is such a proxy and resolves against the
#: *thread's* current app; aceleryctl recognises it to look the task up in the
#: controller's app instead.
TASK_PROXY_TYPE: Final[type] = Proxy


def current_app_object() -> Celery:
    """This thread's current Celery app as the real object, not Celery's proxy.

    ``celery.current_app`` is a ``Proxy``; ``_get_current_object()`` is the
    proxy's private way to the object behind it. The controller keeps the app
    itself (comparisons with ``task.app`` and per-thread settings must see the
    real app). If the method went away, calling the proxy's target through
    ``celery._state.get_current_app`` would be the replacement.
    """
    app: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def active_apps() -> list[Celery]:
    """Every Celery app created in this process (``celery._state._get_active_apps``).

    Used when no app is configured and the thread's current app is Celery's bare
    fallback: with exactly one project app alive, that one is taken. If the
    function disappears, this raises ``AttributeError`` and the caller's
    ``ImproperlyConfigured`` path asks for ``ACELERYCTL['CELERY_APP']``.
    """
    state: Any = _celery_state  # the stubs omit its private names
    return list(state._get_active_apps())


def is_fallback_app(app: Celery) -> bool:
    """Whether ``app`` is Celery's bare default app (``celery._state.default_app``).

    That app exists on threads where no project app was made current; its
    broker is ``amqp://localhost``, so publishing with it by accident must not
    happen. Without the attribute, no app counts as the fallback.
    """
    return app is getattr(_celery_state, "default_app", None) and app.main == "default"


# -- the direct path: deciding and building (publishing thread) ---------------------


def has_publish_quirks(task: Task) -> bool:  # type: ignore[type-arg]
    """Whether Celery's ``apply_async`` does something to this task's call that the
    direct path does not reproduce.

    Two markers, both private to ``Task.apply_async``: ``__v2_compat__`` (a
    legacy task base that rewrites the call) and ``_dump_pydantic_arguments``
    (set by ``@app.task(pydantic=True)`` in newer Celery, to dump model
    arguments before serializing; Celery 5.5 has no such step, and the
    ``getattr`` default is then accurate). Runs per message: two attribute reads.
    """
    return bool(task.__v2_compat__) or getattr(task, "_dump_pydantic_arguments", None) is not None


def signature_checker(task: Task) -> Callable[..., Any] | None:  # type: ignore[type-arg]
    """The argument checker Celery puts on a task class (``__header__``), or ``None``.

    ``@app.task`` stores a function with the task's signature there, and
    ``apply_async`` calls it (when ``task.typing``) so that a wrong call fails
    in the caller. The direct path calls it the same way; a task without it is
    simply not checked, as Celery does.
    """
    checker: Callable[..., Any] | None = getattr(task, "__header__", None)
    return checker


def exec_options(task: Task) -> dict[str, Any]:  # type: ignore[type-arg]
    """The task class's calling options (queue, priority, serializer...), as
    ``apply_async`` merges them under the caller's.

    ``Task._get_exec_options()`` is Celery's private per-class cache of them.
    The direct path needs exactly the options Celery would use, and recomputing
    them per message is slower. The returned dict is Celery's cache: never
    mutate it. Runs per message.
    """
    stock: Any = task  # the stubs omit it
    options: dict[str, Any] = stock._get_exec_options()
    return options


def backend_sees_publishes(app: Celery) -> bool:
    """Whether ``app``'s result backend needs to see every publish.

    A backend that overrides the undocumented ``on_task_call(producer, task_id)``
    hook (the ``rpc://`` backend declares its reply queue there) must get each
    message through Celery's own publish. Redis's override only subscribes for
    results, which aceleryctl turns off on publishing threads anyway
    (:func:`prepare_publishing_thread`). Without the hook, no backend needs it.
    """
    backend_type = type(app.backend)
    hook = getattr(backend_type, "on_task_call", None)
    base_hook = getattr(BaseBackend, "on_task_call", None)
    return hook is not base_hook and not issubclass(backend_type, RedisBackend)


def reply_to_oid(app: Celery) -> str:
    """The ``reply_to`` header Celery puts on a message published by this thread.

    ``app.thread_oid`` is an undocumented per-thread property; the direct path
    must put the same value in the message for it to be byte-equal to Celery's.
    Read once per batch.
    """
    oid: str = app.thread_oid
    return oid


def task_message_v2(app: Celery) -> Callable[..., Any]:
    """Celery's builder of protocol-2 task messages, ``app.amqp.as_task_v2``.

    The documented entry point ``app.amqp.create_task_message`` picks it by
    protocol; the direct path only runs on protocol 2 and calls it with keyword
    arguments (``countdown``, ``eta``, ``expires``, ``reply_to``,
    ``time_limit``, ``soft_time_limit``, ``root_id``, ``parent_id``,
    ``ignore_result``, ``origin``, ``argsrepr``, ``kwargsrepr``). It returns
    ``(headers, properties, body, sent_event)``. Returned bound, once per batch,
    so a message costs no extra call.
    """
    build: Callable[..., Any] = app.amqp.as_task_v2
    return build


def static_route(app: Celery, name: str, queue: str | None, task: Any) -> Mapping[str, Any] | None:
    """Route ``name`` (with the caller's ``queue`` option) with Celery's own router,
    or ``None`` when the answer could depend on more than the task name.

    Reads ``Router.routes`` and checks each is a ``MapRoute`` (dict or glob
    routes; ``celery.app.routes`` is an internals-reference module): only then
    can the direct path cache the route per (task, queue). Routed through
    ``Router.route(options, name, args, kwargs, task_type)``.
    """
    router: Any = app.amqp.router
    if not all(isinstance(route, MapRoute) for route in router.routes):
        return None
    routed: Mapping[str, Any] = router.route({"queue": queue} if queue else {}, name, (), {}, task)
    return routed


def seconds_until(when: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``when``, as Celery computes a message's TTL.

    Newer Celery (5.7) has ``celery.utils.time.subtract_datetimes`` (both sides
    made aware, then compared in UTC, which is right across a DST change) and
    uses it in ``send_task``; Celery 5.5 has no such helper and subtracts
    ``maybe_make_aware(when) - now``. The installed Celery's way is used, so the
    TTL matches its stock path.
    """
    if _subtract is not None:
        return float(_subtract(when, now).total_seconds())
    return float((maybe_make_aware(when) - now).total_seconds())


def _find_subtract() -> Callable[[datetime, datetime], Any] | None:
    import celery.utils.time

    found: Callable[[datetime, datetime], Any] | None = getattr(
        celery.utils.time, "subtract_datetimes", None
    )
    return found


_subtract = _find_subtract()


def has_receivers(signal: Any) -> bool:
    """Whether any receiver is connected to a Celery signal.

    ``Signal.receivers`` is an undocumented list Celery itself reads before
    sending ``before_task_publish`` / ``after_task_publish``; reading it avoids
    building a signal's arguments for nobody. Runs per message.
    """
    return bool(signal.receivers)


# -- the publishing thread ----------------------------------------------------------


def freeze_canvas(canvas: Any, task_id: str | None) -> str:
    """Freeze a group, chain or chord, assigning every id; return the canvas's id.

    ``freeze`` takes an id as ``_id``, an underscored parameter: a chain gives
    it to its last task and a chord to its body, as ``apply_async(task_id=...)``
    does; a group keeps the id in its own ``task_id`` option (assigned when
    missing) and ignores ``_id``. The id is recorded before publishing so that
    a deadline passing mid-publish can still name it.
    """
    frozen_id: str = canvas.freeze(_id=task_id).id
    return frozen_id


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
    ``client`` property in the instance ``__dict__``. The backend and the
    consumer's connection are read with defaults: a changed layout leaves the
    connections to the garbage collector.
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


# -- the worker side: the task running, its retry, its failure ------------------------


def current_worker_task() -> Task | None:  # type: ignore[type-arg]
    """The task this worker thread is executing, or ``None`` outside a task.

    ``celery._state.get_current_worker_task`` (a private module) is what
    ``app.current_worker_task`` reads, without needing an app: the retry
    pre-announcement runs in ``before_task_publish``, which hands it no task.
    It returns ``None`` for a task called directly (not by a worker). Were it
    removed, importing this module fails (at once, not per retry). Runs only for
    a message whose ``retries`` header is set.
    """
    task: Task | None = _celery_state.get_current_worker_task()  # type: ignore[type-arg]
    return task


#: The code object of ``Task.retry``, which identifies its frame on a thread's
#: stack (``None`` if ``Task.retry`` were no plain function: then no frame is found
#: and the retry pre-announcement falls back to the exception being handled).
TASK_RETRY_CODE: Final[CodeType | None] = getattr(Task.retry, "__code__", None)


class RetryCall(NamedTuple):
    """What a running ``Task.retry`` call holds, read from its frame's locals.

    Attributes:
        retry: the ``Retry`` it made (local ``ret``), or ``None`` before it is made
            or when that local is not a ``Retry``.
        exc: its ``exc`` argument (the exception being retried), as passed.
        eta: its ``eta`` argument, as passed.
        countdown: its ``countdown`` (argument, or the task's default delay).
    """

    retry: Retry | None
    exc: Any
    eta: Any
    countdown: Any


def retry_call_on_stack(max_frames: int) -> RetryCall | None:
    """The ``Task.retry`` call on this thread's stack, at most ``max_frames`` frames
    above the caller of this function, or ``None`` when there is none.

    The retry pre-announcement runs in ``before_task_publish`` while ``Task.retry``
    publishes the next attempt; Celery hands the signal no ``Retry``, so its frame
    is found (``sys._getframe``, then ``f_back``) by its code object
    (:data:`TASK_RETRY_CODE`) and its locals are read: ``ret`` (the ``Retry``,
    made before ``apply_async``), ``exc``, ``eta`` and ``countdown``. If Celery
    renamed one, that field is ``None`` and the caller falls back to the exception
    being handled (``tests/unit/test_compat.py`` fails first); if the interpreter
    has no ``sys._getframe``, this returns ``None``. Runs once per retry, not per
    publish.
    """
    getframe: Any = getattr(sys, "_getframe", None)
    if getframe is None or TASK_RETRY_CODE is None:
        return None
    frame: Any = getframe(1)
    try:
        for _ in range(max_frames):
            if frame.f_code is TASK_RETRY_CODE:
                found = dict(frame.f_locals)
                made = found.get("ret")
                return RetryCall(
                    made if isinstance(made, Retry) else None,
                    found.get("exc"),
                    found.get("eta"),
                    found.get("countdown"),
                )
            frame = frame.f_back
            if frame is None:
                return None
        return None
    finally:
        del frame


def unpickleable_exception_name(error: object) -> str | None:
    """The class name of the exception behind Celery's wrapper, if ``error`` is one.

    A result backend stores an exception it cannot pickle as
    ``celery.utils.serialization.UnpickleableExceptionWrapper`` (an internals-
    reference module), whose ``exc_cls_name`` names the original class; events
    name that class rather than the wrapper. Without the attribute, events name
    the wrapper's class. Runs once per failure event.
    """
    name = getattr(error, "exc_cls_name", None)
    return name if isinstance(name, str) and name else None


def worker_request_dict(request: object) -> Mapping[str, Any]:
    """The message fields of a worker ``Request`` (``task_received``'s ``request``):
    its ``request_dict``, or an empty mapping.

    ``celery.worker.request.Request`` is documented only in the internals
    reference; ``request_dict`` holds the message's headers (``id``, ``task``,
    ``retries``, custom headers such as the correlation id). Without it, the
    ``task.received`` event falls back to the request's ``id``/``name`` and its
    attempt and correlation id are unknown. Runs once per received message.
    """
    found = getattr(request, "request_dict", None)
    return found if isinstance(found, Mapping) else {}


# -- the worker side: storing progress in a Redis result backend -----------------------

#: The ``RedisBackend`` methods whose behaviour the one-round-trip progress store
#: reproduces (``aceleryctl.worker.progress_store``): a backend class overriding any
#: of them stores differently and goes through ``update_state``. Several are
#: private; were one renamed, the look-up on ``RedisBackend`` fails and every
#: progress report goes through ``update_state`` (``test_compat.py`` fails first).
REDIS_RESULT_STORE_METHODS: Final = (
    "store_result",
    "_store_result",
    "encode_result",
    "prepare_value",
    "_get_result_meta",
    "current_task_children",
    "encode",
    "_encode",
    "get_key_for_task",
    "_get_key_for",
    "_set_with_state",
    "set",
    "_set",
    "_get_task_meta_for",
    "get",
    "decode_result",
)


def result_meta(backend: Any, result: Any, state: str, request: Any) -> dict[str, Any]:
    """The meta a result backend stores for ``result`` in ``state`` (no traceback).

    ``BaseBackend._get_result_meta(result=, state=, traceback=, request=)`` is
    private; it adds the ``result_extended`` fields (name, args, kwargs, worker,
    retries, queue) from the request. The progress store calls it only when
    ``result_extended`` is on, so that what it stores is Celery's. Were it renamed,
    the progress store's eligibility check (:data:`REDIS_RESULT_STORE_METHODS`)
    fails first and every report goes through ``update_state``. Runs per progress
    report with ``result_extended`` on: one call.
    """
    meta: dict[str, Any] = backend._get_result_meta(
        result=result, state=state, traceback=None, request=request
    )
    return meta


def max_stored_value_size(backend: Any) -> int:
    """The largest string value Celery's Redis backend stores
    (``RedisBackend._MAX_STR_VALUE_SIZE``, 512 MiB, Redis's own limit).

    The progress store leaves larger values to ``update_state``, which raises
    Celery's own error for them. Read once per backend. Without the constant,
    Redis's limit (512 MiB) is assumed.
    """
    size = getattr(backend, "_MAX_STR_VALUE_SIZE", _REDIS_MAX_STRING)
    return size if isinstance(size, int) else _REDIS_MAX_STRING


_REDIS_MAX_STRING: Final = 512 * 1024 * 1024
