"""The ASGI app the live websocket tests run under uvicorn (a subprocess).

``uvicorn tests.integration.live_ws.asgi_app:application`` with
``DJANGO_SETTINGS_MODULE=tests.integration.live_ws.settings``. Websockets on
``/ws/aceleryctl/tasks/`` go to aceleryctl's routes; the session is taken from a
``live_session`` cookie without any database (a stand-in for Channels'
``SessionMiddleware``, which these tests do not measure). Anything else gets 404.
"""

from __future__ import annotations

import os
from http.cookies import SimpleCookie
from types import SimpleNamespace
from typing import Any

import django
from celery import Celery

django.setup()

from channels.routing import URLRouter  # noqa: E402  (after django.setup())

from aceleryctl.routing import websocket_urlpatterns  # noqa: E402

__all__ = ["SESSION_COOKIE", "application", "celery_app"]

SESSION_COOKIE = "live_session"

#: Only its result backend is used: the consumer reads snapshots from it.
celery_app = Celery(
    "live-ws",
    broker="memory://",
    backend=os.environ.get("ACELERYCTL_LIVE_RESULTS_URL", "redis://127.0.0.1:1/0"),
    set_as_current=False,
)

_router = URLRouter(websocket_urlpatterns)


def _session_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get(SESSION_COOKIE)
            if morsel is not None:
                return morsel.value
    return None


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Websockets to aceleryctl (with a cookie session); 404 for HTTP."""
    if scope["type"] == "websocket":
        scope = dict(scope, session=SimpleNamespace(session_key=_session_key(scope)))
        await _router(scope, receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
