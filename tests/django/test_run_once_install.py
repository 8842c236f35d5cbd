"""Installing the run-once guard when a worker starts: the decision per app (on, off,
no Redis, invalid setting), the Redis it picks, the worker-start hook, and the
consumer bootstep wrapping each task's strategy once per consumer start.

No worker runs here (``tests/integration/run_once`` runs real ones); the bootstep
is started on a stand-in consumer, and nothing connects to Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings

from aceleryctl import signals
from aceleryctl.compat.celery_consumer import is_wrapped
from aceleryctl.worker import guard_step
from aceleryctl.worker.guard_step import RunOnceStep, app_redis_url, install, setup_for

GUARD_LOGGER = "aceleryctl.guard"


def run_once(**section: Any) -> Any:
    return override_settings(ACELERYCTL={**settings.ACELERYCTL, "RUN_ONCE": section})


@pytest.fixture
def make_app() -> Iterator[Any]:
    made: list[Celery] = []

    def make(broker: str = "redis://127.0.0.1:1/0", backend: str | None = None) -> Celery:
        app = Celery("guard-install", set_as_current=False, broker=broker, backend=backend)

        @app.task(shared=False, name="g.plain")
        def plain() -> None:
            return None

        @app.task(shared=False, name="g.opted_out", run_once=False)
        def opted_out() -> None:
            return None

        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == GUARD_LOGGER and r.levelno == level]


def test_on_it_adds_the_bootstep_once_and_says_so(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, GUARD_LOGGER)
    app = make_app(backend="redis://127.0.0.1:1/5")
    with run_once(ENABLED=True, RUNNING_TTL=600):
        assert install(app) is True
        assert install(app) is True
    assert RunOnceStep in app.steps["consumer"]
    setup = setup_for(app)
    assert setup is not None
    assert (setup.redis_url, setup.running_ttl, setup.done_ttl) == (
        "redis://127.0.0.1:1/5",
        600,
        86_400,
    )
    assert len(records(caplog, logging.INFO)) == 1
    assert "run-once guard is on" in records(caplog, logging.INFO)[0]


@pytest.mark.parametrize("section", [{}, {"ENABLED": False}, {"ENABLED": None}])
def test_off_adds_nothing(make_app: Any, caplog: pytest.LogCaptureFixture, section: Any) -> None:
    app = make_app()
    with run_once(**section):
        assert install(app) is False
    assert RunOnceStep not in app.steps["consumer"]
    assert records(caplog, logging.ERROR) == []


def test_the_outbox_turns_it_on(make_app: Any) -> None:
    app = make_app()
    value = {**settings.ACELERYCTL, "OUTBOX": {"ENABLED": True}, "RUN_ONCE": {}}
    with override_settings(ACELERYCTL=value):
        assert install(app) is True


def test_without_redis_anywhere_it_logs_what_to_set_and_stays_off(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(broker="amqp://guest@127.0.0.1:1//", backend="rpc://")
    with run_once(ENABLED=True):
        assert install(app) is False
        assert install(app) is False
    assert RunOnceStep not in app.steps["consumer"]
    [error] = records(caplog, logging.ERROR)
    assert "Set ACELERYCTL['RUN_ONCE']['REDIS_URL'] to a redis:// URL" in error
    assert "Tasks run unguarded" in error


def test_an_explicit_redis_url_serves_any_broker(make_app: Any) -> None:
    app = make_app(broker="amqp://guest@127.0.0.1:1//", backend="rpc://")
    with run_once(ENABLED=True, REDIS_URL="redis://127.0.0.1:1/9"):
        assert install(app) is True
    setup = setup_for(app)
    assert setup is not None
    assert setup.redis_url == "redis://127.0.0.1:1/9"


def test_an_invalid_setting_is_logged_and_leaves_it_off(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    with run_once(ENABLED=True, RUNNING_TTL="an hour"):
        assert install(app) is False
    [error] = records(caplog, logging.ERROR)
    assert "ACELERYCTL['RUN_ONCE']['RUNNING_TTL'] must be a whole number of seconds" in error


def test_a_time_limit_beyond_running_ttl_is_warned_about(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    app.conf.task_time_limit = 7_200
    with run_once(ENABLED=True):
        assert install(app) is True
    [warning] = records(caplog, logging.WARNING)
    assert "RUNNING_TTL'] (3600 s) is shorter than the app's task_time_limit (7200 s)" in warning


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("redis://b:6379/0", "redis://r:6379/1", "redis://r:6379/1"),
        ("redis://b:6379/0", "rpc://", "redis://b:6379/0"),
        ("rediss://b:6380/0", None, "rediss://b:6380/0"),
        ("redis://b1:6379/0;redis://b2:6379/0", "db+sqlite:///r.db", "redis://b1:6379/0"),
        ("amqp://h//", "redis+socket:///run/redis.sock", "unix:///run/redis.sock"),
        ("amqp://h//", "rpc://", None),
        ("sentinel://h:26379", None, None),
    ],
)
def test_the_apps_own_redis(broker: str, backend: str | None, expected: str | None) -> None:
    app = Celery("urls", set_as_current=False, broker=broker, backend=backend)
    assert app_redis_url(app) == expected
    app.close()


def test_the_worker_start_hook_installs_it_from_either_main_process_signal(
    make_app: Any,
) -> None:
    celeryd_app, worker_app = make_app(), make_app()
    with run_once(ENABLED=True):
        # celeryd_init: sender is the hostname, the worker is ``instance``.
        signals._on_worker_start(sender="w@h", instance=SimpleNamespace(app=celeryd_app))
        # worker_init: sender is the WorkController.
        signals._on_worker_start(sender=SimpleNamespace(app=worker_app))
        # worker_process_init (a prefork child): no app, nothing to install.
        signals._on_worker_start(sender=None)
    assert RunOnceStep in celeryd_app.steps["consumer"]
    assert RunOnceStep in worker_app.steps["consumer"]


def consumer_of(app: Celery, driver: str = "redis") -> Any:
    return SimpleNamespace(
        app=app,
        hostname="w@h",
        connection=SimpleNamespace(transport=SimpleNamespace(driver_type=driver)),
        connection_errors=(),
        strategies={name: (lambda *a: None) for name in app.tasks},
    )


def test_the_bootstep_wraps_each_strategy_once_per_consumer_start(make_app: Any) -> None:
    app = make_app()
    with run_once(ENABLED=True):
        install(app)
    consumer = consumer_of(app)
    step = RunOnceStep(consumer)
    step.start(consumer)
    wrapped = dict(consumer.strategies)
    assert is_wrapped(wrapped["g.plain"])
    assert is_wrapped(wrapped["celery.chord_unlock"])  # Celery's own tasks too
    assert not is_wrapped(wrapped["g.opted_out"])  # run_once = False
    guard = step.guard
    assert guard is not None
    assert guard.hostname == "w@h"
    assert (guard.done_ttl, guard.running_ttl) == (86_400, 3_600)

    step.start(consumer)  # started again without a rebuild: nothing wrapped twice
    assert consumer.strategies == wrapped
    # A reconnect: Tasks rebuilds the strategies, and the step wraps the new ones.
    consumer.strategies = {name: (lambda *a: None) for name in app.tasks}
    step.start(consumer)
    assert is_wrapped(consumer.strategies["g.plain"])
    assert consumer.strategies["g.plain"] is not wrapped["g.plain"]
    assert step.guard is guard  # one guard (and one Redis client) per consumer


def test_the_bootstep_does_nothing_for_an_app_without_the_guard(make_app: Any) -> None:
    app = make_app()
    consumer = consumer_of(app)
    before = dict(consumer.strategies)
    RunOnceStep(consumer).start(consumer)
    assert consumer.strategies == before
    assert guard_step.setup_for(app) is None
