"""The ``ACELERYCTL`` Django setting, and the default controller built from it.

This is the only module that reads Django settings. Core classes take plain
arguments; here a dict setting becomes those arguments, once, and the default
controller is rebuilt when the setting changes (``override_settings`` in tests).

``settings.ACELERYCTL`` keys (all optional)::

    ACELERYCTL = {
        "CELERY_APP": "proj.celery:app",  # dotted path; default: see resolve_celery_app
        "DISPATCH_TIMEOUT": 2.0,          # seconds, per call
        "MAX_WORKERS": 1,                 # publishing threads
        "MAX_BATCH": 16,                  # publishes sent in one round trip
        "DIRECT_PUBLISH": True,           # plain calls on the direct path (Redis)
        "LOOP_PUBLISH": False,            # coroutines' direct calls written from the loop
        "REPLICA_ACKS": 0,                # Redis replicas that must hold each direct write
        "MAX_PENDING": 10_000,            # calls waiting for a thread, at most
        "DRAIN_TIMEOUT": 5.0,             # seconds to drain on close
        "REDACT_KEYS": [...],             # key substrings masked in failure logs
        "BREAKER": {...},                 # CircuitBreaker arguments, upper-case keys
        # live task events (aceleryctl.signals), read in every process
        "EVENTS_ENABLED": True,           # connect the signal receivers' events
        "PROGRESS_MAX_RATE": 10.0,        # progress events a second per task, at most
        "EVENT_QUEUE_SIZE": 1_000,        # events waiting to be published, per process
        "EVENT_SEND_TIMEOUT": 1.0,        # seconds per channel-layer group_send
        "LOG_FILE": "logs/celery_logs.txt",  # worker ERROR log file; None: no file
        "LOG_EXCEPTION_CHAIN": False,  # failure records: the whole chain of causes
        "METRICS": [],                    # "prometheus", "opentelemetry" (optional extras)
        # the websocket consumer (aceleryctl.consumers), read per connection
        "WEBSOCKET_ALLOWED_ORIGINS": None,  # None: hosts in ALLOWED_HOSTS; or ["https://..."]
        "WEBSOCKET_MAX_FRAME_BYTES": 4096,  # larger client frames close the socket (4413)
        "WEBSOCKET_MAX_SUBSCRIPTIONS": 32,  # tasks one connection follows at once
        "SNAPSHOT_TIMEOUT": 5.0,          # seconds for the result-backend read on subscribe
    }

Two top-level settings switch on optional execution-time log records in workers:
``CELERY_ENABLE_SUCCESS_LOGGING`` and ``CELERY_ENABLE_PRERUN_LOGGING`` (default ``False``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any, cast

from celery import Celery

from aceleryctl._settings import (
    SETTING_NAME,
    ControllerSettings,
    WebsocketSettings,
    breaker_arguments,
    load_settings,
    load_websocket_settings,
    settings_problems,
)
from aceleryctl.breaker import CircuitBreaker
from aceleryctl.compat.celery import active_apps, is_fallback_app
from aceleryctl.dispatch.build import current_celery_app
from aceleryctl.dispatch.controller import AsyncCeleryController

__all__ = [
    "SETTING_NAME",
    "ControllerSettings",
    "WebsocketSettings",
    "default_controller",
    "load_settings",
    "load_websocket_settings",
    "override_default",
    "reset_default_controller",
    "resolve_celery_app",
    "settings_problems",
]


def _import_app(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def resolve_celery_app(conf: ControllerSettings | None = None) -> Celery:
    """The Celery app the default controller publishes with.

    ``ACELERYCTL['CELERY_APP']`` when set. Otherwise the thread's current Celery app,
    unless that is Celery's bare fallback app; then the one project app if exactly
    one exists; otherwise ``ImproperlyConfigured`` naming the setting.

    Raises:
        ImportError, AttributeError: the dotted path does not resolve.
    """
    conf = conf if conf is not None else load_settings()
    if conf.celery_app:
        app: Celery = _import_app(conf.celery_app)
        return app
    return _project_app()


def _project_app() -> Celery:
    # Celery's current app is per thread: on a thread other than the one that
    # created the project's app it is a bare fallback app named "default", whose
    # broker is amqp://localhost. Never publish with that by accident.
    current = current_celery_app()
    if not is_fallback_app(current):
        return current
    candidates = [a for a in active_apps() if not is_fallback_app(a)]
    if len(candidates) == 1:
        return candidates[0]
    from django.core.exceptions import ImproperlyConfigured

    found = ", ".join(sorted(repr(a.main) for a in candidates)) or "none"
    raise ImproperlyConfigured(
        "aceleryctl cannot tell which Celery app to publish with (apps found: "
        f"{found}); set ACELERYCTL['CELERY_APP'] to its dotted path, e.g. 'proj.celery:app'"
    )


def build_controller(conf: ControllerSettings) -> AsyncCeleryController:
    """A new controller configured from ``conf`` (and ``ACELERYCTL["OUTBOX"]``)."""
    from aceleryctl.outbox.config import outbox_settings

    outbox = outbox_settings()
    app = resolve_celery_app(conf)
    breaker = CircuitBreaker(**breaker_arguments(conf.breaker))
    force = conf.breaker.get("FORCE")
    if force == "open":
        breaker.force_open()
    elif force == "closed":
        breaker.force_closed()
    controller = AsyncCeleryController(
        app,
        dispatch_timeout=conf.dispatch_timeout,
        max_workers=conf.max_workers,
        max_batch=conf.max_batch,
        direct_publish=conf.direct_publish,
        loop_publish=conf.loop_publish,
        replica_acks=conf.replica_acks,
        max_pending=conf.max_pending,
        drain_timeout=conf.drain_timeout,
        breaker=breaker,
        redact_keys=conf.redact_keys,
        log_exception_chain=conf.log_exception_chain,
        durable=outbox.enabled and outbox.durable_by_default,
    )
    if conf.metrics:
        from aceleryctl.metrics.install import instrument

        instrument(controller, conf.metrics)
    return controller


_lock = threading.Lock()
_default: AsyncCeleryController | None = None


_override: Any = None


@contextlib.contextmanager
def override_default(replacement: Any) -> Iterator[None]:
    """Make ``replacement`` the default controller inside the block (test helpers).

    The controller built from settings, if any, is left alone and comes back after.
    """
    global _override
    with _lock:
        previous, _override = _override, replacement
    try:
        yield
    finally:
        with _lock:
            _override = previous


def default_controller() -> AsyncCeleryController:
    """The process's default controller, built on first use. Thread-safe."""
    if _override is not None:
        return cast(AsyncCeleryController, _override)
    current = _default
    if current is not None:
        return current
    return _build_default()


