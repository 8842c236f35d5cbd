"""Execution-time log records (logger ``aceleryctl.signals``) and the rotating file."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from celery.app.trace import build_tracer
from django.conf import settings
from django.test import override_settings

from aceleryctl import signals
from aceleryctl._logging import Redactor
from aceleryctl.correlation import CORRELATION_HEADER
from aceleryctl.worker import execlog as wl

app = Celery("logging-tests", broker="memory://", backend="cache+memory://", set_as_current=False)
app.conf.update(
    task_store_eager_result=True,
    task_default_queue="aceleryctl-logging-tests",  # not the memory broker's shared "celery"
)

SECRETS = ("pw-planted", "s3cret", "card-4242", "tok-result")


class Broken(Exception):
    pass


@app.task(bind=True, name="logging_tests.fails")
def fails(self: Task[Any, Any], user: str, password: str) -> None:
    raise Broken(f"login failed for {user} at postgres://{user}:s3cret@db/app")


@app.task(bind=True, name="logging_tests.works")
def works(self: Task[Any, Any], card_number: str, amount: int) -> dict[str, Any]:
    return {"charged": amount, "token": "tok-result"}


@app.task(bind=True, name="logging_tests.retries", max_retries=4)
def retries(self: Task[Any, Any]) -> str:
    if self.request.retries < 1:
        raise self.retry(exc=Broken("upstream https://u:s3cret@api/ busy"), countdown=60)
    return "ok"


def run(
    task: Task[Any, Any], *args: Any, headers: dict[str, str] | None = None, **kwargs: Any
) -> str:
    """Run ``task`` as a worker's pool does (not eager): every signal fires."""
    task_id = str(uuid.uuid4())
    trace = build_tracer(task.name, task, app=app, eager=False)
    request = {
        "id": task_id,
        "task": task.name,
        "retries": 0,
        "delivery_info": {},
        **(headers or {}),
    }
    trace(task_id, list(args), kwargs, request=request)
    return task_id


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """``ACELERYCTL["LOG_FILE"]`` in a temporary directory (not created yet)."""
    path = tmp_path / "logs" / "celery_logs.txt"
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "LOG_FILE": str(path)}):
        signals.connect(events=False)
        try:
            yield path
        finally:
            wl.remove_file_handler()
    signals.connect()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="aceleryctl.signals")
    return caplog


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aceleryctl.signals"]


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_a_failure_is_an_error_record_with_a_scrubbed_traceback(
    log_file: Path, records: pytest.LogCaptureFixture
) -> None:
    run(fails, "ann", password="pw-planted", headers={CORRELATION_HEADER: "c-42"})
    (record,) = [r for r in ours(records) if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert message.startswith("Task failed: task=logging_tests.fails task_id=")
    assert "args=['ann'] kwargs={'password': '********'}" in message
    assert message.endswith("exception=Broken: login failed for ann at postgres://********@db/app")
    assert record.exc_info is not None
    assert record.exc_text is not None
    assert "Traceback (most recent call last)" in record.exc_text
    assert "postgres://********@db/app" in record.exc_text
    extra = record.__dict__
    assert extra["correlation_id"] == "c-42"
    assert extra["task_name"] == "logging_tests.fails"
    assert extra["task_kwargs"] == {"password": "********"}
    assert extra["error_type"] == "Broken"
    assert_no_secret(message + record.exc_text)
    written = log_file.read_text()
    assert " - aceleryctl.signals - ERROR - Task failed: task=logging_tests.fails" in written
    assert "Traceback (most recent call last)" in written
    assert_no_secret(written)


def test_the_file_handler_is_rotating_at_error_level_and_installed_once(log_file: Path) -> None:
    run(fails, "a", password="pw-planted")
    run(fails, "b", password="pw-planted")
    handlers = [
        h for h in logging.getLogger("aceleryctl.signals").handlers if h is wl.file_handler()
    ]
    assert len(handlers) == 1
    handler = handlers[0]
    assert isinstance(handler, RotatingFileHandler)
    assert Path(handler.baseFilename) == log_file
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)
    assert handler.level == logging.ERROR
    assert handler.formatter is not None
    assert handler.formatter._fmt == "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
    assert log_file.read_text().count("Task failed") == 2


