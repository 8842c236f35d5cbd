"""Internal: the browser side of live events (the websocket consumer and its
subscriptions, the per-process hub, snapshots, the frame protocol) and the web
process's ``task.sent``.

Nothing here is public API: route :data:`aceleryctl.routing.websocket_urlpatterns`,
use :class:`aceleryctl.consumers.TaskEventsConsumer` and
:func:`aceleryctl.make_subscription_token`.
"""
