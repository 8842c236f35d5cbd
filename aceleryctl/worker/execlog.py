"""Execution-time log records of tasks, at logger ``aceleryctl.signals``.

Called by the receivers in :mod:`aceleryctl.signals`, on the thread that runs the
task (for a hard time limit, on the worker's main process):

* failure: ``ERROR``, always, with the traceback;
* retry: ``WARNING``, always: reason, attempt of max, ETA;
* success: ``INFO`` with runtime and result, when ``CELERY_ENABLE_SUCCESS_LOGGING``;
* prerun: ``INFO`` with args and kwargs, when ``CELERY_ENABLE_PRERUN_LOGGING``.

Messages read like the original controller's (``Task failed: task=... task_id=...
args=... kwargs=... exception=Type: message``) and the same facts are record
attributes (``task_name``, ``task_id``, ``task_args``, ``task_kwargs``,
``error_type``, ``error_message``, ``runtime``, ``attempt``, ``max_retries``,
``eta``, ``correlation_id``). Arguments and results pass through the controller's
:class:`~aceleryctl._logging.Redactor`; URL credentials are masked in messages and
in the traceback text, which is formatted once, scrubbed, and cached on the record
(``record.exc_text``) so that every standard formatter prints the scrubbed one.

The first record of a task run by a worker (not an eager ``apply()``) also
installs, once per process, a rotating file handler at ``ACELERYCTL["LOG_FILE"]``
(default ``logs/celery_logs.txt``, relative to the worker's working directory;
10 MB x 5 files, level ERROR, ``%(asctime)s - %(name)s - %(levelname)s -
%(message)s``). Eager runs (tests, ``CELERY_TASK_ALWAYS_EAGER``) log their records
all the same, to the handlers the project configured, but create no file. Several
processes of one worker share the file; Python's rotation is not coordinated
between processes, so a line can be lost at the moment of rotation.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from logging.handlers import RotatingFileHandler
from typing import Any, Final

from aceleryctl._logging import Redactor, _parameter_names, scrub_credentials
from aceleryctl._once import guard, internal
from aceleryctl.correlation import current_correlation_id
from aceleryctl.events import summarize_error
from aceleryctl.worker.building import error_type_of, retry_details
from aceleryctl.worker.config import WorkerConfig, worker_config

__all__ = [
    "LOG_FORMAT",
    "MAX_LOG_BYTES",
    "LOG_BACKUP_COUNT",
    "ensure_file_handler",
    "file_handler",
    "log_failure",
    "log_prerun",
    "log_retry",
    "log_success",
    "logger",
    "on_failure",
    "on_prerun",
    "on_retry",
    "on_success",
    "remove_file_handler",
]

logger: Final = logging.getLogger("aceleryctl.signals")

LOG_FORMAT: Final = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
MAX_LOG_BYTES: Final = 10 * 1024 * 1024
LOG_BACKUP_COUNT: Final = 5


class _RecordFilter(logging.Filter):
    """Adds ``correlation_id`` (``"-"`` when there is none) and a scrubbed, cached
    traceback to every record of ``aceleryctl.signals`` (a logger filter runs
    before any handler formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = current_correlation_id() or "-"
        if record.exc_info and not record.exc_text:
            try:
                text = logging.Formatter().formatException(record.exc_info)
            except Exception:
                text = "<traceback could not be formatted>"
            record.exc_text = scrub_credentials(text)
        return True


_filter: Final = _RecordFilter()
logger.addFilter(_filter)

_handler_lock = threading.Lock()
_handler: RotatingFileHandler | None = None
_handler_failed: set[str] = set()


def file_handler() -> RotatingFileHandler | None:
    """The installed file handler, if any (possibly inherited through fork)."""
    return _handler


def ensure_file_handler(
    path: str | None,
    *,
    max_bytes: int = MAX_LOG_BYTES,
    backup_count: int = LOG_BACKUP_COUNT,
) -> RotatingFileHandler | None:
    """Install the rotating ERROR file handler at ``path`` on ``aceleryctl.signals``,
    once: the same path again is a no-op; another path replaces the handler;
    ``None`` removes it. Creates the parent directory. Thread-safe; never raises (a
    path that cannot be opened is reported once at WARNING and skipped).

    A handler inherited from the parent process through fork is kept: it shares
    the parent's open file.
    """
    global _handler
    wanted = os.path.abspath(path) if path else None
    current = _handler
    if current is not None and current.baseFilename == wanted:
        return current
    if current is None and wanted is None:
        return None
    with _handler_lock:
        current = _handler
        if current is not None and current.baseFilename == wanted:
            return current
        if current is not None:
            logger.removeHandler(current)
            current.close()
            _handler = None
        if wanted is None or wanted in _handler_failed:
            return None
        try:
            os.makedirs(os.path.dirname(wanted) or ".", exist_ok=True)
            handler = RotatingFileHandler(
                wanted, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
            )
        except OSError as exc:
            _handler_failed.add(wanted)
            logger.warning("aceleryctl cannot write its log file %s: %s", wanted, exc)
            return None
        handler.setLevel(logging.ERROR)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        _handler = handler
        return handler


def _after_fork_in_child() -> None:
    global _handler_lock
    _handler_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def remove_file_handler() -> None:
    """Remove and close the file handler (tests; a changed ``LOG_FILE``)."""
    ensure_file_handler(None)


def log_prerun(
    *, redactor: Redactor, task: object, task_id: str | None, args: object, kwargs: object
) -> None:
    """``INFO`` "Task started" with sanitized args and kwargs. Never raises."""
    try:
        if not logger.isEnabledFor(logging.INFO):
            return
        name = _task_name(task)
        clean_args = redactor.sanitize_args(args or (), _parameter_names(task))
        clean_kwargs = redactor.sanitize(kwargs or {})
        logger.info(
            "Task started: task=%s task_id=%s args=%s kwargs=%s",
            name,
            task_id,
            clean_args,
            clean_kwargs,
            extra={
                "task_name": name,
                "task_id": task_id,
                "task_args": clean_args,
                "task_kwargs": clean_kwargs,
            },
        )
    except Exception:
        _internal_error("prerun")


def log_success(
    *, redactor: Redactor, task: object, task_id: str | None, runtime: float | None, result: Any
) -> None:
    """``INFO`` "Task succeeded" with the runtime (seconds) and the sanitized result.
    Never raises."""
    try:
        if not logger.isEnabledFor(logging.INFO):
            return
        name = _task_name(task)
        clean = redactor.sanitize(result)
        logger.info(
            "Task succeeded: task=%s task_id=%s runtime=%s result=%s",
            name,
            task_id,
            "-" if runtime is None else f"{runtime:.6f}s",
            clean,
            extra={
                "task_name": name,
                "task_id": task_id,
                "runtime": runtime,
                "task_result": clean,
            },
        )
    except Exception:
        _internal_error("success")


def log_failure(
    *,
    redactor: Redactor,
    task: object,
    task_id: str | None,
    args: object,
    kwargs: object,
    error: BaseException,
    traceback: Any = None,
) -> None:
    """``ERROR`` "Task failed" with sanitized arguments, the error, and its
    traceback (scrubbed of URL credentials). Never raises."""
    try:
        name = _task_name(task)
        clean_args = redactor.sanitize_args(args or (), _parameter_names(task))
        clean_kwargs = redactor.sanitize(kwargs or {})
        error_type = error_type_of(error)
        message = summarize_error(error)
        tb = traceback if traceback is not None else error.__traceback__
        logger.error(
            "Task failed: task=%s task_id=%s args=%s kwargs=%s exception=%s: %s",
            name,
            task_id,
            clean_args,
            clean_kwargs,
            error_type,
            message,
            exc_info=(type(error), error, tb),
            extra={
                "task_name": name,
                "task_id": task_id,
                "task_args": clean_args,
                "task_kwargs": clean_kwargs,
                "error_type": error_type,
                "error_message": message,
            },
        )
    except Exception:
        _internal_error("failure")


def log_retry(
    *,
    task: object,
    task_id: str | None,
    reason: str | None,
    error_type: str | None,
    attempt: int,
    max_retries: int | None,
    eta: datetime | None,
) -> None:
    """``WARNING`` "Task retry": reason, attempt of max (``attempt`` counts from 1;
    ``max_retries`` ``None`` means no limit), ETA. Never raises."""
    try:
        name = _task_name(task)
        eta_text = eta.isoformat() if eta is not None else None
        logger.warning(
            "Task retry: task=%s task_id=%s reason=%s attempt=%d of %s eta=%s",
            name,
            task_id,
            reason,
            attempt,
            "unlimited" if max_retries is None else max_retries,
            eta_text or "now",
            extra={
                "task_name": name,
                "task_id": task_id,
                "error_type": error_type,
                "error_message": reason,
                "attempt": attempt,
                "max_retries": max_retries,
                "eta": eta_text,
            },
        )
    except Exception:
        _internal_error("retry")


def _task_name(task: object) -> str:
    name = getattr(task, "name", None)
    return name if isinstance(name, str) and name else "<unknown>"


def _internal_error(kind: str) -> None:
    internal.exception(f"log:{kind}", "aceleryctl could not write a %s log record", kind)


# -- receivers --------------------------------------------------------------------------------


def _config_with_handler(request: object) -> WorkerConfig:
    """The settings; and the file handler, unless ``request`` is an eager run's."""
    config = worker_config()
    if not getattr(request, "is_eager", False):
        ensure_file_handler(config.log_file)
    return config


@guard("log_prerun")
def on_prerun(
    sender: object = None,
    task_id: Any = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """``task_prerun``: :func:`log_prerun` when ``CELERY_ENABLE_PRERUN_LOGGING``."""
    config = worker_config()
    if config.prerun_logging:
        _config_with_handler(getattr(task, "request", None))
        log_prerun(redactor=config.redactor, task=task, task_id=task_id, args=args, kwargs=kwargs)


@guard("log_success")
def on_success(sender: Any = None, result: Any = None, runtime: Any = None, **_: Any) -> None:
    """``task_success``: :func:`log_success` when ``CELERY_ENABLE_SUCCESS_LOGGING``."""
    config = worker_config()
    if config.success_logging and sender is not None:
        _config_with_handler(sender.request)
        log_success(
            redactor=config.redactor,
            task=sender,
            task_id=sender.request.id,
            runtime=float(runtime) if isinstance(runtime, int | float) else None,
            result=result,
        )


@guard("log_failure")
def on_failure(
    sender: Any = None,
    task_id: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    traceback: Any = None,
    **_: Any,
) -> None:
    """``task_failure``: :func:`log_failure`, always."""
    if exception is None:
        return
    request = getattr(sender, "request", None)
    own = request if getattr(request, "id", None) == task_id else None
    config = _config_with_handler(own)
    log_failure(
        redactor=config.redactor,
        task=sender,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        error=exception,
        traceback=traceback,
    )


@guard("log_retry")
def on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    """``task_retry``: :func:`log_retry`, always."""
    if request is None:
        return
    _config_with_handler(request)
    info, error_type = retry_details(sender, request, reason)
    reason_text = info.reason if error_type is None else f"{error_type}: {info.reason}"
    log_retry(
        task=sender,
        task_id=getattr(request, "id", None),
        reason=reason_text,
        error_type=error_type,
        attempt=info.attempt,
        max_retries=info.max_retries,
        eta=None if info.eta is None else datetime.fromisoformat(info.eta),
    )
