"""ASGI applications for the routing check tests (imported, never served)."""

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter

from aceleryctl.asgi import with_lifespan
from aceleryctl.routing import websocket_urlpatterns


async def plain_http(scope: object, receive: object, send: object) -> None:
    """Stands in for Django's HTTP handler."""


#: The consumer behind the usual stack: lifespan wrapper, router, auth middleware.
routed = with_lifespan(
    ProtocolTypeRouter(
        {"http": plain_http, "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns))}
    )
)

#: A project that serves HTTP only.
unrouted = ProtocolTypeRouter({"http": plain_http})
