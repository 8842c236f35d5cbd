"""ASGI lifespan support: start the in-process outbox relay, and close the default
controller when the server shuts down.

Django's ASGI handler and Channels' router do not handle the ``lifespan`` scope.
Wrap the outermost application::

    from aceleryctl.asgi import with_lifespan

    application = with_lifespan(get_asgi_application())

On ``lifespan.startup`` the in-process outbox relay starts when the settings ask
for one (``ACELERYCTL["OUTBOX"]["RELAY"] = "in_process"``). On
``lifespan.shutdown`` it stops after its round, and the default controller drains
its queued and running publishes (at most its ``DRAIN_TIMEOUT``) on a thread of
its own, so the loop keeps serving other shutdown work; then the loop's
``redis.asyncio`` connections of :func:`aceleryctl.aget` are closed. Every other
scope passes through unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aceleryctl.dispatch.pool import settle

__all__ = ["with_lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Any ASGI 3 application. Typed loosely on purpose: Django's ``ASGIHandler``,
#: Channels' routers and Starlette apps each declare their own scope/message types.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


async def _close_default() -> None:
    from aceleryctl.conf import close_default_controller

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            close_default_controller()
        finally:
            loop.call_soon_threadsafe(settle, done, None)

    threading.Thread(target=run, name="aceleryctl-lifespan-close", daemon=True).start()
    await done


def _start_relay() -> None:
    from aceleryctl.outbox.inprocess import in_process_relay

    in_process_relay().ensure_started()


def _stop_relay() -> None:
    import sys

    module = sys.modules.get("aceleryctl.outbox.inprocess")
    if module is not None:
        module.in_process_relay().stop()


async def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on a thread of its own and await it (settings reads and joins
    must not run on the loop)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
        finally:
            loop.call_soon_threadsafe(settle, done, None)

    threading.Thread(target=run, name="aceleryctl-lifespan", daemon=True).start()
    await done


async def _close_awaiting() -> None:
    """Close this loop's result-awaiting connections (waits still running fail)."""
    from aceleryctl.awaiting import aclose_endpoints

    await aclose_endpoints()


def with_lifespan(app: ASGIApp) -> ASGIApp:
    """Return an ASGI app that answers ``lifespan`` itself and forwards the rest to ``app``."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _in_thread(_start_relay)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _in_thread(_stop_relay)
                await _close_default()
                await _close_awaiting()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application
