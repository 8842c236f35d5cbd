"""The outbox in ``health()``, ``ahealth()``, the health command and the system checks."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from aceleryctl import AsyncCeleryController
from aceleryctl.checks import check_outbox
from aceleryctl.outbox.models import OutboxMessage, RelayHeartbeat
from tests.django import celery_fixture

pytestmark = pytest.mark.django_db(transaction=True)


def _with(outbox: dict[str, object]) -> override_settings:
    return override_settings(ACELERYCTL={**settings.ACELERYCTL, "OUTBOX": outbox})


def test_the_checks_say_where_the_relay_runs_and_which_database() -> None:
    with _with({"ENABLED": True}):
        [warning] = check_outbox()
    assert warning.id == "aceleryctl.W005"
    assert "aceleryctl_relay" in (warning.hint or "")
    with _with({"ENABLED": True, "RELAY": "command", "DATABASE": "nope"}):
        [error] = check_outbox()
    assert error.id == "aceleryctl.E003"
    assert "'nope', which is not in DATABASES" in error.msg
    with _with({"ENABLED": True, "RELAY": "command"}):
        assert check_outbox() == []
    with _with({"ENABLED": False}):
        assert check_outbox() == []


def _seed() -> None:
    from django.utils import timezone

    now = timezone.now()
    common = {
        "task_name": "t",
        "payload": b"{}",
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "reason": "durable",
    }
    OutboxMessage.objects.create(
        task_id="a", created_at=now - timezone.timedelta(seconds=30), available_at=now, **common
    )
    OutboxMessage.objects.create(
        task_id="b", created_at=now, available_at=now, state="dead", **common
    )
    RelayHeartbeat.objects.create(name="r", last_round_at=now - timezone.timedelta(seconds=5))


def test_health_reports_the_outbox_depth_and_the_relay() -> None:
    _seed()
    ctl = AsyncCeleryController(app=celery_fixture.refused)
    try:
        assert ctl.sync.health()["outbox"] == {"enabled": False}
        with _with({"ENABLED": True, "RELAY": "command"}):
            outbox = ctl.sync.health()["outbox"]
    finally:
        ctl.sync.close(0)
    assert (outbox["pending"], outbox["dead"], outbox["relay"]) == (1, 1, "command")
    assert 29 < outbox["oldest_pending_seconds"] < 120
    assert 4 < outbox["relay_last_round_seconds"] < 120
    assert outbox["in_process_relay"] is False


async def test_ahealth_reads_the_outbox_off_the_loop_and_health_says_so() -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(_seed, thread_sensitive=True)()
    ctl = AsyncCeleryController(app=celery_fixture.refused)
    try:
        with _with({"ENABLED": True, "RELAY": "command"}):
            assert "ahealth" in ctl.health()["outbox"]["unread"]
            outbox = (await ctl.ahealth())["outbox"]
    finally:
        await ctl.aclose(0)
    assert (outbox["pending"], outbox["dead"]) == (1, 1)


def test_the_health_command_prints_the_outbox() -> None:
    _seed()
    out = StringIO()
    conf = {
        **settings.ACELERYCTL,
        "CELERY_APP": "tests.django.celery_fixture:refused",
        "OUTBOX": {"ENABLED": True, "RELAY": "command"},
    }
    with override_settings(ACELERYCTL=conf), pytest.raises(CommandError, match="did not answer"):
        call_command("aceleryctl_health", "--json", stdout=out)  # a closed port
    report = json.loads(out.getvalue())
    assert report["outbox"]["pending"] == 1
