"""Connecting the worker's receivers to Celery's signals, and the process's
emitter to its channel layer: what :func:`aceleryctl.signals.connect` does.

Imported when a Celery worker starts (see :mod:`aceleryctl.signals`) or when a
project calls ``connect()`` itself; never by ``import aceleryctl``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Final

from celery import signals as celery_signals

from aceleryctl import correlation
from aceleryctl.live import sent
from aceleryctl.worker import execlog, receivers, retry
from aceleryctl.worker.config import reset_worker_config, worker_config
from aceleryctl.worker.emitter import LayerFactory
from aceleryctl.worker.layer import (
    build_emitter,
    set_default_factory,
    set_layer_factory,
    watch_settings,
)

__all__ = ["connect", "disconnect", "is_connected"]

Receivers = tuple[tuple[Any, Callable[..., Any]], ...]

# Connected first, so that the task's correlation id is current for the others.
_CORRELATION: Final[Receivers] = ((celery_signals.task_prerun, correlation.enter_correlation),)
_EVENTS: Final[Receivers] = (
    (celery_signals.before_task_publish, retry.on_before_publish),
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
    (celery_signals.task_prerun, execlog.on_prerun),
    (celery_signals.task_success, execlog.on_success),
    (celery_signals.task_failure, execlog.on_failure),
    (celery_signals.task_retry, execlog.on_retry),
)
# Connected last, so that the id is still current for every other postrun receiver.
_LATE: Final[Receivers] = ((celery_signals.task_postrun, correlation.leave_correlation),)

_lock = threading.Lock()
_state = {"events": False, "logging": False}


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
    """What :func:`aceleryctl.signals.connect` does (its docstring has the arguments):
    connect or disconnect each group of receivers, in order. Idempotent, thread-safe."""
    with _lock:
        reset_worker_config()
        want_events = worker_config().events if events is None else events
        _switch(_LATE, False)
        _switch(_CORRELATION, True)
        _switch(_EVENTS, want_events)
        _switch(_LOGGING, logging)
        _switch(_LATE, True)
        sent.use_publish_signal(want_events)
        _state.update(events=want_events, logging=logging)
        set_layer_factory(layer_factory)
        set_default_factory(build_emitter if want_events else None)
        watch_settings()


def disconnect() -> None:
    """Disconnect every receiver and close this process's emitter (sending what is
    queued for up to a second, on the calling thread). Idempotent."""
    with _lock:
        for group in (_CORRELATION, _EVENTS, _LOGGING, _LATE):
            _switch(group, False)
        sent.use_publish_signal(False)
        _state.update(events=False, logging=False)
        # Forget the caller's layer too: a later web-side emitter (task.sent, built
        # by ensure_default_factory) must publish to Django's layer, not to a layer
        # a disconnected caller once passed in.
        set_layer_factory(None)
        set_default_factory(None)


def is_connected() -> dict[str, bool]:
    """Which receivers are connected: ``{"events": ..., "logging": ...}``."""
    return dict(_state)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
