"""The demo's side of aceleryctl's outbox: its relay, and what the page asks about it.

With ``ACELERYCTL["OUTBOX"]`` on (``demo_site.settings``), "Create a report" writes its
``process_report`` dispatch to the outbox table in the report's own transaction
(``delay_on_commit``), and the plain dispatch buttons are durable
(``apply_async(..., durable=True)``): a dispatch the broker does not take stays in
the table until a relay publishes it.

The relay runs here, on a thread of the web process, started and stopped with the
ASGI lifespan (:func:`with_relay`). It is aceleryctl's own relay loop, given
:func:`demo_site.faults.active_controller` to publish with (called once per round),
so the page's dead-broker switch reaches it: while the switch is on, the relay's
attempts fail (or its breaker refuses them) and the rows wait; once the switch is
back on ``live`` the next round publishes them to the demo's Redis. A project
without such a switch sets ``"RELAY": "in_process"`` (the same loop on the default
controller) or runs ``manage.py aceleryctl_relay``.

Run one web process: on SQLite a relay cannot lock rows, and the switch is per
process anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from typing import Any, Final

from demo_site import faults

__all__ = ["DemoRelay", "outbox_row", "relay", "with_relay"]

logger = logging.getLogger(__name__)

#: Seconds :meth:`DemoRelay.stop` waits for the round in progress.
STOP_TIMEOUT: Final = 5.0


class DemoRelay:
    """Starts and stops the web process's relay thread. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the relay thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the relay thread unless it runs."""
        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=_run, args=(self._stop,), name="demo-outbox-relay", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Ask the relay to stop after its round; wait up to ``timeout`` seconds.
        Returns ``True`` if it is not running."""
        with self._lock:
            thread = self._thread
            self._stop.set()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()


def _run(stop: threading.Event) -> None:
    from django.db import connections

    # Not exported by aceleryctl (yet): the relay loop behind RELAY "in_process"
    # and manage.py aceleryctl_relay, here given the switch's controller.
    from aceleryctl.outbox.relay import Relay

    try:
        relay = Relay(faults.active_controller, name=f"demo-web:{os.getpid()}")
        logger.info("outbox relay started (database %r)", relay.database)
        totals = relay.run(stop)
        logger.info(
            "outbox relay stopped: %d published, %d dead-lettered",
            totals["published"],
            totals["dead_lettered"],
        )
    except Exception:
        logger.exception("the outbox relay stopped on an error")
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()


#: The web process's relay.
relay = DemoRelay()

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def with_relay(app: ASGIApp) -> ASGIApp:
    """``app``, with :data:`relay` started at lifespan startup and stopped at lifespan
    shutdown, before ``app`` sees the message (so aceleryctl's ``with_lifespan``
    closes the default controller after the relay's last round)."""

    async def application(scope: Scope, receive: Receive, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                relay.start()
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(relay.stop)
            return message

        await app(scope, lifespan_receive, send)

    return application


def outbox_row(task_id: str, now: datetime) -> dict[str, Any]:
    """What the outbox holds for ``task_id``: ``{"stored": False}`` when nothing (the
    broker has the task, or it was never stored), else the row's state, attempts,
    last error and when the relay tries it next. Blocking: a database read."""
    # Not exported by aceleryctl (yet): the outbox table's model.
    from aceleryctl.outbox.models import OutboxMessage

    row = OutboxMessage.objects.filter(task_id=task_id).order_by("-pk").first()
    if row is None:
        return {"task_id": task_id, "stored": False}
    pending = row.state == OutboxMessage.State.PENDING
    return {
        "task_id": task_id,
        "stored": True,
        "state": row.state,
        "reason": row.reason,
        "task": row.task_name,
        "attempts": row.attempts,
        "last_error": row.last_error or None,
        "stored_seconds": round((now - row.created_at).total_seconds(), 1),
        "next_attempt_in": (
            round(max(0.0, (row.available_at - now).total_seconds()), 1) if pending else None
        ),
    }
