"""Celery signal receivers and the progress helper: the aceleryctl code that runs in workers.

Each receiver turns a Celery signal into a :class:`~aceleryctl.events.TaskEvent`
and hands it to the process's :class:`~aceleryctl._emitter.Emitter`, which
publishes it to the channel-layer group ``aceleryctl.task.<task_id>`` on a
thread of its own; a receiver never raises, and never waits for the network but
in one case: announcing a retry before Celery publishes it, it waits until the
event is sent, at most ``EVENT_SEND_TIMEOUT`` seconds (see :mod:`aceleryctl._receivers`).

=======================  ==================  =======================================
signal                   process             event
=======================  ==================  =======================================
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
(:mod:`aceleryctl._worker_logging`) and keep the task's correlation id current
while it runs (:mod:`aceleryctl.correlation`).

With Django, the ``aceleryctl`` app connects everything when it is ready, in web
processes and workers alike (``ACELERYCTL["EVENTS_ENABLED"] = False`` keeps the
logging and drops the events). Without Django, connect them in the module that
creates the Celery app, so that the worker and its pool children import it::

    from channels_redis.core import RedisChannelLayer
    from aceleryctl import signals

    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:6379/3"])
    signals.connect(layer_factory=lambda: layer)

``connect`` and ``disconnect`` are idempotent.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from celery import signals as celery_signals

from aceleryctl import _receivers as receivers
from aceleryctl import _worker_logging as worker_logging
from aceleryctl._emitter import Emitter, LayerFactory, reset_default_emitter, set_default_factory
from aceleryctl._progress import process_gate
from aceleryctl._progress_store import start_progress_write
from aceleryctl._worker_config import once, reset_worker_config, worker_config
from aceleryctl.events import Progress, TaskEvent, clip_text

__all__ = ["connect", "disconnect", "is_connected", "report_progress"]


def report_progress(
    task: Any, current: float, total: float | None = None, message: str | None = None
) -> None:
    """Report the progress of the running task ``task`` (the bound task, ``self``).

    Sets the Celery state to ``PROGRESS`` with meta ``{"current", "total",
    "message"}``, storing exactly what ``task.update_state`` stores, and publishes a
    ``task.progress`` event. On Celery's Redis result backend (json, uncompressed)
    the store is one round trip (:mod:`aceleryctl._progress_store`) instead of
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
    request = task.request
    task_id = request.id
    if not task_id or request.called_directly:
        return
    if message is not None and not isinstance(message, str):
        raise ValueError(f"message must be a string or None, got {type(message).__name__}")
    progress = Progress(current, total, None if message is None else clip_text(message))
    gate = process_gate(worker_config().progress_interval)
    attempt = receivers.attempt_number(request.retries)
    seq, send_now = gate.admit(task_id, attempt, time.monotonic())
    write = None
    if send_now:  # sent now, its reply read once the event is built
        meta = {"current": progress.current, "total": progress.total, "message": progress.message}
        write = start_progress_write(task, task_id, meta)
    emitter = receivers.emitter()
    event = None
    try:
        if emitter is not None:
            event = receivers.build_event(
                "task.progress",
                task_id,
                getattr(task, "name", None),
                attempt,
                seq,
                progress=progress,
                correlation_id=receivers.task_correlation(request),
            )
    finally:
        if send_now and (write is None or not write.wait()):
            _store_progress(task, task_id, progress)  # Celery's update_state
    if send_now:
        if emitter is not None and event is not None:
            emitter.emit(event)  # after the store: the emitter thread wakes up now
    elif emitter is not None and event is not None:
        due = gate.hold(event)
        if due is not None:
            emitter.schedule(due, _progress_timer(emitter, task_id, attempt))


def _progress_timer(emitter: Emitter, task_id: str, attempt: int) -> Callable[[], TaskEvent | None]:
    """The callback the emitter thread runs when a held report is due."""

    def fire() -> TaskEvent | None:
        gate = process_gate(worker_config().progress_interval)
        event, retry_at = gate.due(task_id, attempt, time.monotonic())
        if retry_at is not None:
            emitter.schedule(retry_at, fire)
        return event

    return fire


def _store_progress(task: Any, task_id: str, progress: Progress) -> None:
    try:
        task.update_state(
            task_id=task_id,
            state="PROGRESS",
            meta={
                "current": progress.current,
                "total": progress.total,
                "message": progress.message,
            },
        )
    except Exception as exc:
        once("update_state", "aceleryctl could not store a task's progress: %s", exc)


# -- connecting -------------------------------------------------------------------------------

Receivers = tuple[tuple[Any, Callable[..., Any]], ...]

