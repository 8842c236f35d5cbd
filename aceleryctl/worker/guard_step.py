"""Installing the run-once guard in a worker: a consumer bootstep that wraps each task's
strategy once Celery has built them, and the settings it is built from.

:func:`install` runs in the worker's main process when it starts (Celery's
``celeryd_init`` or ``worker_init``, through :func:`aceleryctl.signals._on_worker_start`),
before the worker builds its consumer: it reads ``ACELERYCTL["RUN_ONCE"]``
(:mod:`aceleryctl._run_once_settings`), finds the guard's Redis, and adds
:class:`RunOnceStep` to ``app.steps["consumer"]``. When the guard cannot run
(invalid settings, no Redis to keep claims in) it logs one ERROR saying what to
set, and the worker runs its tasks unguarded. :meth:`RunOnceStep.start` runs
after Celery's ``Tasks`` step has filled ``consumer.strategies``, on every
(re)start of the consumer, on the consumer's thread.

A prefork child needs nothing: every decision is taken in the main process, where
messages arrive and are acked. Nothing here raises into Celery.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery, bootsteps
from celery.worker.consumer.tasks import Tasks

from aceleryctl._once import internal
from aceleryctl._run_once_settings import REDIS_URL_SCHEMES, load_run_once
from aceleryctl.compat.celery_consumer import Verdict, message_attempt, wrap_strategy
from aceleryctl.compat.kombu_redis import message_copy
from aceleryctl.worker.guard import Claim, RunOnceGuard, logger
from aceleryctl.worker.guard_store import RedisClaimStore

__all__ = ["GuardSetup", "RunOnceStep", "app_redis_url", "install", "setup_for"]


@dataclass(frozen=True, slots=True)
class GuardSetup:
    """What a worker's guard is built from. Seconds for the TTLs."""

    redis_url: str
    done_ttl: int
    running_ttl: int


#: The decision taken for each app at worker start (``None``: no guard).
_setups: weakref.WeakKeyDictionary[Celery, GuardSetup | None] = weakref.WeakKeyDictionary()

_OPT_OUT: Final = "run_once"


def _as_redis_url(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    first = url.split(";", 1)[0].strip()
    if first.startswith("redis+socket://"):
        first = "unix://" + first.removeprefix("redis+socket://")
    return first if first.startswith(REDIS_URL_SCHEMES) else None


def app_redis_url(app: Celery) -> str | None:
    """The Celery app's result backend URL when it is Redis, else its broker URL when
    that is Redis (the first of a failover list), else ``None``."""
    return _as_redis_url(app.conf.result_backend) or _as_redis_url(app.conf.broker_url)


def _decide(app: Celery) -> GuardSetup | None:
    try:
        settings = load_run_once()
    except Exception as exc:
        logger.error("The run-once guard is off, its setting is invalid: %s", exc)
        return None
    if not settings.enabled:
        return None
    url = settings.redis_url or app_redis_url(app)
    if url is None:
        logger.error(
            "The run-once guard is on but has no Redis to keep its claims in: the Celery "
            "app's result backend and broker are not Redis. Set ACELERYCTL['RUN_ONCE']"
            "['REDIS_URL'] to a redis:// URL (or set ACELERYCTL['RUN_ONCE']['ENABLED'] "
            "to False). Tasks run unguarded: a second copy of a task may run too."
        )
        return None
    limit = app.conf.task_time_limit
    if isinstance(limit, int | float) and limit > settings.running_ttl:
        logger.warning(
            "ACELERYCTL['RUN_ONCE']['RUNNING_TTL'] (%d s) is shorter than the app's "
            "task_time_limit (%s s): a copy arriving while a long task still runs would "
            "run too; raise RUNNING_TTL",
            settings.running_ttl,
            limit,
        )
    return GuardSetup(url, settings.done_ttl, settings.running_ttl)


def install(app: Celery) -> bool:
    """Decide once per app whether its workers guard their tasks, and if so add
    :class:`RunOnceStep` to its consumer blueprint. Idempotent (the second call
    returns the first's answer, without logging again); runs on the worker's main
    thread before its consumer is built. Returns whether the guard is installed."""
    if app in _setups:
        return _setups[app] is not None
    setup = _decide(app)
    _setups[app] = setup
    if setup is not None:
        app.steps["consumer"].add(RunOnceStep)
        logger.info(
            "The run-once guard is on: each (task id, attempt) runs once "
            "(claims kept %d s while running, %d s once done)",
            setup.running_ttl,
            setup.done_ttl,
        )
    return setup is not None


def setup_for(app: Celery) -> GuardSetup | None:
    """The guard :func:`install` decided on for ``app`` (``None``: none)."""
    return _setups.get(app)


class RunOnceStep(bootsteps.StartStopStep):
    """Consumer bootstep: after ``Tasks`` has built ``consumer.strategies``, wrap each
    task's strategy so that a message is claimed before it runs.

    Runs on every (re)start of the consumer (a reconnect rebuilds the strategies),
    on the consumer's thread; wraps a strategy once. A task whose class sets
    ``run_once = False`` is left unguarded.
    """

    requires = (Tasks,)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.guard: RunOnceGuard | None = None

    def start(self, parent: Any) -> None:
        setup = setup_for(parent.app)
        if setup is None:
            return
        if self.guard is None:
            store = RedisClaimStore(setup.redis_url)
            self.guard = RunOnceGuard(
                store,
                hostname=parent.hostname,
                done_ttl=setup.done_ttl,
                running_ttl=setup.running_ttl,
            )
        driver = str(parent.connection.transport.driver_type)
        for name, strategy in list(parent.strategies.items()):
            task = parent.app.tasks.get(name)
            if task is not None and getattr(task, _OPT_OUT, True) is False:
                continue
            parent.strategies[name] = wrap_strategy(
                strategy, _admitter(self.guard, driver), parent.connection_errors
            )


def _admitter(guard: RunOnceGuard, driver: str) -> Any:
    def admit(message: Any, body: Any) -> Verdict | Claim:
        try:
            attempt = message_attempt(message, body)
            if attempt is None:
                return Verdict.RUN
            copy, redelivered = message_copy(message, driver)
            return guard.admit(attempt, copy, redelivered)
        except Exception:  # a bug here must not stop the consumer: run unguarded
            internal.exception("run_once.admit", "aceleryctl's run-once guard failed")
            return Verdict.RUN

    return admit
