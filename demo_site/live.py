"""Subscription tokens for the page: who may watch a task live over the websocket.

The demo has no user accounts, so every token is bound to the visitor's session
(a token is never issued unbound). Views that dispatch a task answer with
:func:`live_fields`: the token and the websocket path the page subscribes on.
"""

from __future__ import annotations

from typing import Any, Final

from django.http import HttpRequest

from aceleryctl import make_subscription_token

__all__ = ["WEBSOCKET_PATH", "asession_key", "live_fields", "session_key"]

#: Where ``aceleryctl.routing.websocket_urlpatterns`` is routed (``demo_site.asgi``).
WEBSOCKET_PATH: Final = "/ws/aceleryctl/tasks/"

_VISITOR: Final = "demo_visitor"


def session_key(request: HttpRequest) -> str:
    """The visitor's session key, creating the session first (sync views)."""
    session = request.session
    session[_VISITOR] = True  # modified: SessionMiddleware sends the cookie
    if session.session_key is None:
        session.save()
    key = session.session_key
    assert key is not None
    return key


async def asession_key(request: HttpRequest) -> str:
    """The visitor's session key, creating the session first (async views)."""
    session = request.session
    await session.aset(_VISITOR, True)
    if session.session_key is None:
        await session.asave()
    key = session.session_key
    assert key is not None
    return key


def live_fields(task_id: str, key: str) -> dict[str, Any]:
    """What the page needs to follow ``task_id`` live: ``{"token", "websocket"}``."""
    return {
        "token": make_subscription_token(task_id, session_key=key),
        "websocket": WEBSOCKET_PATH,
    }
