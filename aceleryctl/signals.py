"""Celery signal receivers and the progress helper: the aceleryctl code that runs in workers.

Each receiver turns a Celery signal into a :class:`~aceleryctl.events.TaskEvent`
and hands it to the process's :class:`~aceleryctl._emitter.Emitter`, which
publishes it to the channel-layer group ``aceleryctl.task.<task_id>`` on a
thread of its own; a receiver never raises, and never waits for the network but
in one case: announcing a retry before Celery publishes it, it waits until the
event is sent, at most ``EVENT_SEND_TIMEOUT`` seconds (see :mod:`aceleryctl.worker.retry`).

=======================  ==================  =======================================
signal                   process             event
=======================  ==================  =======================================
(dispatch listener)      the web process     ``task.sent`` (see :mod:`aceleryctl.live.sent`)
``after_task_publish``   the publisher       ``task.sent`` (first publish only)
``task_received``        worker main         ``task.received``
``task_prerun``          the task's thread   ``task.started``
(``report_progress``)    the task's thread   ``task.progress``
``before_task_publish``  the task's thread   ``task.retried`` (publishing its retry)
``task_retry``           the task's thread   ``task.retried`` (if not yet sent)
``task_success``         the task's thread   ``task.succeeded``
``task_failure``         the task's thread*  ``task.failed``
``task_revoked``         worker main*        ``task.revoked``
``task_rejected``        worker main         ``task.rejected``
``task_unknown``         worker main         ``task.rejected`` (``NotRegistered``)
=======================  ==================  =======================================

(*) a hard time limit fails the task, and a terminating revoke revokes it, from the
worker's main process. The same receivers write the execution-time log records
(:mod:`aceleryctl.worker.execlog`) and keep the task's correlation id current
while it runs (:mod:`aceleryctl.correlation`).

This module is the public face only: the receivers live in
:mod:`aceleryctl.worker` and are imported when a worker starts, never by
``import aceleryctl`` in a web process. With Django, the ``aceleryctl`` app's
``ready()`` connects one small hook to Celery's ``celeryd_init``, ``worker_init``
and ``worker_process_init`` signals; the first of them to fire in a worker
process calls :func:`connect` (unless the project already did), before the worker
consumes its first task, whatever its pool (``ACELERYCTL["EVENTS_ENABLED"] =
False`` keeps the logging and drops the events). In the worker's main process the
same hook installs the run-once guard when ``ACELERYCTL["RUN_ONCE"]`` turns it on
(:mod:`aceleryctl.worker.guard_step`; see "Running each task once" in the docs).
Without Django, connect them in the module that creates the Celery app, so that
the worker and its pool children import it::

    from channels_redis.core import RedisChannelLayer
    from aceleryctl import signals

    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:6379/3"])
    signals.connect(layer_factory=lambda: layer)

``connect`` and ``disconnect`` are idempotent.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery import signals as celery_signals

if TYPE_CHECKING:
    from aceleryctl.worker.emitter import LayerFactory

__all__ = ["connect", "disconnect", "is_connected", "report_progress"]


def report_progress(
    task: Any, current: float, total: float | None = None, message: str | None = None
) -> None:
    """Report the progress of the running task ``task`` (the bound task, ``self``).

    Sets the Celery state to ``PROGRESS`` with meta ``{"current", "total",
    "message"}``, storing exactly what ``task.update_state`` stores, and publishes a
    ``task.progress`` event. On Celery's Redis result backend (json, uncompressed)
    the store is one round trip (:mod:`aceleryctl.worker.progress_store`) instead of
    ``update_state``'s two, and it never replaces a terminal state (``SUCCESS``,
    ``FAILURE``, ``REVOKED``); any other backend goes through ``update_state``.

    Reports are throttled per task to ``ACELERYCTL["PROGRESS_MAX_RATE"]`` a second
    (default 10). A report within the interval is held, replacing an older held
    one, and is published when the interval has passed or when the task ends, so
    the last report always reaches the browser. The result backend is written
    only for the reports that go out at once; its state catches up with the next
    such report or with the task's outcome.

    Runs on the task's thread, which is where the backend write happens, so it is
    stored before the task's outcome is. A report that goes out at once costs one
    result-backend round trip (bounded by the backend's socket timeouts; the event
    is built while Redis answers) plus some tens of microseconds; a held one only a
    few microseconds. It never waits for the channel layer, and a failing backend
    write is logged once and ignored. Called outside a worker (the task function
    called directly), it does nothing.

    Args:
        current: work done so far, in the task's own unit.
        total: work in all, in the same unit, or ``None`` when unknown.
        message: a short status line; clipped to 500 characters.

    Raises:
        ValueError: ``current`` or ``total`` is not a finite number, or ``message``
            is not a string.
    """
    from aceleryctl.worker.progress import report_progress as implementation

    implementation(task, current, total, message)


def connect(
    *,
    events: bool | None = None,
    logging: bool = True,
    layer_factory: LayerFactory | None = None,
) -> None:
    """Connect aceleryctl's receivers to Celery's signals. Idempotent, thread-safe;
    call it again to change what is connected.

    Args:
        events: publish task events; default ``ACELERYCTL["EVENTS_ENABLED"]``
            (``True``). Events need a channel layer: ``layer_factory``, else
            Django's ``CHANNEL_LAYERS["default"]`` when configured. Without either,
            no event is even built.
        logging: write the execution-time log records (failure and retry; success
            and prerun when their settings are on).
        layer_factory: returns the channel layer to publish with. It is called on
            the emitter's thread, inside the event loop that alone uses the layer.

    The receivers that keep a task's correlation id current are always connected.
    """
    from aceleryctl.worker import connection

    connection.connect(events=events, logging=logging, layer_factory=layer_factory)


def disconnect() -> None:
    """Disconnect every receiver and close this process's emitter (sending what is
    queued for up to a second, on the calling thread). Idempotent; does nothing
    (and imports nothing) when nothing was connected."""
    connection = sys.modules.get("aceleryctl.worker.connection")
    if connection is not None:
        connection.disconnect()


def is_connected() -> dict[str, bool]:
    """Which receivers are connected: ``{"events": ..., "logging": ...}``."""
    connection = sys.modules.get("aceleryctl.worker.connection")
    if connection is None:
        return {"events": False, "logging": False}
    state: dict[str, bool] = connection.is_connected()
    return state


# -- loading the worker side when a worker starts -----------------------------------------------

#: Celery's signals sent as a worker process starts, before it consumes a task: in
#: the main process (``celeryd_init`` by ``celery worker``, ``worker_init`` by every
#: ``WorkController``) and in each prefork child (``worker_process_init``).
_WORKER_START = (
    (celery_signals.celeryd_init, "celeryd_init"),
    (celery_signals.worker_init, "worker_init"),
    (celery_signals.worker_process_init, "worker_process_init"),
)


def _on_worker_start(sender: Any = None, **named: Any) -> None:
    """A worker is starting in this process: connect the receivers, unless
    :func:`connect` was called already (it may have been given a layer factory),
    and, in the main process (``celeryd_init``, ``worker_init``: the app is known and
    the consumer not built yet), install the run-once guard when it is on
    (:func:`aceleryctl.worker.guard_step.install`). Runs on the worker's main
    thread; logs and swallows what fails (a worker without live events or the guard
    still runs its tasks)."""
    from aceleryctl._once import internal

    if not any(is_connected().values()):
        try:
            connect()
        except Exception:
            internal.exception("worker_start", "aceleryctl could not connect its worker receivers")
    app = getattr(named.get("instance"), "app", None) or getattr(sender, "app", None)
    if isinstance(app, Celery):
        try:
            from aceleryctl.worker import guard_step

            guard_step.install(app)
        except Exception:
            internal.exception("run_once", "aceleryctl could not install its run-once guard")


def connect_when_worker_starts() -> None:
    """Connect :func:`_on_worker_start` to the worker start signals (idempotent).
    Called by the Django app's ``ready()``; imports nothing of the worker side."""
    for signal, name in _WORKER_START:
        signal.connect(
            _on_worker_start, weak=False, dispatch_uid=f"aceleryctl.signals.start.{name}"
        )
