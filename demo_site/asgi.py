"""The ASGI application: ``uvicorn demo_site.asgi:application --lifespan on``.

* HTTP goes to Django, wrapped in ``ASGIStaticFilesHandler`` so that the page's
  static files (and aceleryctl's ``client.js``) are served without a web server in
  front (a demo: a real deployment serves them from a CDN or its proxy).
* Websockets on ``ws/aceleryctl/tasks/`` go to aceleryctl's consumer, behind
  Channels' ``AuthMiddlewareStack``, which puts the visitor's session in the scope:
  subscription tokens are bound to it.
* ``with_lifespan`` answers the server's lifespan messages, so aceleryctl's default
  controller drains its in-flight publishes when the server shuts down.
* ``with_relay`` starts the demo's outbox relay thread at lifespan startup and stops
  it at shutdown (``demo_site.outbox``).

uvicorn needs the ``websockets`` package to serve websockets.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
django_application = get_asgi_application()  # first: it sets Django up

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from aceleryctl.asgi import with_lifespan  # noqa: E402
from aceleryctl.routing import websocket_urlpatterns  # noqa: E402
from demo_site.outbox import with_relay  # noqa: E402

application = with_relay(
    with_lifespan(
        ProtocolTypeRouter(
            {
                "http": ASGIStaticFilesHandler(django_application),
                "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
            }
        )
    )
)
