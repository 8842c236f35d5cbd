"""The ACELERYCTL setting: validation, system checks, the default instance and its reset."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import aceleryctl
import aceleryctl.sync
from aceleryctl import conf
from aceleryctl.checks import check_settings


@pytest.fixture(autouse=True)
def fresh_default() -> Any:
    conf.reset_default_controller()
    yield
    conf.reset_default_controller()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"DISPATCH_TIMEOUT": 0}, "ACELERYCTL['DISPATCH_TIMEOUT'] must be a finite number"),
        ({"DISPATCH_TIMEOUT": "2"}, "ACELERYCTL['DISPATCH_TIMEOUT'] must be a number"),
        ({"MAX_WORKERS": 0}, "ACELERYCTL['MAX_WORKERS'] must be a whole number >= 1"),
        ({"MAX_PENDING": 1.5}, "ACELERYCTL['MAX_PENDING'] must be a whole number >= 1"),
        ({"DRAIN_TIMEOUT": float("inf")}, "ACELERYCTL['DRAIN_TIMEOUT']"),
        ({"DISPATCH_TIMOUT": 2}, "unknown key 'DISPATCH_TIMOUT'"),
        ({"REDACT_KEYS": "password"}, "ACELERYCTL['REDACT_KEYS'] must be a list"),
        ({"CELERY_APP": 3}, "ACELERYCTL['CELERY_APP'] must be a dotted path"),
        ({"BREAKER": {"RESET_TIMEOUT": -1}}, "ACELERYCTL['BREAKER']"),
        ({"BREAKER": {"RESET_TIMOUT": 1}}, "unknown key 'RESET_TIMOUT'"),
        ({"BREAKER": []}, "ACELERYCTL['BREAKER'] must be a dict"),
        ({"DIRECT_PUBLISH": "no"}, "ACELERYCTL['DIRECT_PUBLISH'] must be True or False"),
        ({"LOOP_PUBLISH": 1}, "ACELERYCTL['LOOP_PUBLISH'] must be True or False"),
        ({"REPLICA_ACKS": True}, "ACELERYCTL['REPLICA_ACKS'] must be how many Redis replicas"),
        ({"REPLICA_ACKS": -1}, "ACELERYCTL['REPLICA_ACKS'] must be how many Redis replicas"),
        ({"REPLICA_ACKS": "1"}, "ACELERYCTL['REPLICA_ACKS'] must be how many Redis replicas"),
        ({"METRICS": ["statsd"]}, "ACELERYCTL['METRICS'] must be a list of 'prometheus'"),
        ({"METRICS": "prometheus"}, "ACELERYCTL['METRICS'] must be a list of 'prometheus'"),
        ({"LOG_EXCEPTION_CHAIN": 1}, "ACELERYCTL['LOG_EXCEPTION_CHAIN'] must be True or False"),
        ([], "ACELERYCTL must be a dict"),
    ],
)
def test_each_problem_names_the_key(value: Any, fragment: str) -> None:
    with override_settings(ACELERYCTL=value):
        errors = check_settings()
        assert errors, "expected a check error"
        assert all(isinstance(e, Error) and e.id == "aceleryctl.E001" for e in errors)
        assert any(fragment in e.msg for e in errors), [e.msg for e in errors]
        with pytest.raises(ImproperlyConfigured, match="ACELERYCTL"):
            conf.load_settings()


def test_valid_setting_has_no_errors_and_is_loaded() -> None:
    value = {
        "CELERY_APP": "tests.django.celery_fixture:app",
        "DISPATCH_TIMEOUT": 1.5,
        "MAX_WORKERS": 3,
        "MAX_PENDING": 50,
        "DRAIN_TIMEOUT": 2,
        "REDACT_KEYS": ["pin"],
        "BREAKER": {"FAILURE_THRESHOLD": 3, "RESET_TIMEOUT": 1.0},
    }
    with override_settings(ACELERYCTL=value):
        assert check_settings() == []
        loaded = conf.load_settings()
        assert (loaded.dispatch_timeout, loaded.max_workers, loaded.max_pending) == (1.5, 3, 50)
        assert loaded.redact_keys == ("pin",)
        ctl = aceleryctl.controller
        assert ctl.dispatch_timeout == 1.5
        assert ctl.statistics().pool.max_workers == 3
        assert ctl.statistics().breaker.current_reset_timeout == 1.0


def test_direct_publish_can_be_turned_off() -> None:
    base = {"CELERY_APP": "tests.django.celery_fixture:app"}
    with override_settings(ACELERYCTL={**base, "DIRECT_PUBLISH": False}):
        assert conf.load_settings().direct_publish is False
        assert aceleryctl.controller.health()["direct_publish"] is False


def test_loop_publish_is_off_by_default_and_can_be_turned_on() -> None:
    base = {"CELERY_APP": "tests.django.celery_fixture:refused"}  # a Redis URL
    assert conf.load_settings().loop_publish is False
    with override_settings(ACELERYCTL=base):
        assert aceleryctl.controller.health()["loop_publish"] is None
    with override_settings(ACELERYCTL={**base, "LOOP_PUBLISH": True}):
        assert conf.load_settings().loop_publish is True
        assert aceleryctl.controller.health()["loop_publish"] == {
            "enabled": True,
            "loops": 0,
            "reason": "",
        }
    with override_settings(ACELERYCTL={**base, "LOOP_PUBLISH": True, "REPLICA_ACKS": 1}):
        reason = aceleryctl.controller.health()["loop_publish"]["reason"]
        assert "REPLICA_ACKS" in reason


def test_replica_acks_reaches_the_redis_wire() -> None:
    base = {"CELERY_APP": "tests.django.celery_fixture:refused"}  # a Redis URL
    assert conf.load_settings().replica_acks == 0
    with override_settings(ACELERYCTL={**base, "REPLICA_ACKS": 1}):
        assert conf.load_settings().replica_acks == 1
        assert aceleryctl.controller._engine.wire.describe().get("replica_acks") == 1


def test_default_instance_is_built_once_and_rebuilt_after_setting_change() -> None:
    first = conf.default_controller()
    assert conf.default_controller() is first
    assert aceleryctl.controller.dispatch_timeout == first.dispatch_timeout
    changed = {"CELERY_APP": "tests.django.celery_fixture:app", "DISPATCH_TIMEOUT": 0.75}
    with override_settings(ACELERYCTL=changed):
        second = conf.default_controller()
        assert second is not first
        assert aceleryctl.controller.dispatch_timeout == 0.75
        assert aceleryctl.sync.controller.async_controller is second
    assert conf.default_controller() is not second


def test_celery_app_dotted_path_is_imported() -> None:
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture:app"}):
        from tests.django.celery_fixture import app

        assert conf.default_controller().app is app
    with override_settings(ACELERYCTL={"CELERY_APP": "tests.django.celery_fixture.app"}):
        assert conf.default_controller().app is app


def test_close_default_controller_closes_and_forgets() -> None:
    ctl = conf.default_controller()
    assert conf.close_default_controller(timeout=1.0) is True
    assert ctl.closed
    assert conf.default_controller() is not ctl


def test_the_proxy_refuses_assignment() -> None:
    with pytest.raises(AttributeError, match=r"configured through settings\.ACELERYCTL"):
        aceleryctl.controller.dispatch_timeout = 3  # type: ignore[misc]


def test_without_celery_app_an_ambiguous_process_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from celery import Celery, _state

    # Celery makes the first app a process creates its default; a project that
    # created none before (or several, none of them default) is the ambiguous case.
    others = [Celery(f"candidate-{i}", set_as_current=False) for i in range(2)]
    monkeypatch.setattr(_state, "default_app", None)
    outcome: list[BaseException | object] = []

    def resolve() -> None:
        # A fresh thread has no current app of its own: only Celery's fallback.
        try:
            outcome.append(conf.resolve_celery_app())
        except BaseException as exc:
            outcome.append(exc)

    with override_settings(ACELERYCTL={}):
        thread = threading.Thread(target=resolve)
        thread.start()
        thread.join(10)
    [result] = outcome
    assert isinstance(result, ImproperlyConfigured), result
    assert "set ACELERYCTL['CELERY_APP']" in str(result)
    assert others  # kept alive: Celery tracks apps weakly


def test_without_celery_app_the_thread_current_app_is_used() -> None:
    from celery import Celery, _state

    previous = _state._tls.current_app
    app = Celery("current-here", set_as_current=False)
    app.set_current()
    try:
        with override_settings(ACELERYCTL={}):
            assert conf.resolve_celery_app() is app
    finally:
        _state._set_current_app(previous)


def test_the_exception_chain_setting_reaches_the_failure_records() -> None:
    base = {"CELERY_APP": "tests.django.celery_fixture:app"}
    with override_settings(ACELERYCTL=base):
        assert conf.load_settings().log_exception_chain is False
    with override_settings(ACELERYCTL={**base, "LOG_EXCEPTION_CHAIN": True}):
        assert conf.load_settings().log_exception_chain is True
        failures = aceleryctl.controller._engine._failures
        assert failures._redactor.exception_chain is True


def test_a_relative_log_file_is_under_base_dir(tmp_path: Any) -> None:
    from aceleryctl.worker.config import log_file_path

    with override_settings(BASE_DIR=tmp_path):
        assert log_file_path("logs/celery_logs.txt") == str(tmp_path / "logs" / "celery_logs.txt")
        assert log_file_path("/var/log/x.txt") == "/var/log/x.txt"
        assert log_file_path(None) is None
    with override_settings(BASE_DIR=str(tmp_path)):
        assert log_file_path("a.txt") == str(tmp_path / "a.txt")
    import os

    from django.conf import settings

    with override_settings():
        del settings.BASE_DIR
        assert log_file_path("a.txt") == os.path.abspath("a.txt")


def test_metrics_named_in_the_setting_instrument_the_default_controller() -> None:
    pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.metrics")
    from aceleryctl.metrics.otel import OpenTelemetryMetrics
    from aceleryctl.metrics.prometheus import PrometheusMetrics

    base = {"CELERY_APP": "tests.django.celery_fixture:app"}
    with override_settings(ACELERYCTL={**base, "METRICS": ["prometheus", "opentelemetry"]}):
        metrics = (PrometheusMetrics, OpenTelemetryMetrics)

        def kinds() -> list[type]:
            listeners = aceleryctl.controller._engine.listeners
            return [type(item) for item in listeners if isinstance(item, metrics)]

        assert kinds() == [PrometheusMetrics, OpenTelemetryMetrics]
        conf.reset_default_controller()
        # Rebuilt after a change: the same registry's metrics are reused, not re-registered.
        assert kinds() == [PrometheusMetrics, OpenTelemetryMetrics]
    with override_settings(ACELERYCTL=base):
        assert kinds() == []
