"""``ACELERYCTL["OUTBOX"]``: its keys, their rules and the validated values.

:func:`outbox_problems` lists what is wrong, each message naming the key to change
(the system checks show them); :func:`outbox_settings` returns the validated
values, cached until a ``setting_changed`` signal for ``ACELERYCTL``. Durations are
in seconds. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aceleryctl.dispatch.build import check_timeout

__all__ = [
    "OutboxSettings",
    "missing_table_note",
    "outbox_problems",
    "outbox_settings",
    "reset_outbox_settings",
]

RELAY_MODES: Final = ("command", "in_process")


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """The validated ``ACELERYCTL["OUTBOX"]``.

    Attributes:
        enabled: on-commit dispatches are written to the outbox in the caller's
            transaction, and ``durable=True`` is accepted.
        durable_by_default: every dispatch of the default controller is durable.
        database: the database alias of the outbox table (and of the relay).
        relay: ``"command"`` (``manage.py aceleryctl_relay`` runs somewhere) or
            ``"in_process"`` (a relay thread in each web process).
        batch_size: rows a relay claims and publishes per round.
        poll_interval: seconds a relay waits between rounds when nothing is due.
        max_attempts: relay attempts of a row before it is dead-lettered.
        retry_backoff: seconds before a failed row's first retry; doubled per attempt.
        retry_backoff_max: the longest wait between two attempts of a row, in seconds.
        handoff_grace: seconds a committed row is left to the after-commit publish
            of the process that wrote it before a relay may take it.
    """

    enabled: bool = False
    durable_by_default: bool = False
    database: str = "default"
    relay: str = "command"
    batch_size: int = 100
    poll_interval: float = 1.0
    max_attempts: int = 20
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    handoff_grace: float = 30.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after a row's ``attempts``-th failed attempt (>= 1)."""
        exponent = min(max(attempts - 1, 0), 60)
        return float(min(self.retry_backoff * 2.0**exponent, self.retry_backoff_max))


_KEYS: Final[dict[str, str]] = {
    "ENABLED": "bool",
    "DURABLE_BY_DEFAULT": "bool",
    "DATABASE": "alias",
    "RELAY": "relay",
    "BATCH_SIZE": "int",
    "POLL_INTERVAL": "seconds",
    "MAX_ATTEMPTS": "int",
    "RETRY_BACKOFF": "seconds",
    "RETRY_BACKOFF_MAX": "seconds",
    "HANDOFF_GRACE": "seconds",
}


def _problem(key: str, rule: str, value: object) -> str | None:
    where = f"ACELERYCTL['OUTBOX'][{key!r}]"
    if rule == "bool" and not isinstance(value, bool):
        return f"{where} must be True or False, got {value!r}"
    if rule == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        return f"{where} must be a whole number >= 1, got {value!r}"
    if rule == "seconds":
        try:
            check_timeout(value, name=where)  # the one check of every duration
        except (TypeError, ValueError) as exc:
            return str(exc)
    if rule == "alias" and (not isinstance(value, str) or not value):
        return f"{where} must be a database alias from DATABASES, got {value!r}"
    if rule == "relay" and value not in RELAY_MODES:
        return f"{where} must be 'command' or 'in_process', got {value!r}"
    return None


def outbox_problems(raw: object) -> list[str]:
    """Every problem with a raw ``ACELERYCTL["OUTBOX"]`` value (``None``: absent)."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [f"ACELERYCTL['OUTBOX'] must be a dict, got {type(raw).__name__}"]
    problems = [
        f"ACELERYCTL['OUTBOX'] has an unknown key {key!r}; the keys are {', '.join(_KEYS)}"
        for key in raw
        if key not in _KEYS
    ]
    for key, rule in _KEYS.items():
        if key in raw and (problem := _problem(key, rule, raw[key])):
            problems.append(problem)
    if not problems and raw.get("RETRY_BACKOFF", 1.0) > raw.get("RETRY_BACKOFF_MAX", 300.0):
        problems.append("ACELERYCTL['OUTBOX']['RETRY_BACKOFF'] must not exceed 'RETRY_BACKOFF_MAX'")
    return problems


def _read(raw: Mapping[str, Any]) -> OutboxSettings:
    defaults = OutboxSettings()
    return OutboxSettings(
        enabled=bool(raw.get("ENABLED", defaults.enabled)),
        durable_by_default=bool(raw.get("DURABLE_BY_DEFAULT", defaults.durable_by_default)),
        database=str(raw.get("DATABASE", defaults.database)),
        relay=str(raw.get("RELAY", defaults.relay)),
        batch_size=int(raw.get("BATCH_SIZE", defaults.batch_size)),
        poll_interval=float(raw.get("POLL_INTERVAL", defaults.poll_interval)),
        max_attempts=int(raw.get("MAX_ATTEMPTS", defaults.max_attempts)),
        retry_backoff=float(raw.get("RETRY_BACKOFF", defaults.retry_backoff)),
        retry_backoff_max=float(raw.get("RETRY_BACKOFF_MAX", defaults.retry_backoff_max)),
        handoff_grace=float(raw.get("HANDOFF_GRACE", defaults.handoff_grace)),
    )


_cached: OutboxSettings | None = None


def outbox_settings() -> OutboxSettings:
    """The validated ``ACELERYCTL["OUTBOX"]`` (defaults: outbox off), cached.

    Raises:
        django.core.exceptions.ImproperlyConfigured: the setting is invalid; the
            message names every key to change.
    """
    global _cached
    cached = _cached
    if cached is not None:
        return cached
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    top = getattr(settings, "ACELERYCTL", None) if settings.configured else None
    raw = top.get("OUTBOX") if isinstance(top, Mapping) else None
    problems = outbox_problems(raw)
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    _cached = _read(raw or {})
    return _cached


def reset_outbox_settings() -> None:
    """Forget the cached value (on ``setting_changed`` for ``ACELERYCTL``)."""
    global _cached
    _cached = None


def missing_table_note(alias: str) -> str:
    """A note for a failed outbox write: the usual cause when first turning it on."""
    return (
        f"aceleryctl could not write to the outbox table in database {alias!r}: if the table "
        "is missing, keep 'aceleryctl' in INSTALLED_APPS and run `manage.py migrate` there"
    )
