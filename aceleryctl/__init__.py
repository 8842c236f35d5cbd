"""aceleryctl: dispatch Celery tasks from async Django without blocking the event loop.

::

    from aceleryctl import controller

    async def signup(request):
        result = await controller.delay(send_welcome_mail, user_id)
        return JsonResponse({"task_id": result.id}, status=202)

Every dispatch runs on a small bounded thread pool with a deadline and a circuit
breaker. Legacy sync views use ``from aceleryctl.sync import controller`` with the
same method names.
"""

from __future__ import annotations

from typing import cast

from aceleryctl._logging import DEFAULT_REDACT_KEYS
from aceleryctl._proxy import LazyProxy
from aceleryctl.awaiting import aget
from aceleryctl.breaker import (
    BreakerListener,
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    StateChange,
)
from aceleryctl.dispatch.controller import AsyncCeleryController
from aceleryctl.dispatch.listener import (
    DispatchEvent,
    DispatchListener,
    DispatchOutcome,
    PoolChange,
    mark_loop_safe,
)
from aceleryctl.dispatch.pool import PoolStatistics
from aceleryctl.dispatch.protocol import Controller
from aceleryctl.dispatch.statistics import ControllerStatistics
from aceleryctl.events import TaskEvent
from aceleryctl.exceptions import (
    AsyncContextError,
    BrokerError,
    CircuitOpenError,
    ControllerClosed,
    DispatchOverloaded,
    DispatchRejected,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
)
from aceleryctl.outbox.durable import DeferredResult
from aceleryctl.signals import report_progress
from aceleryctl.tokens import make_subscription_token

__all__ = [
    "AsyncCeleryController",
    "AsyncContextError",
    "BreakerListener",
    "BreakerState",
    "BreakerStatistics",
    "BrokerError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Controller",
    "ControllerClosed",
    "ControllerStatistics",
    "DEFAULT_REDACT_KEYS",
    "DeferredResult",
    "DispatchEvent",
    "DispatchListener",
    "DispatchOutcome",
    "DispatchOverloaded",
    "DispatchRejected",
    "DispatchTimeout",
    "PoolChange",
    "PoolStatistics",
    "StateChange",
    "TaskDispatchError",
    "TaskEvent",
    "TaskSerializationError",
    "__version__",
    "aget",
    "controller",
    "make_subscription_token",
    "mark_loop_safe",
    "report_progress",
]

__version__ = "0.1.0"


def _default() -> AsyncCeleryController:
    from aceleryctl.conf import default_controller

    return default_controller()


#: The default controller, built on first use from ``settings.ACELERYCTL`` and the
#: project's Celery app, rebuilt when that setting changes.
controller: AsyncCeleryController = cast(AsyncCeleryController, LazyProxy(_default))
