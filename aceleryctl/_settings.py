"""Reading and validating the ``ACELERYCTL`` Django setting (every key and its rules).

:func:`settings_problems` lists what is wrong, in messages that name the key to
change (the system checks show them); :func:`load_settings` and
:func:`load_websocket_settings` return the validated values as frozen dataclasses.
:mod:`aceleryctl.conf` builds the default controller from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aceleryctl._logging import DEFAULT_REDACT_KEYS
from aceleryctl._run_once_settings import run_once_problems
from aceleryctl.breaker import CircuitBreaker
from aceleryctl.dispatch.build import check_timeout
from aceleryctl.outbox.config import outbox_problems

__all__ = [
    "SETTING_NAME",
    "ControllerSettings",
    "WebsocketSettings",
    "breaker_arguments",
    "load_settings",
    "load_websocket_settings",
    "settings_problems",
]

SETTING_NAME = "ACELERYCTL"

#: ``ACELERYCTL["BREAKER"]["FORCE"]``: pin the breaker in a state from start-up.
FORCE_STATES = ("open", "closed")

_BREAKER_KEYS: dict[str, type | tuple[type, ...]] = {
    "FORCE": (str, type(None)),
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
    max_batch: int = 16
    direct_publish: bool = True
    loop_publish: bool = False
    replica_acks: int = 0
    max_pending: int = 10_000
    drain_timeout: float = 5.0
    redact_keys: tuple[str, ...] = DEFAULT_REDACT_KEYS
    breaker: Mapping[str, Any] = field(default_factory=dict)
    events_enabled: bool = True
    progress_max_rate: float = 10.0
    event_queue_size: int = 1_000
    event_send_timeout: float = 1.0
    log_file: str | None = "logs/celery_logs.txt"
    log_exception_chain: bool = False
    metrics: tuple[str, ...] = ()
    success_logging: bool = False
    prerun_logging: bool = False


def _positive_number(key: str, value: object) -> str | None:
    try:
        check_timeout(value, name=f"ACELERYCTL[{key!r}]")
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _positive_int(key: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"ACELERYCTL[{key!r}] must be a whole number >= 1, got {value!r}"
    return None


#: Keys read by the websocket consumer (:func:`load_websocket_settings`).
_WEBSOCKET_KEYS = (
    "WEBSOCKET_ALLOWED_ORIGINS",
    "WEBSOCKET_MAX_FRAME_BYTES",
    "WEBSOCKET_MAX_SUBSCRIPTIONS",
    "SNAPSHOT_TIMEOUT",
)


@dataclass(frozen=True, slots=True)
class WebsocketSettings:
    """What the websocket consumer reads from settings, validated.

    Attributes:
        allowed_origins: ``ACELERYCTL['WEBSOCKET_ALLOWED_ORIGINS']``: exact origins
            (``"https://app.example.com"``) or ``"*"``; ``None`` accepts any origin
            whose host is allowed by ``allowed_hosts``.
        allowed_hosts: Django's ``ALLOWED_HOSTS`` (with Django's own fallback to the
            localhost names when ``DEBUG`` is on and it is empty).
        max_frame_bytes: largest client frame, in bytes of UTF-8.
        max_subscriptions: tasks one connection may follow at once.
        snapshot_timeout: seconds to wait for the result backend on subscribe.
    """

    allowed_origins: tuple[str, ...] | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_frame_bytes: int = 4096
    max_subscriptions: int = 32
    snapshot_timeout: float = 5.0


def _websocket_problems(raw: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    origins = raw.get("WEBSOCKET_ALLOWED_ORIGINS")
    if origins is not None and (
        isinstance(origins, str)
        or not isinstance(origins, list | tuple)
        or not all(
            isinstance(o, str) and (o == "*" or (o.count("://") == 1 and not o.endswith("/")))
            for o in origins
        )
    ):
        problems.append(
            "ACELERYCTL['WEBSOCKET_ALLOWED_ORIGINS'] must be None (use ALLOWED_HOSTS) or a list "
            "of origins such as 'https://app.example.com' (no path, no trailing slash) or '*'"
        )
    for key in ("WEBSOCKET_MAX_FRAME_BYTES", "WEBSOCKET_MAX_SUBSCRIPTIONS"):
        if key in raw and (p := _positive_int(key, raw[key])):
            problems.append(p)
    timeout = raw.get("SNAPSHOT_TIMEOUT", 1.0)
    if p := _positive_number("SNAPSHOT_TIMEOUT", timeout):
        problems.append(p)
    return problems


def load_websocket_settings() -> WebsocketSettings:
    """Read the websocket consumer's settings (``ACELERYCTL`` and ``ALLOWED_HOSTS``).

    Cheap (a dict lookup and a few checks): the consumer calls it per connection,
    so ``override_settings`` takes effect at once.

    Raises:
        django.core.exceptions.ImproperlyConfigured: a websocket key is invalid.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    raw = getattr(settings, SETTING_NAME, None) or {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"ACELERYCTL must be a dict, got {type(raw).__name__}")
    problems = _websocket_problems(raw)
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]  # as django.http.HttpRequest.get_host
    origins = raw.get("WEBSOCKET_ALLOWED_ORIGINS")
    defaults = WebsocketSettings()
    return WebsocketSettings(
        allowed_origins=None if origins is None else tuple(o.lower() for o in origins),
        allowed_hosts=tuple(hosts),
        max_frame_bytes=int(raw.get("WEBSOCKET_MAX_FRAME_BYTES", defaults.max_frame_bytes)),
        max_subscriptions=int(raw.get("WEBSOCKET_MAX_SUBSCRIPTIONS", defaults.max_subscriptions)),
        snapshot_timeout=float(raw.get("SNAPSHOT_TIMEOUT", defaults.snapshot_timeout)),
    )


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
        "DIRECT_PUBLISH",
        "LOOP_PUBLISH",
        "REPLICA_ACKS",
        "MAX_PENDING",
        "DRAIN_TIMEOUT",
        "REDACT_KEYS",
        "BREAKER",
        "EVENTS_ENABLED",
        "PROGRESS_MAX_RATE",
        "EVENT_QUEUE_SIZE",
        "EVENT_SEND_TIMEOUT",
        "LOG_FILE",
        "LOG_EXCEPTION_CHAIN",
        "METRICS",
        "OUTBOX",
        "RUN_ONCE",
        *_WEBSOCKET_KEYS,
    }
    for key in raw:
        if key not in known:
            problems.append(
                f"ACELERYCTL has an unknown key {key!r}; the keys are {', '.join(sorted(known))}"
            )
    for key in ("DISPATCH_TIMEOUT", "DRAIN_TIMEOUT", "EVENT_SEND_TIMEOUT"):
        if key in raw and (p := _positive_number(key, raw[key])):
            problems.append(p)
    for key in ("MAX_WORKERS", "MAX_BATCH", "MAX_PENDING", "EVENT_QUEUE_SIZE"):
        if key in raw and (p := _positive_int(key, raw[key])):
            problems.append(p)
    rate = raw.get("PROGRESS_MAX_RATE", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        problems.append(
            "ACELERYCTL['PROGRESS_MAX_RATE'] must be a finite number of events a second > 0, "
            f"got {rate!r}"
        )
    for key in ("DIRECT_PUBLISH", "LOOP_PUBLISH"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append(f"ACELERYCTL[{key!r}] must be True or False, got {raw[key]!r}")
    acks = raw.get("REPLICA_ACKS", 0)
    if isinstance(acks, bool) or not isinstance(acks, int) or not 0 <= acks <= 16:
        problems.append(
            "ACELERYCTL['REPLICA_ACKS'] must be how many Redis replicas must hold each "
            f"direct write before a call returns: 0 (off, the default) to 16, got {acks!r}"
        )
    metrics = raw.get("METRICS", ())
    if not isinstance(metrics, list | tuple) or any(
        m not in ("prometheus", "opentelemetry") for m in metrics
    ):
        problems.append(
            "ACELERYCTL['METRICS'] must be a list of 'prometheus' and/or 'opentelemetry', "
            f"got {metrics!r}"
        )
    if not isinstance(raw.get("LOG_EXCEPTION_CHAIN", False), bool):
        problems.append(
            "ACELERYCTL['LOG_EXCEPTION_CHAIN'] must be True or False, got "
            f"{raw['LOG_EXCEPTION_CHAIN']!r}"
        )
    if not isinstance(raw.get("EVENTS_ENABLED", True), bool):
        problems.append(
            f"ACELERYCTL['EVENTS_ENABLED'] must be True or False, got {raw['EVENTS_ENABLED']!r}"
        )
    log_file = raw.get("LOG_FILE", "-")
    if log_file is not None and (not isinstance(log_file, str) or not log_file.strip()):
        problems.append(
            f"ACELERYCTL['LOG_FILE'] must be a file path or None (no file), got {log_file!r}"
        )
    problems.extend(_websocket_problems(raw))
    problems.extend(outbox_problems(raw.get("OUTBOX")))
    problems.extend(run_once_problems(raw))
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
        force = breaker.get("FORCE")
        if isinstance(force, str) and force not in FORCE_STATES:
            problems.append(
                f"ACELERYCTL['BREAKER']['FORCE'] must be 'open', 'closed' or None, got {force!r}"
            )
        if not any("BREAKER" in p for p in problems):
            try:
                CircuitBreaker(**breaker_arguments(breaker))
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
        direct_publish=bool(raw.get("DIRECT_PUBLISH", defaults.direct_publish)),
        loop_publish=bool(raw.get("LOOP_PUBLISH", defaults.loop_publish)),
        replica_acks=int(raw.get("REPLICA_ACKS", defaults.replica_acks)),
        max_pending=int(raw.get("MAX_PENDING", defaults.max_pending)),
        drain_timeout=float(raw.get("DRAIN_TIMEOUT", defaults.drain_timeout)),
        redact_keys=tuple(raw.get("REDACT_KEYS", defaults.redact_keys)),
        breaker=dict(raw.get("BREAKER", {})),
        events_enabled=bool(raw.get("EVENTS_ENABLED", defaults.events_enabled)),
        progress_max_rate=float(raw.get("PROGRESS_MAX_RATE", defaults.progress_max_rate)),
        event_queue_size=int(raw.get("EVENT_QUEUE_SIZE", defaults.event_queue_size)),
        event_send_timeout=float(raw.get("EVENT_SEND_TIMEOUT", defaults.event_send_timeout)),
        log_file=raw.get("LOG_FILE", defaults.log_file),
        log_exception_chain=bool(raw.get("LOG_EXCEPTION_CHAIN", defaults.log_exception_chain)),
        metrics=tuple(raw.get("METRICS", defaults.metrics)),
        success_logging=bool(
            settings.configured and getattr(settings, "CELERY_ENABLE_SUCCESS_LOGGING", False)
        ),
        prerun_logging=bool(
            settings.configured and getattr(settings, "CELERY_ENABLE_PRERUN_LOGGING", False)
        ),
    )


def breaker_arguments(breaker: Mapping[str, Any]) -> dict[str, Any]:
    """``ACELERYCTL["BREAKER"]`` as ``CircuitBreaker`` keyword arguments (``FORCE`` left out)."""
    return {k.lower(): v for k, v in breaker.items() if k != "FORCE"}
