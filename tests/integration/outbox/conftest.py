"""Fixtures for the outbox tests: the outbox switched on, a controller whose broker
is a closed port, rows read back, and a relay on the live broker."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from celery import Celery
from django.conf import settings
from django.db import connections
from django.test import override_settings

from aceleryctl import AsyncCeleryController
from aceleryctl.outbox.config import OutboxSettings, outbox_settings
from aceleryctl.outbox.models import OutboxMessage
from aceleryctl.outbox.relay import Relay, RelayRound
from aceleryctl.outbox.rows import row_writer
from tests._support._process import free_port
from tests._support.redis_server import RedisServer
from tests.integration._helpers import isolated_app

#: ``ACELERYCTL["OUTBOX"]`` for these tests: short backoffs so a relay round can
#: take a failed row at once; the hand-off grace stays long (rows a test leaves to
#: its own after-commit publish are not taken by a relay).
OUTBOX: dict[str, Any] = {
    "ENABLED": True,
    "RETRY_BACKOFF": 0.01,
    "RETRY_BACKOFF_MAX": 0.05,
    "HANDOFF_GRACE": 30.0,
    "MAX_ATTEMPTS": 3,
}


@pytest.fixture
def outbox_on() -> Iterator[OutboxSettings]:
    """The outbox switched on (``ACELERYCTL["OUTBOX"]``) for the test."""
    with override_settings(ACELERYCTL={**settings.ACELERYCTL, "OUTBOX": OUTBOX}):
        yield outbox_settings()


@pytest.fixture
def dead_app(redis_server: RedisServer) -> Celery:
    """An app whose broker is a closed port on 127.0.0.1 (connects are refused)."""
    return isolated_app("outbox-dead", f"redis://127.0.0.1:{free_port()}/0", redis_server.url(1))


@pytest.fixture
async def dead_controller(dead_app: Celery) -> AsyncIterator[AsyncCeleryController]:
    """A controller on :func:`dead_app`, closed after the test."""
    ctl = AsyncCeleryController(app=dead_app, dispatch_timeout=2.0)
    try:
        yield ctl
    finally:
        await asyncio.wait_for(ctl.aclose(), timeout=15.0)
        gc.collect()


@pytest.fixture
async def close_thread_sensitive_connections() -> AsyncIterator[None]:
    """Close the database connection the thread-sensitive thread opened."""
    yield
    await sync_to_async(connections.close_all, thread_sensitive=True)()


def rows() -> list[OutboxMessage]:
    """Every outbox row, oldest first (calling thread; flushes the row writer first)."""
    assert row_writer().flush(10.0), "the outbox row writer did not finish"
    return list(OutboxMessage.objects.order_by("pk"))


async def arows() -> list[OutboxMessage]:
    """:func:`rows` from async code."""
    return await sync_to_async(rows, thread_sensitive=True)()


def relay_round(controller: AsyncCeleryController, *, ahead: float = 3600.0) -> RelayRound:
    """One relay round through ``controller`` (calling thread), its clock ``ahead``
    seconds in the future, so that rows waiting out a backoff or the hand-off grace
    are due."""
    from django.utils import timezone

    relay = Relay(
        controller,
        settings=outbox_settings(),
        now=lambda: timezone.now() + timedelta(seconds=ahead),
    )
    return relay.run_once()
