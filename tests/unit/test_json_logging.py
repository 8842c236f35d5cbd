"""The JSON logging configurations of docs/observability.md, taken from the page and
run with the real python-json-logger and structlog on a real dispatch failure."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.correlation import use_correlation_id

PAGE = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def configurations() -> list[str]:
    text = PAGE.read_text()
    section = text[text.index("### JSON records") :]
    return [
        block for block in re.findall(r"```python\n(.*?)```", section, re.S) if "LOGGING" in block
    ]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("aceleryctl")
    saved = (logger.handlers[:], logger.level, logger.propagate, logger.filters[:])
    yield
    logger.handlers[:], logger.level, logger.propagate, logger.filters[:] = saved


@pytest.mark.parametrize("library", ["python-json-logger", "structlog"])
def test_the_documented_json_configuration_writes_every_field(
    restore_logging: None, library: str
) -> None:
    pytest.importorskip("pythonjsonlogger" if library == "python-json-logger" else "structlog")
    [config] = [c for c in configurations() if ("structlog" in c) == (library == "structlog")]
    namespace: dict[str, Any] = {}
    exec(compile(config, f"observability.md ({library})", "exec"), namespace)
    logging.config.dictConfig(namespace["LOGGING"])
    stream = io.StringIO()
    handler = logging.getLogger("aceleryctl").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    app = Celery("json-logs", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_transport_options = {"socket_timeout": 1, "socket_connect_timeout": 1}
    task = app.task(name="json.mail", shared=False)(_mail)
    controller = AsyncCeleryController(app, dispatch_timeout=2.0)
    try:
        with use_correlation_id("req-42"), pytest.raises(Exception, match="broker"):
            controller.sync.delay(task, "ann@example.com", password="hunter2")
    finally:
        controller.sync.close(10)
    [line] = [json.loads(raw) for raw in stream.getvalue().splitlines() if "task_name" in raw]
    assert line["task_name"] == "json.mail"
    assert line["outcome"] == "not_sent"
    assert line["error_type"] == "BrokerError"
    assert line["task_args"] == ["ann@example.com"]
    assert line["task_kwargs"] == {"password": "********"}
    assert line["correlation_id"] == "req-42"
    assert "hunter2" not in stream.getvalue()


def _mail(to: str, password: str = "") -> None:
    """A task with a secret keyword argument."""
