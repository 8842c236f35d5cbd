"""The in-process relay against the real broker: started by the first outbox write
(WSGI and other processes) or by the ASGI lifespan, stopped at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from celery import Celery
from django.conf import settings
from django.test import override_settings

from aceleryctl import AsyncCeleryController
from aceleryctl.asgi import with_lifespan
from aceleryctl.conf import reset_default_controller
from aceleryctl.outbox.durable import DeferredResult
from aceleryctl.outbox.inprocess import in_process_relay
from tests._support.waiting import wait_until
from tests.integration._helpers import Records, new_marker
from tests.integration.outbox.conftest import OUTBOX, rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def in_process(celery_app: Celery, workers: object) -> Iterator[None]:
    """The outbox on with RELAY "in_process", the default controller on the live app."""
    conf = {
        **settings.ACELERYCTL,
        "CELERY_APP": "tests.integration.celery_app:app",
        "OUTBOX": {**OUTBOX, "RELAY": "in_process", "POLL_INTERVAL": 0.05},
    }
    with override_settings(ACELERYCTL=conf):
        try:
            yield
        finally:
            assert in_process_relay().stop(10.0), "the relay thread did not stop"
            reset_default_controller()


def test_the_first_outbox_write_starts_the_relay_and_it_delivers(
    in_process: None, dead_app: Celery, records: Records
) -> None:
    marker = new_marker()
    assert not in_process_relay().running
    ctl = AsyncCeleryController(app=dead_app)
    ctl.breaker.force_open()
    try:
        result = ctl.sync.apply_async(
            dead_app.tasks["aceleryctl_tests.record"], (marker,), durable=True
        )
    finally:
        ctl.sync.close(0)
    assert isinstance(result, DeferredResult)
    assert in_process_relay().running
    [entry] = records.wait_for(marker)
    assert entry["task_id"] == result.id
    wait_until(lambda: rows() == [], timeout=15.0, message="the relay to delete the row")


async def test_the_asgi_lifespan_starts_and_stops_the_relay(in_process: None) -> None:
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not a lifespan scope")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    lifespan = asyncio.ensure_future(with_lifespan(app)({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await _until(lambda: sent and sent[-1]["type"] == "lifespan.startup.complete")
    assert in_process_relay().running
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 20.0)
    assert sent[-1]["type"] == "lifespan.shutdown.complete"
    assert not in_process_relay().running


async def _until(condition: Any) -> None:
    await sync_to_async(wait_until, thread_sensitive=False)(
        condition, timeout=10.0, message="the lifespan message"
    )
