"""Async Django views: ``await`` the controller, never block the event loop.

Every view that dispatches answers 202 with the task id and a subscription token
(:mod:`demo_site.live`), so the page can watch the task over the websocket.
Dispatch failures become JSON answers that say what the caller may do next,
following aceleryctl's exception hierarchy (:func:`dispatch_error_response`).

The views dispatch with :func:`demo_site.faults.active_controller`: that is
``aceleryctl.controller`` itself unless the page's dead-broker switch is on.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any
from uuid import UUID

from celery import states
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from aceleryctl import (
    BrokerError,
    CircuitOpenError,
    DispatchRejected,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
)
from demo_site import faults
from demo_site.celery_app import app as celery_app
from demo_site.live import WEBSOCKET_PATH, asession_key, live_fields, session_key
from demo_site.tasks import flaky, long_task, unreliable_fetch

__all__ = [
    "accepted",
    "broker_switch",
    "dispatch_error_response",
    "dispatch_status",
    "index",
    "start_flaky_task",
    "start_long_task",
    "start_retrying_task",
    "task_page",
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
        body["outcome"] = "not sent"
        return JsonResponse(body, status=500)
    if isinstance(exc, BrokerError):
        body["outcome"] = "unknown" if exc.message_may_exist else "not sent"
        return JsonResponse(body, status=503)
    body["outcome"] = "not sent"  # DispatchRejected: safe to retry later
    retry_after = 1
    if isinstance(exc, CircuitOpenError):
        body["retry_after"] = round(exc.retry_after, 1)
        retry_after = max(1, math.ceil(exc.retry_after))
    response = JsonResponse(body, status=503)
    if isinstance(exc, DispatchRejected):
        response["Retry-After"] = str(retry_after)
    return response


def accepted_body(task_id: str, task: str, key: str, **extra: Any) -> dict[str, Any]:
    """The task id, where to poll its state, and how to follow it live (token)."""
    return {
        "task_id": task_id,
        "task": task,
        "status_url": reverse("task-state", args=[task_id]),
        "page_url": reverse("task-page", args=[task_id]),
        **live_fields(task_id, key),
        **extra,
    }


def accepted(task_id: str, task: str, key: str, **extra: Any) -> JsonResponse:
    """202 Accepted: :func:`accepted_body`."""
    return JsonResponse(accepted_body(task_id, task, key, **extra), status=202)


def _json_object(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    data = json.loads(request.body)
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return data


def index(request: HttpRequest) -> HttpResponse:
    """The demo page (plain HTML, CSS and JavaScript, and aceleryctl's client)."""
    session_key(request)  # tokens are bound to the session: make sure there is one
    urls = {
        "long": reverse("start-long-task"),
        "retrying": reverse("start-retrying-task"),
        "flaky": reverse("start-flaky-task"),
        "report": reverse("reports"),
        "add": reverse("scheduled-add"),
        "status": reverse("dispatch-status"),
        "switch": reverse("broker-switch"),
    }
    context = {
        "fault_switch": settings.DEMO_FAULT_SWITCH,
        "modes": [(name, faults.describe(name)) for name in faults.MODES],
        "mode": faults.mode(),
        "config": {"urls": urls, "websocket": WEBSOCKET_PATH},
    }
    return render(request, "demo_site/index.html", context)


def task_page(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """One task, followed live. The token comes in the URL's fragment (``#token=``),
    which browsers never send to the server, so it stays out of access logs."""
    config = {"task_id": str(task_id), "websocket": WEBSOCKET_PATH}
    context = {"task_id": str(task_id), "config": config}
    return render(request, "demo_site/task.html", context)


@require_POST
async def start_long_task(request: HttpRequest) -> JsonResponse:
    """``POST {"seconds": n}``: start ``long_task(n)``; answers 202 with its id."""
    try:
        seconds = _json_object(request).get("seconds", 5)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 60:
            raise ValueError("seconds must be a whole number from 1 to 60")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return JsonResponse({"error": "BadRequest", "detail": str(exc)}, status=400)
    key = await asession_key(request)
    try:
        result = await faults.active_controller().delay(long_task, seconds)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, long_task.name, key, seconds=seconds)


@require_POST
async def start_flaky_task(request: HttpRequest) -> JsonResponse:
    """``POST``: start ``flaky``, which retries twice and then fails."""
    key = await asession_key(request)
    try:
        result = await faults.active_controller().delay(flaky)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, flaky.name, key)


@require_POST
async def start_retrying_task(request: HttpRequest) -> JsonResponse:
    """``POST``: start ``unreliable_fetch``, which fails once, retries, then succeeds."""
    key = await asession_key(request)
    try:
        result = await faults.active_controller().delay(unreliable_fetch)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, unreliable_fetch.name, key)


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
        if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
            body["progress"] = {"current": current, "total": total, "message": info.get("message")}
    return body


@require_GET
async def task_state(request: HttpRequest, task_id: UUID) -> JsonResponse:
    """``GET``: a task's state, progress, result or error, read from the result backend."""
    return JsonResponse(await asyncio.to_thread(_read_state, str(task_id)))


@require_GET
async def dispatch_status(request: HttpRequest) -> JsonResponse:
    """``GET``: ``health()`` of the controller the views dispatch with (counters,
    publish pool, circuit breaker), and the dead-broker switch's setting."""
    body = faults.active_controller().health()
    body["broker_mode"] = faults.mode()
    body["broker_description"] = faults.describe()
    body["fault_switch"] = settings.DEMO_FAULT_SWITCH
    return JsonResponse(body)


@require_http_methods(["GET", "POST"])
async def broker_switch(request: HttpRequest) -> JsonResponse:
    """``GET``: the dead-broker switch. ``POST {"mode": "live"|"refusing"|"silent"}``:
    set it (403 unless ``settings.DEMO_FAULT_SWITCH``; CSRF-checked)."""
    if request.method == "POST":
        if not settings.DEMO_FAULT_SWITCH:
            body = {"error": "Forbidden", "detail": "the dead-broker switch is off on this site"}
            return JsonResponse(body, status=403)
        try:
            wanted = _json_object(request).get("mode")
            if wanted not in faults.MODES:
                raise ValueError(f"mode must be one of {', '.join(faults.MODES)}")
        except ValueError as exc:
            return JsonResponse({"error": "BadRequest", "detail": str(exc)}, status=400)
        faults.set_mode(wanted)
    return JsonResponse(
        {
            "mode": faults.mode(),
            "description": faults.describe(),
            "modes": list(faults.MODES),
            "enabled": settings.DEMO_FAULT_SWITCH,
        }
    )