def test_another_path_replaces_the_handler_and_none_removes_it(
    log_file: Path, tmp_path: Path
) -> None:
    first = wl.ensure_file_handler(str(log_file))
    assert first is not None
    assert wl.ensure_file_handler(str(log_file)) is first
    other = wl.ensure_file_handler(str(tmp_path / "other.txt"))
    assert other is not None
    assert other is not first
    assert first not in logging.getLogger("aceleryctl.signals").handlers
    assert wl.ensure_file_handler(None) is None
    assert other not in logging.getLogger("aceleryctl.signals").handlers


def test_an_unwritable_log_file_is_reported_once_and_tasks_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aceleryctl.signals")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "logs" / "celery_logs.txt"
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "LOG_FILE": str(path)}):
        # As in a worker: the logging receivers are connected (this test process is
        # a web process, which connects them only when a worker starts or told to).
        signals.connect(events=False)
        try:
            run(fails, "a", password="pw")
            run(fails, "b", password="pw")
        finally:
            wl.remove_file_handler()
    signals.connect()
    assert wl.file_handler() is None
    assert len([r for r in caplog.records if "cannot write its log file" in r.getMessage()]) == 1


def test_a_retry_is_a_warning_with_attempt_max_and_eta(
    log_file: Path, records: pytest.LogCaptureFixture
) -> None:
    run(retries)
    (record,) = [r for r in ours(records) if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert message.startswith("Task retry: task=logging_tests.retries task_id=")
    assert "reason=Broken: upstream https://********@api/ busy attempt=1 of 4 eta=20" in message
    assert (record.__dict__["attempt"], record.__dict__["max_retries"]) == (1, 4)
    assert record.__dict__["eta"].startswith("20")
    assert_no_secret(message)
    assert "Task retry" not in log_file.read_text() if log_file.exists() else True


def test_success_and_prerun_records_are_off_by_default(
    log_file: Path, records: pytest.LogCaptureFixture
) -> None:
    run(works, "card-4242", 10)
    assert [r.getMessage() for r in ours(records)] == []


def test_success_and_prerun_records_when_enabled(
    log_file: Path, records: pytest.LogCaptureFixture
) -> None:
    with override_settings(CELERY_ENABLE_SUCCESS_LOGGING=True, CELERY_ENABLE_PRERUN_LOGGING=True):
        run(works, "card-4242", 10)
    messages = [r.getMessage() for r in ours(records)]
    assert len(messages) == 2
    started, succeeded = messages
    assert started.startswith("Task started: task=logging_tests.works task_id=")
    assert started.endswith("args=['********', 10] kwargs={}")  # masked by parameter name
    assert succeeded.startswith("Task succeeded: task=logging_tests.works task_id=")
    assert " runtime=" in succeeded
    assert succeeded.endswith("result={'charged': 10, 'token': '********'}")
    assert_no_secret("\n".join(messages))
    assert not log_file.exists() or "Task s" not in log_file.read_text()  # INFO stays out


def test_custom_redact_keys_apply(log_file: Path, records: pytest.LogCaptureFixture) -> None:
    value = {**settings.ACELERYCTL, "LOG_FILE": str(log_file), "REDACT_KEYS": ["user"]}
    with override_settings(ACELERYCTL=value):
        run(fails, "ann", password="visible-now")
    (record,) = [r for r in ours(records) if r.levelno == logging.ERROR]
    assert "args=['********'] kwargs={'password': 'visible-now'}" in record.getMessage()


def test_eager_runs_log_records_but_create_no_file(
    log_file: Path, records: pytest.LogCaptureFixture
) -> None:
    fails.apply(("ann",), {"password": "pw-planted"})
    assert [r.levelname for r in ours(records)] == ["ERROR"]
    assert wl.file_handler() is None
    assert not log_file.exists()


def test_log_functions_never_raise(records: pytest.LogCaptureFixture) -> None:
    class Hostile:
        name = property(lambda self: 1 / 0)

    wl.log_failure(
        redactor=Redactor(), task=Hostile(), task_id="x", args=(), kwargs={}, error=ValueError("v")
    )
    wl.log_success(redactor=Redactor(), task=object(), task_id=None, runtime=None, result=Hostile())
    wl.log_prerun(redactor=Redactor(), task=None, task_id=None, args=object(), kwargs=5)
