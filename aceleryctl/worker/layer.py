"""The process's default emitter and the channel layer it publishes to.

One emitter per process (worker or web), built on first use by the factory
:func:`aceleryctl.signals.connect` sets (workers), or by
:func:`ensure_default_factory` (the web side's ``task.sent``). Thread-safe; a
forked child rebuilds its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Final

from aceleryctl._once import once
from aceleryctl.worker.config import reset_worker_config, worker_config
from aceleryctl.worker.emitter import Emitter, LayerFactory

__all__ = [
    "build_emitter",
    "default_emitter",
    "ensure_default_factory",
    "reset_default_emitter",
    "set_default_factory",
    "set_layer_factory",
    "watch_settings",
]

_layer_factory: LayerFactory | None = None


def set_layer_factory(factory: LayerFactory | None) -> None:
    """Publish with ``factory``'s layer (``None``: Django's default channel layer)."""
    global _layer_factory
    _layer_factory = factory


def build_emitter() -> Emitter | None:
    """A new emitter for this process from the settings and the layer factory;
    ``None`` when events are off or there is no channel layer."""
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


_default_lock = threading.Lock()
_default: Emitter | None = None
_default_resolved = False
_default_factory: Callable[[], Emitter | None] | None = None


def set_default_factory(factory: Callable[[], Emitter | None] | None) -> None:
    """Set what builds the process's default emitter (``None`` from the factory:
    events are off) and forget the current one. Called by
    :func:`aceleryctl.signals.connect`."""
    global _default_factory
    with _default_lock:
        _default_factory = factory
    reset_default_emitter()


def default_emitter() -> Emitter | None:
    """The process's default emitter, built on first use; ``None`` when events are
    off (no factory, or the factory found no channel layer). Thread-safe, and
    cheap after the first call."""
    global _default, _default_resolved
    if _default_resolved:
        return _default
    with _default_lock:
        if not _default_resolved:
            factory = _default_factory
            _default = factory() if factory is not None else None
            _default_resolved = True
        return _default


def reset_default_emitter(timeout: float = 1.0) -> None:
    """Close the default emitter (sending what is queued for up to ``timeout``
    seconds, on the calling thread) and build a new one on next use."""
    global _default, _default_resolved
    with _default_lock:
        old, _default, _default_resolved = _default, None, False
    if old is not None:
        old.close(timeout)


def _at_exit() -> None:
    emitter = _default
    if emitter is not None and emitter._pid == os.getpid() and not emitter.closed:
        emitter.close(2.0)


def ensure_default_factory() -> bool:
    """Make sure the process has an emitter factory (the web side, where
    ``connect()`` is not called); ``True`` when events are on in the settings.
    Cheap after the first call; thread-safe."""
    if not worker_config().events:
        return False
    global _default_factory, _default, _default_resolved
    if _default_factory is None:
        with _default_lock:
            if _default_factory is None:  # then any emitter resolved so far is None
                _default_factory, _default, _default_resolved = build_emitter, None, False
        with contextlib.suppress(Exception):  # no Django: nothing to watch
            watch_settings()
    return True


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)


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


def watch_settings() -> None:
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="aceleryctl.signals.settings")
