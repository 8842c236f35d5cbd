"""The Celery app of the live-events tests: a Django project's worker, in small.

The worker runs ``celery -A tests.integration.live.worker_app worker``; importing
this module sets Django up with :mod:`tests.integration.live.worker_settings` (the
``aceleryctl`` app connects its receivers when ready), as a project's own Celery
module does. The test process imports it too, for the task objects; there Django is
already set up (``tests.settings``) and is left alone.

URLs come from the environment (``ACELERYCTL_LIVE_BROKER_URL``,
``ACELERYCTL_LIVE_RESULT_BACKEND``); the test process calls :func:`configure`.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import django
from celery import Task
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.live.worker_settings")
if not apps.ready:
    django.setup()

from aceleryctl import signals  # after Django is set up
from tests._support.celery_apps import configure_env_app, env_worker_app

__all__ = [
    "BrokenPromise",
    "Flaky",
    "app",
    "configure",
    "explode",
    "journey",
    "linger",
    "quick",
    "quiet_tail",
    "spam",
]

BROKER_ENV = "ACELERYCTL_LIVE_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_LIVE_RESULT_BACKEND"
ENV = {"broker_env": BROKER_ENV, "backend_env": BACKEND_ENV}

app = env_worker_app("aceleryctl_live", **ENV, dbs=(3, 4))


def configure(*, broker_url: str, result_backend: str) -> None:
    """Point the app at the session's Redis; call before the app is first used."""
    configure_env_app(app, **ENV, broker_url=broker_url, result_backend=result_backend)


class Flaky(Exception):
    """Raised (and retried) by :func:`journey`."""


class BrokenPromise(Exception):
    """Raised by :func:`explode`."""


@app.task(shared=False, bind=True, name="live.journey", max_retries=3)
def journey(self: Task[Any, Any], steps: int, failures: int) -> dict[str, Any]:
    """Report ``steps`` progress steps, then fail and retry ``failures`` times
    (reason with URL credentials), then succeed with a result holding a secret."""
    for step in range(1, steps + 1):
        signals.report_progress(self, step, steps, f"step {step} of {steps}")
    if self.request.retries < failures:
        raise self.retry(
            exc=Flaky(
                f"try again: redis://admin:hunter2@cache:6379/0 (attempt {self.request.retries})"
            ),
            countdown=0.05,
        )
    return {"done": True, "attempts": self.request.retries + 1, "api_token": "tok-planted-result"}


@app.task(shared=False, bind=True, name="live.explode")
def explode(self: Task[Any, Any], user: str, launch_code: str) -> None:
    """Fail with a message that embeds URL credentials (never the code itself)."""
    raise BrokenPromise(f"cannot reach redis://{user}:pw-in-url@db:6379/0 for {user}")


@app.task(shared=False, name="live.quick")
def quick(i: int) -> int:
    """Return ``i``."""
    return i


@app.task(shared=False, bind=True, name="live.spam")
def spam(self: Task[Any, Any], calls: int, spaced: int, gap: float) -> dict[str, Any]:
    """Report progress ``calls`` times in a tight loop, then ``spaced`` more times
    ``gap`` seconds apart; return how long each report blocked the task (µs)."""
    tight: list[float] = []
    for i in range(1, calls + 1):
        started = time.perf_counter_ns()
        signals.report_progress(self, i, calls + spaced, "tight")
        tight.append((time.perf_counter_ns() - started) / 1000)
    slow: list[float] = []
    for j in range(1, spaced + 1):
        time.sleep(gap)
        started = time.perf_counter_ns()
        signals.report_progress(self, calls + j, calls + spaced, "spaced")
        slow.append((time.perf_counter_ns() - started) / 1000)
    return {
        "tight_p50_us": statistics.median(tight) if tight else None,
        "tight_max_us": max(tight) if tight else None,
        "spaced_p50_us": statistics.median(slow) if slow else None,
        "all_p50_us": statistics.median(tight + slow),
    }


@app.task(shared=False, bind=True, name="live.quiet_tail")
def quiet_tail(self: Task[Any, Any], quiet: float) -> str:
    """Report twice at once (the second is held), then work ``quiet`` seconds
    without reporting: the held report must go out during the quiet part."""
    signals.report_progress(self, 1, 2, "first")
    signals.report_progress(self, 2, 2, "second, held")
    time.sleep(quiet)
    return "done"


@app.task(shared=False, bind=True, name="live.linger")
def linger(self: Task[Any, Any], seconds: float) -> str:
    """Report once, then sleep (to be revoked with terminate=True)."""
    signals.report_progress(self, 0, 1, "lingering")
    time.sleep(seconds)
    return "lingered"
