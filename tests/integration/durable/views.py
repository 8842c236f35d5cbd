"""The views the durable suite's web servers serve (its ``ROOT_URLCONF``).

Each creates a user named after the marker in the URL and dispatches
``record(marker)`` on commit, in one transaction; the ``rollback`` views then
raise, so that the transaction rolls back. ``/async/...`` views are for the ASGI
server (the transaction entered on the thread-sensitive thread, where Django keeps
an async caller's transactions); ``/sync/...`` views for the WSGI server. Each
answers ``{"task_id": ...}``: 200 when committed, 409 when rolled back.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path

from aceleryctl import controller
from tests._support.transactions import async_atomic
from tests.integration.celery_app import record


class Rollback(Exception):
    """Raised inside the transaction to roll it back; carries the task id."""


async def async_dispatch(request: HttpRequest, marker: str, outcome: str) -> JsonResponse:
    try:
        async with async_atomic():
            await User.objects.acreate(username=marker)
            result = await controller.delay_on_commit(record, marker)
            if outcome == "rollback":
                raise Rollback(result.id)
    except Rollback as exc:
        return JsonResponse({"task_id": str(exc)}, status=409)
    return JsonResponse({"task_id": result.id})


def sync_dispatch(request: HttpRequest, marker: str, outcome: str) -> JsonResponse:
    try:
        with transaction.atomic():
            User.objects.create(username=marker)
            result = controller.sync.delay_on_commit(record, marker)
            if outcome == "rollback":
                raise Rollback(result.id)
    except Rollback as exc:
        return JsonResponse({"task_id": str(exc)}, status=409)
    return JsonResponse({"task_id": result.id})


urlpatterns = [
    path("async/<str:outcome>/<str:marker>", async_dispatch),
    path("sync/<str:outcome>/<str:marker>", sync_dispatch),
]