# Connected first, so that the task's correlation id is current for the others.
_CORRELATION: Final[Receivers] = ((celery_signals.task_prerun, receivers.enter_correlation),)
_EVENTS: Final[Receivers] = (
    (celery_signals.before_task_publish, receivers.on_before_publish),
    (celery_signals.after_task_publish, receivers.on_published),
    (celery_signals.task_received, receivers.on_received),
    (celery_signals.task_prerun, receivers.on_prerun),
    (celery_signals.task_success, receivers.on_success),
    (celery_signals.task_failure, receivers.on_failure),
    (celery_signals.task_retry, receivers.on_retry),
    (celery_signals.task_revoked, receivers.on_revoked),
    (celery_signals.task_rejected, receivers.on_rejected),
    (celery_signals.task_unknown, receivers.on_unknown),
    (celery_signals.task_postrun, receivers.on_postrun),
    (celery_signals.worker_process_shutdown, receivers.on_process_shutdown),
)
_LOGGING: Final[Receivers] = (
    (celery_signals.task_prerun, worker_logging.on_prerun),
    (celery_signals.task_success, worker_logging.on_success),
    (celery_signals.task_failure, worker_logging.on_failure),
    (celery_signals.task_retry, worker_logging.on_retry),
)
# Connected last, so that the id is still current for every other postrun receiver.
_LATE: Final[Receivers] = ((celery_signals.task_postrun, receivers.leave_correlation),)

_lock = threading.Lock()
_state = {"events": False, "logging": False}
_layer_factory: LayerFactory | None = None


def _uid(receiver: Callable[..., Any], signal: Any) -> str:
    return f"aceleryctl.signals.{receiver.__module__}.{receiver.__name__}.{signal.name}"


def _switch(group: Receivers, on: bool) -> None:
    for signal, receiver in group:
        if on:
            signal.connect(receiver, weak=False, dispatch_uid=_uid(receiver, signal))
        else:
            signal.disconnect(receiver, dispatch_uid=_uid(receiver, signal))


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
    global _layer_factory
    with _lock:
        reset_worker_config()
        want_events = worker_config().events if events is None else events
        _layer_factory = layer_factory
        _switch(_LATE, False)
        _switch(_CORRELATION, True)
        _switch(_EVENTS, want_events)
        _switch(_LOGGING, logging)
        _switch(_LATE, True)
        _state.update(events=want_events, logging=logging)
        set_default_factory(_build_emitter if want_events else None)
        _watch_settings()


def disconnect() -> None:
    """Disconnect every receiver and close this process's emitter (sending what is
    queued for up to a second, on the calling thread). Idempotent."""
    with _lock:
        for group in (_CORRELATION, _EVENTS, _LOGGING, _LATE):
            _switch(group, False)
        _state.update(events=False, logging=False)
        set_default_factory(None)


def is_connected() -> dict[str, bool]:
    """Which receivers are connected: ``{"events": ..., "logging": ...}``."""
    return dict(_state)


def _build_emitter() -> Emitter | None:
    config = worker_config()
    if not config.events:
        return None
    factory = _layer_factory
    if factory is None:
        if not _django_layer_configured():
            return None
        factory = _django_layer
    return Emitter(factory, max_queue=config.queue_size, send_timeout=config.send_timeout)


def _django_layer_configured() -> bool:
    try:
        from channels.layers import DEFAULT_CHANNEL_LAYER
        from django.conf import settings

        return bool(
            settings.configured
            and DEFAULT_CHANNEL_LAYER in (getattr(settings, "CHANNEL_LAYERS", None) or {})
        )
    except Exception:
        return False


def _django_layer() -> Any:
    """Django's default channel layer (emitter thread). ``InMemoryChannelLayer`` is
    refused: its asyncio queues belong to the web process's event loop and cannot
    be fed from another thread's loop, nor reached from a worker process."""
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    layer = get_channel_layer()
    if isinstance(layer, InMemoryChannelLayer):
        once(
            "in_memory_layer",
            "aceleryctl does not publish task events to InMemoryChannelLayer (it cannot "
            "carry them between threads or processes); use channels_redis",
        )
        return None
    return layer


_WATCHED: Final = frozenset(
    {
        "ACELERYCTL",
        "CHANNEL_LAYERS",
        "CELERY_ENABLE_SUCCESS_LOGGING",
        "CELERY_ENABLE_PRERUN_LOGGING",
    }
)


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting in _WATCHED:
        reset_worker_config()
        if setting in {"ACELERYCTL", "CHANNEL_LAYERS"}:
            reset_default_emitter(timeout=1.0)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch_settings() -> None:
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="aceleryctl.signals.settings")
