"""The settings the worker side (and the web side's live events) read, once per process.

:func:`worker_config` turns :func:`aceleryctl.conf.load_settings` into a
:class:`WorkerConfig`, cached until :func:`reset_worker_config` (called on
``connect()`` and when a watched Django setting changes). Problems are logged
through :mod:`aceleryctl._once`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Final

from aceleryctl._logging import Redactor

__all__ = ["WorkerConfig", "log_file_path", "reset_worker_config", "worker_config"]

#: aceleryctl's own trouble in a worker (never task outcomes) is logged here.
internal_logger: Final = logging.getLogger("aceleryctl.emitter")

DEFAULT_LOG_FILE: Final = "logs/celery_logs.txt"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """The validated settings the receivers use. Durations in seconds.

    Attributes:
        events: publish task events (``ACELERYCTL["EVENTS_ENABLED"]``).
        progress_interval: seconds between two progress events of one task that
            go out (``1 / ACELERYCTL["PROGRESS_MAX_RATE"]``).
        queue_size: events that may wait to be published, per process.
        send_timeout: seconds one channel-layer ``group_send`` may take.
        log_file: absolute path of the ERROR log file, or ``None`` for none.
        success_logging, prerun_logging: ``CELERY_ENABLE_SUCCESS_LOGGING`` and
            ``CELERY_ENABLE_PRERUN_LOGGING``.
        redactor: masks arguments and results (``ACELERYCTL["REDACT_KEYS"]``).
    """

    events: bool = True
    progress_interval: float = 0.1
    queue_size: int = 1_000
    send_timeout: float = 1.0
    log_file: str | None = None
    success_logging: bool = False
    prerun_logging: bool = False
    redactor: Redactor = field(default_factory=Redactor)


_lock = threading.Lock()
_cached: WorkerConfig | None = None


def worker_config() -> WorkerConfig:
    """The process's worker settings, read on first use. Thread-safe; never raises
    (invalid settings are reported once and the defaults used: the system checks
    name the key to fix)."""
    config = _cached
    return config if config is not None else _load()


def _load() -> WorkerConfig:
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        try:
            from aceleryctl.conf import load_settings

            raw = load_settings()
            config = WorkerConfig(
                events=raw.events_enabled,
                progress_interval=1.0 / raw.progress_max_rate,
                queue_size=raw.event_queue_size,
                send_timeout=raw.event_send_timeout,
                log_file=log_file_path(raw.log_file),
                success_logging=raw.success_logging,
                prerun_logging=raw.prerun_logging,
                redactor=Redactor.from_keys(raw.redact_keys),
            )
        except Exception as exc:
            internal_logger.warning(
                "aceleryctl worker settings are invalid, using the defaults: %s", exc
            )
            config = WorkerConfig(log_file=log_file_path(DEFAULT_LOG_FILE))
        _cached = config
        return config


def log_file_path(setting: str | None) -> str | None:
    """The absolute path of the execution log for ``ACELERYCTL["LOG_FILE"]``.

    A relative path is under the project's base directory, ``settings.BASE_DIR``
    (which Django's project template defines), as the original controller's
    ``logs/celery_logs.txt`` was; without ``BASE_DIR``, under the process's current
    directory. ``None``: no file. A ``~`` at the start is the user's home.
    """
    if not setting:
        return None
    path = os.path.expanduser(setting)
    if not os.path.isabs(path):
        base = _base_dir()
        if base is not None:
            path = os.path.join(base, path)
    return os.path.abspath(path)


def _base_dir() -> str | None:
    try:
        from django.conf import settings

        base = getattr(settings, "BASE_DIR", None) if settings.configured else None
    except Exception:  # no Django, or settings that fail to import
        return None
    return os.fspath(base) if isinstance(base, str | os.PathLike) else None


def reset_worker_config() -> None:
    """Forget the cached settings; the next :func:`worker_config` reads them again."""
    global _cached
    with _lock:
        _cached = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
