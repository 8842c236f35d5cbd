"""The page's dead-broker switch: which controller the demo's views dispatch with.

A demo-only device (``settings.DEMO_FAULT_SWITCH``), built on aceleryctl's public API:
besides the default controller, this module keeps one more
:class:`~aceleryctl.AsyncCeleryController` per kind of dead broker, each on a Celery
app whose broker URL points at an endpoint in this process that never serves Redis:

* ``refusing``: a port that is bound but not listening, so every connection is
  refused at once (``BrokerError``, nothing sent);
* ``silent``: a port that accepts connections and never answers, like a hung
  broker (``DispatchTimeout`` after the one-second deadline: outcome unknown).

Each has its own circuit breaker (three failures open it for five seconds), so a
person flipping the switch sees calls fail, then fail fast with
``CircuitOpenError``, and dispatch recover the moment the switch is back on
``live``. Turning the switch to a dead broker starts that broker's breaker afresh
(closed, no failures counted), as if the broker had just died.

The demo's outbox relay (:mod:`demo_site.outbox`) publishes through
:func:`active_controller` too, so stored dispatches wait while the switch is on.
Each dead broker's Celery app knows the demo's tasks, as the relay needs to turn a
stored row back into a dispatch; the message is still built and sent by the dead
broker's own connection. The state is per process: run one web process to use it.
"""

from __future__ import annotations

import socket
import threading
from typing import Final, Literal, get_args

from celery import Celery

from aceleryctl import AsyncCeleryController, CircuitBreaker, controller
from aceleryctl.live.sent import attach_live_events
from aceleryctl.sync import SyncCeleryController
from aceleryctl.sync import controller as default_sync_controller
from demo_site.celery_app import app as celery_app

__all__ = [
    "MODES",
    "Mode",
    "active_controller",
    "active_sync_controller",
    "describe",
    "mode",
    "set_mode",
]

Mode = Literal["live", "refusing", "silent"]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)

#: Seconds a call to a dead broker may take before ``DispatchTimeout``.
DEAD_DISPATCH_TIMEOUT: Final = 1.0

_DESCRIPTIONS: Final[dict[Mode, str]] = {
    "live": "the demo's Redis: tasks reach the worker",
    "refusing": "a port that refuses connections: BrokerError at once, nothing sent",
    "silent": "a port that accepts and never answers: DispatchTimeout after 1 s",
}

_lock = threading.Lock()
_mode: Mode = "live"
_endpoints: dict[Mode, socket.socket] = {}
_controllers: dict[Mode, AsyncCeleryController] = {}


def mode() -> Mode:
    """The current setting of the switch."""
    return _mode


def set_mode(new: Mode) -> None:
    """Point the demo's views at the live broker or at a dead one."""
    global _mode
    if new not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {new!r}")
    if new != "live" and new != _mode:
        # Built now (the first dispatch should not pay for it), its breaker closed:
        # each time the switch is turned to a dead broker, that broker has just died.
        _dead_controller(new).breaker.reset()
    _mode = new


def describe(which: Mode | None = None) -> str:
    """One line about a mode (default: the current one), for the page."""
    return _DESCRIPTIONS[which or _mode]


def active_controller() -> AsyncCeleryController:
    """What the async views ``await``: the default controller unless the switch is on."""
    current = _mode
    return controller if current == "live" else _dead_controller(current)


def active_sync_controller() -> SyncCeleryController:
    """What the DRF views call: ``aceleryctl.sync.controller`` unless the switch is on."""
    current = _mode
    return default_sync_controller if current == "live" else _dead_controller(current).sync


def _endpoint(which: Mode) -> int:
    """A 127.0.0.1 port that behaves like a dead broker of kind ``which``; kept open
    (so no other program takes it) for the life of the process."""
    sock = _endpoints.get(which)
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        if which == "silent":
            # The kernel completes handshakes into the backlog; nothing ever reads.
            sock.listen(64)
        _endpoints[which] = sock
    port: int = sock.getsockname()[1]
    return port


def _dead_controller(which: Mode) -> AsyncCeleryController:
    with _lock:
        built = _controllers.get(which)
        if built is not None:
            return built
        app = Celery(f"demo-dead-broker-{which}", set_as_current=False)
        app.conf.update(
            broker_url=f"redis://127.0.0.1:{_endpoint(which)}/0",
            result_backend=celery_app.conf.result_backend,
            task_serializer="json",
            accept_content=["json"],
            broker_transport_options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
            broker_connection_retry=False,
        )
        # The relay decodes stored rows with the app of the controller it publishes
        # with: let this one know the demo's tasks (the same task objects).
        for name, task in celery_app.tasks.items():
            if name.startswith("demo_site."):
                app.tasks[name] = task
        breaker = CircuitBreaker(
            name=f"{which}-broker",
            failure_threshold=3,
            reset_timeout=5.0,
            # No backoff past five seconds: the relay, refused by the open breaker,
            # waits this long before its next try, and should notice "live" soon.
            max_reset_timeout=5.0,
        )
        built = AsyncCeleryController(app, dispatch_timeout=DEAD_DISPATCH_TIMEOUT, breaker=breaker)
        # Like the default controller: a dispatch stored in the outbox is announced
        # by task.deferred, so the page shows it stored.
        attach_live_events(built)
        _controllers[which] = built
        return built
