"""Reading and validating ``ACELERYCTL["RUN_ONCE"]``, the worker-side run-once guard's setting.

Pure functions over the raw ``ACELERYCTL`` dict, importable anywhere (the web
process's system checks call :func:`run_once_problems` through
:func:`aceleryctl._settings.settings_problems`, and must not load the worker
side). :func:`read_run_once` turns a valid value into :class:`RunOnceSettings`;
:func:`load_run_once` does that from Django's settings. Durations are whole
seconds (``int``): Redis expiries are.

The keys::

    "RUN_ONCE": {
        "ENABLED": None,      # None: on when ACELERYCTL["OUTBOX"]["ENABLED"] is true
        "REDIS_URL": None,    # None: the Celery app's result backend, else its broker,
                              # when that is Redis
        "DONE_TTL": 86400,    # seconds a finished (task id, attempt) is remembered
        "RUNNING_TTL": 3600,  # seconds a claim on a running one lasts
    }

Nothing here raises but :func:`read_run_once` and :func:`load_run_once`
(``ValueError`` / ``ImproperlyConfigured`` naming every key to change).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "REDIS_URL_SCHEMES",
    "RunOnceSettings",
    "load_run_once",
    "read_run_once",
    "run_once_problems",
]

_KEY: Final = "ACELERYCTL['RUN_ONCE']"
_DEFAULT_DONE_TTL: Final = 86_400
_DEFAULT_RUNNING_TTL: Final = 3_600
_KEYS: Final = ("DONE_TTL", "ENABLED", "REDIS_URL", "RUNNING_TTL")

#: URL schemes redis-py's ``Redis.from_url`` takes.
REDIS_URL_SCHEMES: Final = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class RunOnceSettings:
    """The validated ``ACELERYCTL["RUN_ONCE"]``.

    Attributes:
        enabled: whether workers guard their tasks (``ENABLED``, or the outbox's
            ``ENABLED`` when that is ``None``).
        redis_url: the guard's Redis, or ``None`` for the Celery app's own
            (resolved in the worker, which knows the app).
        done_ttl: seconds a finished (task id, attempt) is remembered.
        running_ttl: seconds a claim on a running (task id, attempt) lasts when
            nothing settles it (its worker died).
    """

    enabled: bool = False
    redis_url: str | None = None
    done_ttl: int = _DEFAULT_DONE_TTL
    running_ttl: int = _DEFAULT_RUNNING_TTL


def _whole_seconds(name: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{_KEY}[{name!r}] must be a whole number of seconds >= 1, got {value!r}"
    return None


def _shape(url: object) -> str:
    """What ``url`` is, without its text: a URL may carry a password."""
    if not isinstance(url, str):
        return f"a value of type {type(url).__name__}"
    scheme, found, _ = url.partition("://")
    return f"a URL with the scheme {scheme!r}" if found else "a string that is no URL"


def run_once_problems(raw: Mapping[str, Any]) -> list[str]:
    """Every problem with ``raw.get("RUN_ONCE")`` (``raw`` is the whole ``ACELERYCTL``
    dict), each naming the key to change and what to set it to. Empty when valid
    or absent."""
    section = raw.get("RUN_ONCE")
    if section is None:
        return []
    if not isinstance(section, Mapping):
        return [f"{_KEY} must be a dict, got {type(section).__name__}"]
    problems = [
        f"{_KEY} has an unknown key {key!r}; the keys are {', '.join(_KEYS)}"
        for key in section
        if key not in _KEYS
    ]
    enabled = section.get("ENABLED")
    if enabled is not None and not isinstance(enabled, bool):
        problems.append(
            f"{_KEY}['ENABLED'] must be True, False or None (on when the outbox is), "
            f"got {enabled!r}"
        )
    url = section.get("REDIS_URL")
    if url is not None and (not isinstance(url, str) or not url.startswith(REDIS_URL_SCHEMES)):
        problems.append(
            f"{_KEY}['REDIS_URL'] must be None (the Celery app's Redis) or a URL starting "
            f"with {', '.join(REDIS_URL_SCHEMES)}, got {_shape(url)}"
        )
    for name in ("DONE_TTL", "RUNNING_TTL"):
        if name in section and (problem := _whole_seconds(name, section[name])):
            problems.append(problem)
    done = section.get("DONE_TTL", _DEFAULT_DONE_TTL)
    running = section.get("RUNNING_TTL", _DEFAULT_RUNNING_TTL)
    if (
        not _whole_seconds("DONE_TTL", done)
        and not _whole_seconds("RUNNING_TTL", running)
        and done < running
    ):
        problems.append(
            f"{_KEY}['DONE_TTL'] ({done} s) is shorter than {_KEY}['RUNNING_TTL'] "
            f"({running} s): a finished task would be forgotten before a running one; "
            "raise DONE_TTL"
        )
    return problems


def _outbox_enabled(raw: Mapping[str, Any]) -> bool:
    outbox = raw.get("OUTBOX")
    return isinstance(outbox, Mapping) and outbox.get("ENABLED") is True


def read_run_once(raw: object) -> RunOnceSettings:
    """:class:`RunOnceSettings` from a raw ``ACELERYCTL`` value (``None``: defaults).

    Raises:
        ValueError: ``raw`` is not a dict, or ``RUN_ONCE`` is invalid; the message
            lists every problem.
    """
    if raw is None:
        return RunOnceSettings()
    if not isinstance(raw, Mapping):
        raise ValueError(f"ACELERYCTL must be a dict, got {type(raw).__name__}")
    problems = run_once_problems(raw)
    if problems:
        raise ValueError("; ".join(problems))
    section: Mapping[str, Any] = raw.get("RUN_ONCE") or {}
    enabled = section.get("ENABLED")
    return RunOnceSettings(
        enabled=_outbox_enabled(raw) if enabled is None else enabled,
        redis_url=section.get("REDIS_URL"),
        done_ttl=section.get("DONE_TTL", _DEFAULT_DONE_TTL),
        running_ttl=section.get("RUNNING_TTL", _DEFAULT_RUNNING_TTL),
    )


def load_run_once() -> RunOnceSettings:
    """:func:`read_run_once` of ``settings.ACELERYCTL`` (defaults when Django is not
    configured).

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    raw = getattr(settings, "ACELERYCTL", None) if settings.configured else None
    try:
        return read_run_once(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
