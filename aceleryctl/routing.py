"""Websocket URL routes for a project's ASGI router.

::

    # asgi.py
    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.core.asgi import get_asgi_application

    django_app = get_asgi_application()  # first: it sets Django up

    import aceleryctl.routing

    application = ProtocolTypeRouter({
        "http": django_app,
        "websocket": AuthMiddlewareStack(URLRouter(aceleryctl.routing.websocket_urlpatterns)),
    })

``AuthMiddlewareStack`` puts ``user`` and ``session`` in the scope, which is what
subscription tokens are checked against. The consumer validates the ``Origin``
header itself (``ACELERYCTL['WEBSOCKET_ALLOWED_ORIGINS']``, else ``ALLOWED_HOSTS``).
"""

from __future__ import annotations

from typing import Any

from django.urls import path

from aceleryctl.consumers import TaskEventsConsumer

__all__ = ["websocket_urlpatterns"]

#: ``ws/aceleryctl/tasks/`` → :class:`~aceleryctl.consumers.TaskEventsConsumer`.
websocket_urlpatterns: list[Any] = [
    path("ws/aceleryctl/tasks/", TaskEventsConsumer.as_asgi(), name="aceleryctl-task-events"),
]
