"""The websocket consumer that streams task events to browsers (public path).

The implementation, its protocol and close codes are documented in
:mod:`aceleryctl.live.consumer`; route it with
:data:`aceleryctl.routing.websocket_urlpatterns`.
"""

from __future__ import annotations

from aceleryctl.live.consumer import TaskEventsConsumer

__all__ = ["TaskEventsConsumer"]
