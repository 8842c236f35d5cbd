"""with_lifespan answers ASGI lifespan and closes the default controller on shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Celery

from aceleryctl import conf
from aceleryctl.asgi import with_lifespan
from aceleryctl.awaiting import clients


async def test_lifespan_startup_and_shutdown_close_the_default() -> None:
    conf.reset_default_controller()
    ctl = conf.default_controller()
    results = Celery("lifespan", set_as_current=False, backend="redis://127.0.0.1:1/0")
    endpoint = clients.endpoint_for(results.backend)  # nothing connects until used
    assert endpoint is not None
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
    assert clients.endpoint_for(results.backend) is not endpoint  # this loop's were closed
    results.close()
    await app({"type": "http"}, inbox.get, send)
    assert seen_by_inner == ["http"]
