"""Async Django views: ``await`` the controller, never block the event loop.

Every view that dispatches answers 202 with the task id and a subscription token
(:mod:`demo_site.live`), so the page can watch the task over the websocket.
Dispatch failures become JSON answers that say what the caller may do next,
following aceleryctl's exception hierarchy (:func:`dispatch_error_response`).

The views dispatch with :func:`demo_site.faults.active_controller`: that is
``aceleryctl.controller`` itself unless the page's dead-broker switch is on.

The dispatch buttons are durable unless the request says ``"durable": false``:
``apply_async(..., durable=True)`` stores a dispatch the broker did not take in the
outbox and returns a ``DeferredResult`` (``deferred`` true, ``reason`` the error a
plain call would have raised) instead of raising; the view answers 202 with
``"deferred": true``, and the relay publishes the task later under the same id.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from celery import Task, states
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
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
from demo_site.outbox import outbox_row, relay
from demo_site.tasks import count_words, flaky, long_task, unreliable_fetch

__all__ = [
    "accepted",
    "broker_switch",
    "dispatch_error_response",
    "dispatch_status",
    "index",
    "start_django_task",
    "start_flaky_task",
    "start_long_task",
    "start_retrying_task",
    "task_outbox",
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
    """The task id, where to poll its state and its outbox row, and how to follow it
    live (token)."""
    return {
        "task_id": task_id,
        "task": task,
        "status_url": reverse("task-state", args=[task_id]),
        "outbox_url": reverse("task-outbox", args=[task_id]),
        "page_url": reverse("task-page", args=[task_id]),
        **live_fields(task_id, key),
        **extra,
    }


def accepted(task_id: str, task: str, key: str, **extra: Any) -> JsonResponse:
    """202 Accepted: :func:`accepted_body`."""
    return JsonResponse(accepted_body(task_id, task, key, **extra), status=202)


def deferred_fields(result: Any) -> dict[str, Any]:
    """``{"deferred": True, "reason": ...}`` for a durable dispatch the broker did not
    take (a ``DeferredResult``: stored in the outbox), else ``{}``."""
    if getattr(result, "deferred", False):
        return {"deferred": True, "reason": result.reason}
    return {}


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
        "django_task": reverse("start-django-task"),
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
    config = {
        "task_id": str(task_id),
        "websocket": WEBSOCKET_PATH,
        "outbox_url": reverse("task-outbox", args=[task_id]),
    }
    context = {"task_id": str(task_id), "config": config}
    return render(request, "demo_site/task.html", context)


def _bad_request(exc: ValueError) -> JsonResponse:
    return JsonResponse({"error": "BadRequest", "detail": str(exc)}, status=400)


def _durable(data: dict[str, Any]) -> bool:
    durable = data.get("durable", True)
    if not isinstance(durable, bool):
        raise ValueError("durable must be true or false")
    return durable


async def _dispatch(
    request: HttpRequest, task: Task[Any, Any], args: tuple[Any, ...], durable: bool, **extra: Any
) -> JsonResponse:
    """Dispatch ``task(*args)`` with the switch's controller; 202, or the error's answer."""
    key = await asession_key(request)
    try:
        result = await faults.active_controller().apply_async(task, args, durable=durable)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, task.name, key, durable=durable, **deferred_fields(result), **extra)


@require_POST
async def start_long_task(request: HttpRequest) -> JsonResponse:
    """``POST {"seconds": n, "durable": true}``: start ``long_task(n)``; answers 202
    with its id."""
    try:
        data = _json_object(request)
        durable = _durable(data)
        seconds = data.get("seconds", 5)
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 60:
            raise ValueError("seconds must be a whole number from 1 to 60")
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return _bad_request(exc)
    return await _dispatch(request, long_task, (seconds,), durable, seconds=seconds)


@require_POST
async def start_flaky_task(request: HttpRequest) -> JsonResponse:
    """``POST {"durable": true}``: start ``flaky``, which retries twice and then fails."""
    try:
        durable = _durable(_json_object(request))
    except ValueError as exc:
        return _bad_request(exc)
    return await _dispatch(request, flaky, (), durable)


@require_POST
async def start_retrying_task(request: HttpRequest) -> JsonResponse:
    """``POST {"durable": true}``: start ``unreliable_fetch``, which fails once,
    retries, then succeeds."""
    try:
        durable = _durable(_json_object(request))
    except ValueError as exc:
        return _bad_request(exc)
    return await _dispatch(request, unreliable_fetch, (), durable)


@require_POST
async def start_django_task(request: HttpRequest) -> JsonResponse:
    """``POST {"text": "..."}``: enqueue the Django ``@task`` ``count_words`` with
    ``await count_words.aenqueue(text)``: Django's task framework, on aceleryctl's
    async controller (the same deadline, breaker and errors as ``controller.delay``)."""
    try:
        text = _json_object(request).get("text", "")
        if not isinstance(text, str) or not 1 <= len(text) <= 2_000:
            raise ValueError("text must be a string of 1 to 2,000 characters")
    except ValueError as exc:
        return _bad_request(exc)
    key = await asession_key(request)
    try:
        result = await count_words.aenqueue(text)
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    return accepted(result.id, count_words.module_path, key)


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
async def task_outbox(request: HttpRequest, task_id: UUID) -> JsonResponse:
    """``GET``: the task's row in the outbox, if any (:func:`demo_site.outbox.outbox_row`):
    ``stored`` false once the broker has the task."""
    row = await sync_to_async(outbox_row, thread_sensitive=True)(str(task_id), timezone.now())
    return JsonResponse(row)


@require_GET
async def dispatch_status(request: HttpRequest) -> JsonResponse:
    """``GET``: ``ahealth()`` of the controller the views dispatch with (counters,
    publish pool, circuit breaker, the outbox's depth), whether the relay thread
    runs, and the dead-broker switch's setting."""
    body = await faults.active_controller().ahealth()
    body["relay_running"] = relay.running
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