def _build_default() -> AsyncCeleryController:
    global _default
    with _lock:
        if _default is None:
            settings = load_settings()
            controller = build_controller(settings)
            if settings.events_enabled:
                # Live task.sent events come off the dispatch listener: a deque
                # append per dispatch on the caller's thread, sent in batches.
                from aceleryctl.live.sent import LiveEventsListener

                controller.add_listener(LiveEventsListener())
            _default = controller
        return _default


def reset_default_controller(*, drain_timeout: float = 0.0) -> None:
    """Forget the default controller; the next use builds a new one from settings.

    The old one is closed on a thread of its own (never blocking the caller),
    draining for at most ``drain_timeout`` seconds.
    """
    global _default
    with _lock:
        old, _default = _default, None
    if old is not None and not old.closed:
        threading.Thread(
            target=old._close_blocking,
            args=(drain_timeout,),
            name="aceleryctl-reset",
            daemon=True,
        ).start()


def close_default_controller(timeout: float | None = None) -> bool:
    """Close the default controller if it was built, blocking up to its drain timeout.

    Called at ASGI lifespan shutdown and at interpreter exit. Returns ``True`` if
    nothing was left running.
    """
    global _default
    with _lock:
        current, _default = _default, None
    if current is None or current.closed:
        return True
    return current._close_blocking(timeout)


atexit.register(close_default_controller)


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting == SETTING_NAME:
        from aceleryctl.outbox.config import reset_outbox_settings

        reset_outbox_settings()
        reset_default_controller()


def connect_signals() -> None:
    """Rebuild the default controller when ``ACELERYCTL`` changes (called by the app config)."""
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="aceleryctl.conf.setting_changed")
