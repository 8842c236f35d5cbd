"""A durable dispatch the broker did not take, seen live: ``task.deferred`` when it
is stored, then the relay's ``task.sent`` (order 1) and the worker's events."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from asgiref.sync import sync_to_async
from celery import Celery
from django.conf import settings
from django.test import override_settings

from aceleryctl import AsyncCeleryController, DeferredResult
from aceleryctl.live.sent import LiveEventsListener
from aceleryctl.outbox.relay import Relay
from tests._support._process import free_port

from .conftest import Listener, LiveWorker, expecting

pytestmark = pytest.mark.django_db(transaction=True)

OUTBOX = {"ENABLED": True, "RELAY": "command", "RETRY_BACKOFF": 0.01, "RETRY_BACKOFF_MAX": 0.05}


async def test_a_stored_dispatch_is_deferred_then_sent_by_the_relay(
    live_controller: AsyncCeleryController,
    live_workers: dict[str, LiveWorker],
    listener: Listener,
) -> None:
    worker = live_workers["solo"]
    dead_app = Celery("deferred-live", set_as_current=False)
    dead_app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    dead = AsyncCeleryController(app=dead_app, listeners=[LiveEventsListener()])
    dead.breaker.force_open()
    task_id = str(uuid.uuid4())
    await listener.follow([task_id])
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "OUTBOX": OUTBOX}):
        try:
            result = await dead.send_task(
                "live.quick", (7,), task_id=task_id, queue=worker.queue, durable=True
            )
        finally:
            await dead.aclose(0)
        assert isinstance(result, DeferredResult)
        await listener.collect([task_id], timeout=30, until="task.deferred")
        relay = Relay(live_controller, now=_later)
        done = await sync_to_async(relay.run_once, thread_sensitive=True)()
    assert done.published == 1
    received = await listener.collect(
        [task_id], timeout=60, until=expecting("deferred sent received started succeeded")
    )
    deferred, sent = sorted((r.event for r in received[task_id]), key=lambda e: e.order)[:2]
    assert (deferred.type, deferred.order, deferred.error_type) == (
        "task.deferred",
        0,
        "CircuitOpenError",
    )
    assert (sent.type, sent.order) == ("task.sent", 1)


def _later() -> datetime:
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(seconds=60)
