"""One view per way of dispatching ``add(1, 1)``, plus the trivial view, the
controller's floor (a dispatch that sends nothing) and two loop-thread publishing
prototypes (:mod:`bench.httpsite.loop_prototype`); each answers ``ok`` (200).

aceleryctl's views answer 504 on ``DispatchTimeout`` (outcome unknown) and 503 on
any other ``TaskDispatchError`` (nothing sent, or the broker failed), as a project
would; the others let whatever happens happen.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse

from aceleryctl import AsyncCeleryController, DispatchTimeout, TaskDispatchError, controller
from aceleryctl.sync import controller as sync_controller
from bench.httpsite.loop_prototype import publish_add, publish_add_minimal
from bench.httpsite.tasks import add


def _ok() -> HttpResponse:
    response = HttpResponse(b"ok", content_type="text/plain")
    response["Content-Length"] = "2"
    return response


def _failed(exc: TaskDispatchError) -> HttpResponse:
    body = type(exc).__name__.encode()  # the benchmark tallies the kinds of failure
    response = HttpResponse(
        body, status=504 if isinstance(exc, DispatchTimeout) else 503, content_type="text/plain"
    )
    response["Content-Length"] = str(len(body))
    return response


async def trivial(request: HttpRequest) -> HttpResponse:
    return _ok()


async def s2a(request: HttpRequest) -> HttpResponse:
    await sync_to_async(add.delay)(1, 1)
    return _ok()


async def s2a_free(request: HttpRequest) -> HttpResponse:
    await sync_to_async(add.delay, thread_sensitive=False)(1, 1)
    return _ok()


def sync_delay(request: HttpRequest) -> HttpResponse:
    add.delay(1, 1)
    return _ok()


async def ctl(request: HttpRequest) -> HttpResponse:
    try:
        await controller.delay(add, 1, 1)
    except TaskDispatchError as exc:
        return _failed(exc)
    return _ok()


#: A controller like the default one, with ``loop_publish=True`` (made on first use).
_loop_controller: AsyncCeleryController | None = None


async def ctl_loop(request: HttpRequest) -> HttpResponse:
    # The product's loop path: built and written from the event loop's thread.
    global _loop_controller
    if _loop_controller is None:
        _loop_controller = AsyncCeleryController(add.app, loop_publish=True)
    try:
        await _loop_controller.delay(add, 1, 1)
    except TaskDispatchError as exc:
        return _failed(exc)
    return _ok()


def _nothing() -> None:
    """The publish job of ``ctl_noop``: sends nothing."""


async def ctl_noop(request: HttpRequest) -> HttpResponse:
    # The controller's whole path (breaker, pool hop, deadline, result) with a
    # zero-argument callable that sends nothing: the floor under ``ctl``.
    try:
        await controller.delay(_nothing)
    except TaskDispatchError as exc:
        return _failed(exc)
    return _ok()


async def loop_prototype(request: HttpRequest) -> HttpResponse:
    # Not the product: the same message built and written on the loop thread.
    await publish_add(1, 1)
    return _ok()


async def loop_minimal(request: HttpRequest) -> HttpResponse:
    # Not the product: as loop_prototype, with a minimal protocol and one write a turn.
    await publish_add_minimal(1, 1)
    return _ok()


def sync_facade(request: HttpRequest) -> HttpResponse:
    try:
        sync_controller.delay(add, 1, 1)
    except TaskDispatchError as exc:
        return _failed(exc)
    return _ok()
