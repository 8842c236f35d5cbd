"""System checks for unbounded Celery settings, health(), probe() and the command."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from aceleryctl import AsyncCeleryController, conf
from aceleryctl.checks import check_celery_bounds
from aceleryctl.exceptions import BrokerError
from tests.django import celery_fixture


def ids(messages: list[object]) -> list[str]:
    return [m.id for m in messages]  # type: ignore[attr-defined]


def test_unbounded_redis_settings_warn_with_the_setting_to_change() -> None:
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:unbounded"}):
        [warning] = check_celery_bounds()
    assert warning.id == "aceleryctl.W001"
    assert "socket_timeout or socket_connect_timeout" in warning.msg
    assert "CELERY_BROKER_TRANSPORT_OPTIONS" in (warning.hint or "")


def test_bounded_settings_pass_and_other_brokers_warn() -> None:
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:refused"}):
        assert check_celery_bounds() == []
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:other"}):
        assert ids(check_celery_bounds()) == ["aceleryctl.W002"]
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.nowhere:app"}):
        assert ids(check_celery_bounds()) == ["aceleryctl.E002"]


def test_rabbitmq_is_supported_and_warns_only_where_a_setting_defeats_a_promise() -> None:
    def checked(name: str) -> list[object]:
        with override_settings(ACELERYCTL={"CELERY_APP": f"tests.django.celery_fixture:{name}"}):
            return check_celery_bounds()

    assert checked("amqp_bounded") == []
    [unbounded] = checked("amqp")  # Celery's defaults: no read or write timeout
    assert unbounded.id == "aceleryctl.W001"  # type: ignore[attr-defined]
    assert "read_timeout or write_timeout" in unbounded.msg  # type: ignore[attr-defined]
    [unconfirmed] = checked("amqp_unconfirmed")
    assert unconfirmed.id == "aceleryctl.W001"  # type: ignore[attr-defined]
    assert "confirm_publish=False" in unconfirmed.msg  # type: ignore[attr-defined]


def test_forever_publish_retry_warns() -> None:
    app = celery_fixture.refused
    app.conf.task_publish_retry_policy = {"max_retries": None}
    try:
        with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:refused"}):
            assert ids(check_celery_bounds()) == ["aceleryctl.W001"]
    finally:
        app.conf.task_publish_retry_policy = {"max_retries": 3}


def test_health_is_json_ready_and_follows_the_breaker() -> None:
    ctl = AsyncCeleryController(celery_fixture.app, max_workers=1)
    try:
        health = ctl.health()
        assert json.loads(json.dumps(health)) == health
        assert health["ok"] is True
        assert health["breaker"]["state"] == "closed"
        assert health["pool"]["max_workers"] == 1
        assert health["bounded_transport"] is True
        ctl.breaker.force_open()
        assert ctl.health()["ok"] is False
        assert ctl.health()["breaker"]["state"] == "forced_open"
    finally:
        ctl.sync.close()


def test_probe_reports_connect_time_and_refusal(caplog: pytest.LogCaptureFixture) -> None:
    ok = AsyncCeleryController(celery_fixture.app, max_workers=1)
    refused = AsyncCeleryController(celery_fixture.refused, max_workers=1, dispatch_timeout=0.5)
    try:
        assert ok.sync.probe() >= 0.0
        with pytest.raises(BrokerError, match="nothing was sent") as info:
            refused.sync.probe()
        assert info.value.message_may_exist is False
        # The cause is the broker's own error, never aceleryctl's internal marker.
        assert type(info.value.__cause__).__module__.startswith(("kombu", "redis"))
        # Probes are neither dispatches nor failures, and are not logged.
        for ctl in (ok, refused):
            stats = ctl.statistics()
            assert (stats.dispatched, stats.failed) == (0, 0)
        assert not [r for r in caplog.records if r.name == "aceleryctl.controller"]
        assert refused.breaker.statistics().total_failures == 0  # probes never count
    finally:
        ok.sync.close()
        refused.sync.close()


def test_health_command_json_and_exit_status() -> None:
    out = StringIO()
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:app"}):
        call_command("aceleryctl_health", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["reachable"] is True
    assert report["broker"].startswith("memory://")
    with (
        override_settings(
            ACELERYCTL={
                "CELERY_APP": "tests.django.celery_fixture:refused",
                "DISPATCH_TIMEOUT": 0.5,
            }
        ),
        pytest.raises(CommandError, match="did not answer"),
    ):
        call_command("aceleryctl_health", stdout=StringIO())
    conf.reset_default_controller()


@pytest.mark.parametrize(("force", "state"), [("open", "forced_open"), ("closed", "forced_closed")])
def test_breaker_forced_by_settings_warns_and_applies(force: str, state: str) -> None:
    from aceleryctl.checks import check_forced_breaker

    value = {"CELERY_APP": "tests.django.celery_fixture:app", "BREAKER": {"FORCE": force}}
    with override_settings(ACELERYCTL=value):
        [warning] = check_forced_breaker()
        assert warning.id == "aceleryctl.W004"
        assert f"is {force!r}" in warning.msg
        ctl = conf.default_controller()
        assert ctl.health()["breaker"]["state"] == state
    conf.reset_default_controller()


def test_bad_force_value_names_the_key() -> None:
    from aceleryctl.checks import check_settings

    value = {"BREAKER": {"FORCE": "half"}}
    with override_settings(ACELERYCTL=value):
        messages = [m.msg for m in check_settings()]
    assert any(
        "ACELERYCTL['BREAKER']['FORCE'] must be 'open', 'closed' or None" in m for m in messages
    )
