"""aceleryctl's websocket routes served by uvicorn on 127.0.0.1, with a cookie session.

Shared by the live websocket tests (``tests.integration.live_ws``) and the
live-events benchmark (``bench.events``): each has an ASGI module of its own that
sets Django up and then builds its app with :func:`cookie_session_app`; the
process that starts uvicorn uses :func:`uvicorn_argv` and :class:`WebsocketEndpoint`.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import Any

__all__ = ["WS_PATH", "WebsocketEndpoint", "cookie_session_app", "uvicorn_argv"]

HOST = "127.0.0.1"
#: Where aceleryctl's routes serve the task-events websocket.
WS_PATH = "/ws/aceleryctl/tasks/"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def cookie_session_app(session_cookie: str) -> ASGIApp:
    """Websockets to aceleryctl's routes, 404 for HTTP.

    The session is taken from the ``session_cookie`` cookie without any database (a
    stand-in for Channels' ``SessionMiddleware``, which is not what is tested or
    measured). Call it once Django is set up.
    """
    from channels.routing import URLRouter

    from aceleryctl.routing import websocket_urlpatterns

    router = URLRouter(websocket_urlpatterns)

    def session_key(scope: dict[str, Any]) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                morsel = SimpleCookie(value.decode("latin-1")).get(session_cookie)
                if morsel is not None:
                    return morsel.value
        return None

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Websockets to aceleryctl (with a cookie session); 404 for HTTP."""
        if scope["type"] == "websocket":
            scope = dict(scope, session=SimpleNamespace(session_key=session_key(scope)))
            await router(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return application


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    """``python -m uvicorn <app>`` on 127.0.0.1:``port``: lifespan off, no access log,
    warnings and up only; ``extra`` options follow."""
    return [
        sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--lifespan", "off", "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


class WebsocketEndpoint:
    """Mixin: the websocket URL and the origin of a server on 127.0.0.1:``port``."""

    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}{WS_PATH}"

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"
