"""The Celery app, tasks and ASGI app of the live-events benchmark (bench.events).

Imported by the benchmark's subprocesses only, never by the benchmark process:

* ``celery -A bench._events_app worker``: importing this module sets Django up with
  :mod:`bench._events_settings` (the ``aceleryctl`` app connects its receivers), as
  a project's own Celery module does;
* ``uvicorn bench._events_app:application``: aceleryctl's websocket routes, with the
  session taken from a ``bench_session`` cookie without any database (a stand-in for
  Channels' ``SessionMiddleware``, which is not what is measured here).

URLs come from the environment (``ACELERYCTL_BENCH_BROKER_URL``,
``ACELERYCTL_BENCH_RESULT_BACKEND``). A worker given ``ACELERYCTL_BENCH_READY_FILE``
creates that file once it is ready to consume.
"""

from __future__ import annotations

import os
import time
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import django
from celery import Celery, Task
from celery import signals as celery_signals
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench._events_settings")
if not apps.ready:
    django.setup()

from channels.routing import URLRouter  # after django.setup()

from aceleryctl import report_progress
from aceleryctl.routing import websocket_urlpatterns
from bench._events_settings import SESSION_COOKIE

BROKER_ENV = "ACELERYCTL_BENCH_BROKER_URL"
BACKEND_ENV = "ACELERYCTL_BENCH_RESULT_BACKEND"
READY_ENV = "ACELERYCTL_BENCH_READY_FILE"

app = Celery("aceleryctl_bench_events", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"),
    result_backend=os.environ.get(BACKEND_ENV, "redis://127.0.0.1:1/1"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    enable_utc=True,
    timezone="UTC",
    result_expires=600,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"socket_timeout": 10.0, "socket_connect_timeout": 2.0},
    redis_socket_timeout=10.0,
    redis_socket_connect_timeout=2.0,
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


_router = URLRouter(websocket_urlpatterns)


def _session_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get(SESSION_COOKIE)
            if morsel is not None:
                return morsel.value
    return None


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Websockets to aceleryctl (with a cookie session); 404 for HTTP."""
    if scope["type"] == "websocket":
        scope = dict(scope, session=SimpleNamespace(session_key=_session_key(scope)))
        await _router(scope, receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
