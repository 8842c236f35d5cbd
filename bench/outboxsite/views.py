"""The views of ``python -m bench.http_outbox``: each writes one ``Order`` in a
transaction and dispatches ``add(order.pk, order.number)`` on commit, or does not.

Django has no async ``atomic()``, so each async view runs its transaction in a
sync function through ``sync_to_async`` (thread-sensitive, the default: the
request's own thread, as Django runs a request's sync code); the database
connection comes from the pool and goes back to it when Django ends the request
(``request_finished``). Which Celery app and whether aceleryctl's outbox is on
come from the process's variant (:mod:`bench.outboxsite.settings`): the same
``/controller`` view is the outbox in one server and plain on-commit dispatch in
the other. Each view answers ``ok`` (200); aceleryctl's answers 503 with the
error's name on a ``TaskDispatchError`` (nothing was committed then).
"""

from __future__ import annotations

import itertools

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from aceleryctl import TaskDispatchError, controller
from bench.outboxsite.models import Order
from bench.outboxsite.tasks import add

#: Order numbers: ``next()`` on ``itertools.count`` is atomic under the GIL.
_numbers = itertools.count(1)


def _ok() -> HttpResponse:
    response = HttpResponse(b"ok", content_type="text/plain")
    response["Content-Length"] = "2"
    return response


def _failed(exc: TaskDispatchError) -> HttpResponse:
    body = type(exc).__name__.encode()
    response = HttpResponse(body, status=503, content_type="text/plain")
    response["Content-Length"] = str(len(body))
    return response


def _order() -> Order:
    number = next(_numbers)
    return Order._default_manager.create(
        number=number, customer=f"customer-{number % 97}", total_cents=number * 7
    )


def _write_only() -> None:
    with transaction.atomic():
        _order()


def _controller_on_commit() -> None:
    with transaction.atomic():
        order = _order()
        controller.sync.delay_on_commit(add, order.pk, order.number)


def _celery_on_commit() -> None:
    with transaction.atomic():
        order = _order()
        add.delay_on_commit(order.pk, order.number)  # type: ignore[attr-defined]


async def trivial(request: HttpRequest) -> HttpResponse:
    """No database, no dispatch: Django's ASGI handler alone (the ceiling)."""
    return _ok()


async def write_only(request: HttpRequest) -> HttpResponse:
    """The row in a transaction, no dispatch: the baseline of the dispatching views."""
    await sync_to_async(_write_only)()
    return _ok()


async def controller_on_commit(request: HttpRequest) -> HttpResponse:
    """The row and ``controller.sync.delay_on_commit(add, ...)`` in one transaction."""
    try:
        await sync_to_async(_controller_on_commit)()
    except TaskDispatchError as exc:
        return _failed(exc)
    return _ok()


async def celery_on_commit(request: HttpRequest) -> HttpResponse:
    """The row and Celery's own ``add.delay_on_commit(...)`` in one transaction."""
    await sync_to_async(_celery_on_commit)()
    return _ok()
