"""The Celery app, tasks and ASGI app of the live-events benchmark (bench.events).

Imported by the benchmark's subprocesses only, never by the benchmark process:

* ``celery -A bench._events_app worker``: importing this module sets Django up with
  :mod:`bench._events_settings` (the ``aceleryctl`` app connects its receivers), as
  a project's own Celery module does;
* ``uvicorn bench._events_app:application``: aceleryctl's websocket routes, with the
  session taken from a ``bench_session`` cookie without any database (a stand-in for
  Channels' ``SessionMiddleware``, which is not what is measured here).

The Celery app and the ASGI app are built as the live tests build theirs
(:mod:`tests._support.celery_apps`, :mod:`tests._support.websocket_server`).

URLs come from the environment (``ACELERYCTL_BENCH_BROKER_URL``,
``ACELERYCTL_BENCH_RESULT_BACKEND``). A worker given ``ACELERYCTL_BENCH_READY_FILE``
creates that file once it is ready to consume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import django
from celery import Task
from celery import signals as celery_signals
from django.apps import apps

from tests._support.celery_apps import worker_app
from tests._support.websocket_server import cookie_session_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench._events_settings")
if not apps.ready:
    django.setup()

from aceleryctl import report_progress  # after django.setup()
from bench._events_settings import SESSION_COOKIE

BROKER_ENV = "ACELERYCTL_BENCH_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_BENCH_RESULT_BACKEND"
READY_ENV = "ACELERYCTL_BENCH_READY_FILE"

app = worker_app(
    "aceleryctl_bench_events",
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"),
    result_backend=os.environ.get(BACKEND_ENV, "redis://127.0.0.1:1/1"),
)


@celery_signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    path = os.environ.get(READY_ENV)
    if path:
        Path(path).touch()


@app.task(shared=False, name="bench.events.quick")
def quick(i: int) -> int:
    """Return ``i``: a task whose events are all lifecycle events."""
    return i


def _summary(values_us: list[float]) -> dict[str, float]:
    ordered = sorted(values_us)
    if not ordered:
        return {"n": 0}

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": q(0.5), "p99": q(0.99), "max": ordered[-1]}


@app.task(shared=False, bind=True, name="bench.events.progress")
def progress(
    self: Task[Any, Any], paced: int, gap: float, tight: int, direct: int
) -> dict[str, Any]:
    """Report progress ``paced`` times ``gap`` seconds apart (longer than the throttle's
    interval: each report goes out at once, result-backend write included), then
    ``tight`` times in a tight loop (the throttle holds nearly all of them); then call
    Celery's own ``update_state`` ``direct`` times ``gap`` seconds apart (the write
    that a report sent at once includes). Return how long the calls blocked this
    task, in µs, per phase."""
    total = paced + tight
    sent: list[float] = []
    for i in range(1, paced + 1):
        time.sleep(gap)
        started = time.perf_counter_ns()
        report_progress(self, i, total, "paced")
        sent.append((time.perf_counter_ns() - started) / 1000)
    held: list[float] = []
    for j in range(1, tight + 1):
        started = time.perf_counter_ns()
        report_progress(self, paced + j, total, "tight")
        held.append((time.perf_counter_ns() - started) / 1000)
    bare: list[float] = []
    meta = {"current": total, "total": total, "message": "direct"}
    for _ in range(direct):
        time.sleep(gap)
        started = time.perf_counter_ns()
        self.update_state(state="PROGRESS", meta=meta)
        bare.append((time.perf_counter_ns() - started) / 1000)
    return {"paced_us": _summary(sent), "tight_us": _summary(held), "direct_us": _summary(bare)}


#: Websockets to aceleryctl (with a cookie session); 404 for HTTP.
application = cookie_session_app(SESSION_COOKIE)
