"""The ``ACELERYCTL`` Django setting, and the default controller built from it.

This is the only module that reads Django settings. Core classes take plain
arguments; here a dict setting becomes those arguments, once, and the default
controller is rebuilt when the setting changes (``override_settings`` in tests).

``settings.ACELERYCTL`` keys (all optional)::

    ACELERYCTL = {
        "CELERY_APP": "proj.celery:app",  # dotted path; default: Celery's current app
        "DISPATCH_TIMEOUT": 2.0,          # seconds, per call
        "MAX_WORKERS": 1,                 # publishing threads
        "MAX_BATCH": 8,                   # publishes sent in one pipelined round trip
        "MAX_PENDING": 10_000,            # calls waiting for a thread, at most
        "DRAIN_TIMEOUT": 5.0,             # seconds to drain on close
        "REDACT_KEYS": [...],             # key substrings masked in failure logs
        "BREAKER": {...},                 # CircuitBreaker arguments, upper-case keys
    }
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from celery import Celery

from aceleryctl._calls import current_celery_app
from aceleryctl._controller import AsyncCeleryController
from aceleryctl._logging import DEFAULT_REDACT_KEYS
from aceleryctl.breaker import CircuitBreaker

__all__ = [
    "SETTING_NAME",
    "ControllerSettings",
    "default_controller",
    "load_settings",
    "override_default",
    "reset_default_controller",
    "resolve_celery_app",
    "settings_problems",
]

SETTING_NAME = "ACELERYCTL"

_BREAKER_KEYS: dict[str, type | tuple[type, ...]] = {
    "FAILURE_THRESHOLD": int,
    "FAILURE_RATE_THRESHOLD": (int, float),
    "SLOW_CALL_AFTER": (int, float),
    "SLOW_CALL_RATE_THRESHOLD": (int, float),
    "MINIMUM_CALLS": int,
    "WINDOW_DURATION": (int, float),
    "RESET_TIMEOUT": (int, float),
    "MAX_RESET_TIMEOUT": (int, float),
    "BACKOFF_FACTOR": (int, float),
    "HALF_OPEN_MAX_CALLS": int,
}


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """The validated ``ACELERYCTL`` setting. Durations in seconds."""

    celery_app: str | None = None
    dispatch_timeout: float = 2.0
    max_workers: int = 1
    max_batch: int = 8
    max_pending: int = 10_000
    drain_timeout: float = 5.0
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    breaker: Mapping[str, Any] = field(default_factory=dict)


def _positive_number(key: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"ACELERYCTL[{key!r}] must be a number of seconds, got {type(value).__name__}"
    if not math.isfinite(value) or value <= 0:
        return f"ACELERYCTL[{key!r}] must be a finite number of seconds > 0, got {value!r}"
    return None


def _positive_int(key: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"ACELERYCTL[{key!r}] must be a whole number >= 1, got {value!r}"
    return None


def settings_problems(raw: object) -> list[str]:
    """Every problem with a raw ``ACELERYCTL`` value, each naming the key to change."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [f"ACELERYCTL must be a dict, got {type(raw).__name__}"]
    problems: list[str] = []
    known = {
        "CELERY_APP",
        "DISPATCH_TIMEOUT",
        "MAX_WORKERS",
        "MAX_BATCH",
        "MAX_PENDING",
        "DRAIN_TIMEOUT",
        "REDACT_KEYS",
        "BREAKER",
    }
    for key in raw:
        if key not in known:
            problems.append(
                f"ACELERYCTL has an unknown key {key!r}; the keys are {', '.join(sorted(known))}"
            )
    for key in ("DISPATCH_TIMEOUT", "DRAIN_TIMEOUT"):
        if key in raw and (p := _positive_number(key, raw[key])):
            problems.append(p)
    for key in ("MAX_WORKERS", "MAX_BATCH", "MAX_PENDING"):
        if key in raw and (p := _positive_int(key, raw[key])):
            problems.append(p)
    app = raw.get("CELERY_APP")
    if app is not None and (not isinstance(app, str) or not app.strip()):
        problems.append(
            f"ACELERYCTL['CELERY_APP'] must be a dotted path such as 'proj.celery:app', got {app!r}"
        )
    keys = raw.get("REDACT_KEYS", ())
    if (
        isinstance(keys, str)
        or not isinstance(keys, list | tuple | set | frozenset)
        or not all(isinstance(k, str) and k for k in keys)
    ):
        problems.append("ACELERYCTL['REDACT_KEYS'] must be a list of non-empty strings")
    breaker = raw.get("BREAKER", {})
    if not isinstance(breaker, Mapping):
        problems.append(f"ACELERYCTL['BREAKER'] must be a dict, got {type(breaker).__name__}")
    else:
        for key, value in breaker.items():
            expected = _BREAKER_KEYS.get(key)
            if expected is None:
                problems.append(
                    f"ACELERYCTL['BREAKER'] has an unknown key {key!r}; "
                    f"the keys are {', '.join(sorted(_BREAKER_KEYS))}"
                )
            elif isinstance(value, bool) or not isinstance(value, expected):
                problems.append(f"ACELERYCTL['BREAKER'][{key!r}] has the wrong type: {value!r}")
        if not any("BREAKER" in p for p in problems):
            try:
                CircuitBreaker(**{k.lower(): v for k, v in breaker.items()})
            except ValueError as exc:
                problems.append(f"ACELERYCTL['BREAKER']: {exc}")
    return problems


