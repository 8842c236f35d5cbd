"""The Celery app the docs' view snippets run against: a broker nobody listens on.

Connections are refused at once, so a dispatch fails as it does on a dead broker
(``BrokerError`` first; ``CircuitOpenError`` once the breaker has opened).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

dead = Celery("docs-dead-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
dead.conf.broker_transport_options = {"socket_timeout": 1, "socket_connect_timeout": 1}


def task_named(name: str) -> Any:
    """A task of ``dead`` called ``docs.<name>``, made on first use."""
    full = f"docs.{name}"
    if full not in dead.tasks:

        def run(*args: Any, **kwargs: Any) -> None:
            """Does nothing: the docs' tasks are only dispatched."""

        dead.task(name=full, shared=False)(run)
    return dead.tasks[full]
