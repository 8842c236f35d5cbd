"""Celery internals aceleryctl relies on, each behind one function or constant.

Every name here stands for something Celery does not promise to keep: an
underscored attribute, a module or class documented only in Celery's internals
reference, a hook replaced on an instance, or a helper that older supported
versions lack. Each docstring says what the internal is, why aceleryctl needs
it, and what happens when it is missing. ``tests/unit/test_compat.py`` checks
the shape of each one.

The worker side's are in :mod:`aceleryctl.compat.celery_worker`.

Functions on the direct path's per-message route are plain functions doing the
same attribute reads the call sites did, so moving them here costs one call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from celery import Celery, Task, current_app
from celery import _state as _celery_state
from celery.app.routes import MapRoute
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.canvas import _chain, chord, group
from celery.local import Proxy
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_make_aware

__all__ = [
    "CANVAS_TYPES",
    "TASK_PROXY_TYPE",
    "active_apps",
    "anon_nodename",
    "backend_sees_publishes",
    "crontab_spec",
    "current_app_object",
    "current_worker_task_of",
    "exec_options",
    "freeze_canvas",
    "has_publish_quirks",
    "has_receivers",
    "is_fallback_app",
    "prepare_publishing_thread",
    "release_thread_backend",
    "reply_to_oid",
    "routing_keeps_none",
    "saferepr",
    "seconds_until",
    "signature_checker",
    "static_route",
    "task_message_v2",
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


def _task_stacks() -> dict[Any, Any] | None:
    # celery._state._task_stack is a LocalStack over celery.utils.threads.Local,
    # whose ``__storage__`` dict holds an entry per thread (or greenlet) with a
    # task on its stack, and none once that stack is empty again.
    state: Any = _celery_state
    storage = getattr(getattr(state._task_stack, "_local", None), "__storage__", None)
    return storage if isinstance(storage, dict) else None


_TASK_STACKS: Final = _task_stacks()


def current_worker_task_of(app: Celery) -> Any:
    """``app.current_worker_task``: the task a worker runs on this thread, or ``None``.

    That property walks this thread's task stack through Celery's ``Local``, which
    raises and catches two exceptions when the thread has none (1 to 3 µs, on every
    dispatch of a web process). When no thread of the process has a task on its
    stack (``_task_stack._local.__storage__`` is empty: a web process, always),
    there is no worker task on this one either, and ``None`` is returned at once.
    Were the storage laid out otherwise (``CELERY_FAST_LOCALS``' thread-local
    stack, a later Celery), the property is read every time. Any thread.
    """
    stacks = _TASK_STACKS
    if stacks is not None and not stacks:
        return None
    return app.current_worker_task


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
    mutate it. Its identity is stable (the direct path's templates are keyed by
    it; were it made anew per call, every call would be built in full and learn a
    template again). Runs per message.
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


def routing_keeps_none(app: Celery, name: str, queue: str | None, task: Any) -> bool:
    """Whether Celery's router hands a ``None`` calling option on for ``name`` routed
    with the caller's ``queue`` (for routes :func:`static_route` accepts).

    ``Router.route`` merges the default queue, or a matched route, with ``lpmerge``,
    which drops options whose value is ``None``; with an explicit queue and no
    matching route it merges nothing, and ``priority=None`` reaches kombu's
    ``Producer.publish`` (no priority property) instead of its default, 0. The AMQP
    direct path reproduces that (RabbitMQ stores the property; Redis ignores the
    difference). Asked once per (task, queue).
    """
    router: Any = app.amqp.router
    options: dict[str, Any] = {"priority": None}
    if queue:
        options["queue"] = queue
    routed: Mapping[str, Any] = router.route(options, name, (), {}, task)
    return "priority" in routed


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


def all_receivers(signal: Any, marked: Callable[[Any], bool]) -> bool:
    """Whether ``marked(receiver)`` holds for every receiver connected to a Celery
    signal (true when none is): see :func:`has_receivers` and :func:`live_receivers`.
    Cheap with no receiver. Runs per message."""
    if not signal.receivers:
        return True
    return all(marked(receiver) for receiver in live_receivers(signal))


def live_receivers(signal: Any) -> list[Any]:
    """Every receiver connected to a Celery signal, for any sender, weak references
    resolved (dead ones left out).

    ``Signal.receivers`` is an undocumented list of ``((receiver key, sender key),
    receiver or weak reference)``. The loop path reads it per call to make sure no
    receiver it does not know may run on the event loop; were its shape to change,
    an entry that is not such a pair is returned as is, which no receiver marked
    loop-safe equals (the call takes the publishing threads).
    """
    found = []
    for entry in signal.receivers:
        receiver = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry
        if isinstance(receiver, weakref.ReferenceType):
            receiver = receiver()
            if receiver is None:
                continue
        found.append(receiver)
    return found


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


def crontab_spec(schedule: Any) -> tuple[str, str, str, str, str]:
    """The five fields of a ``celery.schedules.crontab`` as written (``"*/15"``, not
    the expanded set), in crontab(5) order: minute, hour, day of month, month, day of
    week. For messages that name a schedule the way its author wrote it.

    Internal: the ``_orig_*`` attributes the crontab's ``repr`` prints (Celery 5.x).
    """
    return (
        str(schedule._orig_minute),
        str(schedule._orig_hour),
        str(schedule._orig_day_of_month),
        str(schedule._orig_month_of_year),
        str(schedule._orig_day_of_week),
    )
