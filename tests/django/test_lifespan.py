"""with_lifespan answers ASGI lifespan and closes the default controller on shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from aceleryctl import conf
from aceleryctl.asgi import with_lifespan


async def test_lifespan_startup_and_shutdown_close_the_default() -> None:
    conf.reset_default_controller()
    ctl = conf.default_controller()
    seen_by_inner: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen_by_inner.append(scope["type"])

    app = with_lifespan(inner)
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    for message in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
        inbox.put_nowait(message)

    async def send(message: Any) -> None:
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan"}, inbox.get, send), timeout=10)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert ctl.closed
    await app({"type": "http"}, inbox.get, send)
    assert seen_by_inner == ["http"]
