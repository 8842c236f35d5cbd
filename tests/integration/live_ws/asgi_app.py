"""The ASGI app the live websocket tests run under uvicorn (a subprocess).

``uvicorn tests.integration.live_ws.asgi_app:application`` with
``DJANGO_SETTINGS_MODULE=tests.integration.live_ws.settings``. Websockets on
``/ws/aceleryctl/tasks/`` go to aceleryctl's routes; the session is taken from a
``live_session`` cookie without any database (a stand-in for Channels'
``SessionMiddleware``, which these tests do not measure). Anything else gets 404.
"""

from __future__ import annotations

import os

import django
from celery import Celery

from tests._support.websocket_server import cookie_session_app

django.setup()

__all__ = ["SESSION_COOKIE", "application", "celery_app"]

SESSION_COOKIE = "live_session"

#: Only its result backend is used: the consumer reads snapshots from it.
celery_app = Celery(
    "live-ws",
    broker="memory://",
    backend=os.environ.get("ACELERYCTL_LIVE_RESULTS_URL", "redis://127.0.0.1:1/0"),
    set_as_current=False,
)

#: Websockets to aceleryctl (with a cookie session); 404 for HTTP.
application = cookie_session_app(SESSION_COOKIE)