def load_settings() -> ControllerSettings:
    """Read and validate ``settings.ACELERYCTL`` (defaults when Django is not configured).

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid; the
            message names every key to change.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    raw = getattr(settings, SETTING_NAME, None) if settings.configured else None
    problems = settings_problems(raw)
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    raw = dict(raw or {})
    defaults = ControllerSettings()
    return ControllerSettings(
        celery_app=raw.get("CELERY_APP"),
        dispatch_timeout=float(raw.get("DISPATCH_TIMEOUT", defaults.dispatch_timeout)),
        max_workers=int(raw.get("MAX_WORKERS", defaults.max_workers)),
        max_batch=int(raw.get("MAX_BATCH", defaults.max_batch)),
        max_pending=int(raw.get("MAX_PENDING", defaults.max_pending)),
        drain_timeout=float(raw.get("DRAIN_TIMEOUT", defaults.drain_timeout)),
        redact_keys=tuple(raw.get("REDACT_KEYS", defaults.redact_keys)),
        breaker=dict(raw.get("BREAKER", {})),
    )


def _import_app(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def resolve_celery_app(conf: ControllerSettings | None = None) -> Celery:
    """The Celery app the default controller publishes with.

    ``ACELERYCTL['CELERY_APP']`` when set, else Celery's current app.

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
    from celery import _state

    current = current_celery_app()
    if not _is_fallback(current):
        return current
    active: list[Celery] = list(getattr(_state, "_get_active_apps")())  # noqa: B009
    candidates = [a for a in active if not _is_fallback(a)]
    if len(candidates) == 1:
        return candidates[0]
    from django.core.exceptions import ImproperlyConfigured

    found = ", ".join(sorted(repr(a.main) for a in candidates)) or "none"
    raise ImproperlyConfigured(
        "aceleryctl cannot tell which Celery app to publish with (apps found: "
        f"{found}); set ACELERYCTL['CELERY_APP'] to its dotted path, e.g. 'proj.celery:app'"
    )


def _is_fallback(app: Celery) -> bool:
    from celery import _state

    return app is getattr(_state, "default_app", None) and app.main == "default"


def build_controller(conf: ControllerSettings) -> AsyncCeleryController:
    """A new controller configured from ``conf``."""
    app = resolve_celery_app(conf)
    breaker = CircuitBreaker(**{k.lower(): v for k, v in conf.breaker.items()})
    return AsyncCeleryController(
        app,
        dispatch_timeout=conf.dispatch_timeout,
        max_workers=conf.max_workers,
        max_batch=conf.max_batch,
        max_pending=conf.max_pending,
        drain_timeout=conf.drain_timeout,
        breaker=breaker,
        redact_keys=conf.redact_keys,
    )


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
            _default = build_controller(load_settings())
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
        reset_default_controller()


def connect_signals() -> None:
    """Rebuild the default controller when ``ACELERYCTL`` changes (called by the app config)."""
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="aceleryctl.conf.setting_changed")
