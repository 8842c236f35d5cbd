"""Django Channels internals aceleryctl relies on (read by the system checks only).

The ``aceleryctl.W003`` check walks the project's ASGI application to learn
whether the websocket consumer is routed. Channels documents how to build a
routing tree, not how to read one back: the attributes below are what its
classes happen to store. If one is renamed the walk stops finding the consumer
behind that node and the check stays silent (a missed warning, never an error).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ASGI_CHILD_ATTRIBUTES", "routed_consumer_class"]

#: Attributes through which one ASGI application holds others:
#: ``ProtocolTypeRouter.application_mapping``, ``URLRouter.routes``,
#: Django's ``URLPattern.callback`` and a resolver's ``url_patterns``,
#: ``BaseMiddleware.inner``, and ``app`` (common in third-party middleware).
ASGI_CHILD_ATTRIBUTES: Final = (
    "application_mapping",
    "routes",
    "url_patterns",
    "callback",
    "inner",
    "app",
)


def routed_consumer_class(node: object) -> Any:
    """The consumer class behind an ``AsyncConsumer.as_asgi()`` application, or ``None``.

    ``as_asgi()`` returns a function carrying ``consumer_class`` (undocumented).
    """
    return getattr(node, "consumer_class", None)
