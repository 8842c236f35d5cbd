"""Async Django views: ``await`` the default controller, never block the event loop.

Dispatch failures become JSON answers that say what the caller may do next, following
aceleryctl's exception hierarchy (:func:`dispatch_error_response`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from typing import Any
from uuid import UUID

from celery import states
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from aceleryctl import (
    CircuitOpenError,
    DispatchRejected,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
    controller,
)
from demo_site.celery_app import app as celery_app
from demo_site.tasks import flaky, long_task

__all__ = [
    "dispatch_error_response",
    "dispatch_status",
    "index",
    "start_flaky_task",
    "start_long_task",
    "task_state",
]


def dispatch_error_response(exc: TaskDispatchError) -> JsonResponse:
    """A JSON answer for a failed dispatch, with the status code that fits it."""
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc), "task": exc.task_name}
    if isinstance(exc, DispatchTimeout):
        # The message may still reach the broker: tell the client the id to look for.
        body["task_id"] = exc.task_id
        body["outcome"] = "unknown"
        return JsonResponse(body, status=504)
    if isinstance(exc, TaskSerializationError):
        return JsonResponse(body, status=500)
    response = JsonResponse(body, status=503)
    if isinstance(exc, CircuitOpenError):
        response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, DispatchRejected):
        response["Retry-After"] = "1"
    return response


def accepted(task_id: str, task: str, **extra: Any) -> JsonResponse:
    """202 Accepted with the task id and where to poll its state."""
    body = {"task_id": task_id, "task": task, "status_url": reverse("task-state", args=[task_id])}
    return JsonResponse(body | extra, status=202)


def _json_object(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    data = json.loads(request.body)
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return data


def index(request: HttpRequest) -> HttpResponse:
    """The demo page (plain HTML and a little JavaScript)."""
    return render(request, "demo_site/index.html")


@require_POST
async def start_long_task(request: HttpRequest) -> JsonResponse:
    """``POST {"seconds": n}``: start ``long_task(n)``; answers 202 with its id."""
    try:
        seconds = _json_object(request).get("seconds", 5)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 60:
            raise ValueError("seconds must be a whole number from 1 to 60")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return JsonResponse({"error": "BadRequest", "detail": str(exc)}, status=400)
    try:
        result = await controller.delay(long_task, seconds)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, long_task.name, seconds=seconds)


@require_POST
async def start_flaky_task(request: HttpRequest) -> JsonResponse:
    """``POST``: start ``flaky``, which retries twice and then fails."""
    try:
        result = await controller.delay(flaky)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, flaky.name)


def _read_state(task_id: str) -> dict[str, Any]:
    # One read of the result backend (blocking I/O: run off the event loop).
    meta: dict[str, Any] = celery_app.backend.get_task_meta(task_id)
    state: str = meta["status"]
    info = meta.get("result")
    body: dict[str, Any] = {
        "task_id": task_id,
        "state": state,
        "ready": state in states.READY_STATES,
        "progress": None,
        "result": None,
        "error": None,
    }
    if isinstance(info, BaseException):
        body["error"] = f"{type(info).__name__}: {info}"
    elif state == states.SUCCESS:
        body["result"] = info
    if isinstance(info, dict) and state in ("PROGRESS", states.SUCCESS):
        current, total = info.get("current"), info.get("total")
        if isinstance(current, int) and isinstance(total, int) and total > 0:
            body["progress"] = {"current": current, "total": total}
    return body


@require_GET
async def task_state(request: HttpRequest, task_id: UUID) -> JsonResponse:
    """``GET``: a task's state, progress, result or error, read from the result backend."""
    return JsonResponse(await asyncio.to_thread(_read_state, str(task_id)))


@require_GET
async def dispatch_status(request: HttpRequest) -> JsonResponse:
    """``GET``: the controller's counters, publish pool and circuit breaker, as JSON."""
    stats = controller.statistics()
    body = dataclasses.asdict(stats)
    body["breaker"]["state"] = stats.breaker.state.value
    return JsonResponse(body)
