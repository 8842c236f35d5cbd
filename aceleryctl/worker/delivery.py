"""How an emitter's thread delivers: one event to its channel-layer group, or one batched job.

:class:`Delivery` is the sending half of :class:`~aceleryctl.worker.emitter.Emitter`
(the emitter decides *when*, with its queue, thread and loop; this decides
*how*). It fetches the layer from the emitter's :data:`LayerFactory` before every
send, calls ``layer.group_send(group_name(task_id), event.to_layer_message())``
under the send timeout, and counts each outcome under the names of
:class:`EmitterStatistics`. Problems are logged at WARNING once per kind, at logger
``aceleryctl.emitter``; a transport problem is logged again after a send has
worked in between. Nothing here raises to the emitter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aceleryctl._logging import scrub_credentials
from aceleryctl._once import OnceLog
from aceleryctl.events import TaskEvent, clip_text, group_name

__all__ = [
    "Delivery",
    "EmitterStatistics",
    "GroupSender",
    "Job",
    "LayerFactory",
    "describe",
]

logger: Final = logging.getLogger("aceleryctl.emitter")


class GroupSender(Protocol):
    """What the emitter needs of a channel layer."""

    def group_send(self, group: str, message: dict[str, Any]) -> Awaitable[Any]:
        """Send ``message`` to every channel in ``group``."""
        ...


#: Returns the channel layer to send with, or ``None`` when there is none. Called on
#: the emitter thread (inside its event loop) before every send, so that a layer
#: replaced at run time (``override_settings(CHANNEL_LAYERS=...)``) is picked up.
LayerFactory = Callable[[], GroupSender | None]
#: A coroutine function run on the emitter's loop (see
#: :meth:`~aceleryctl.worker.emitter.Emitter.run_soon`),
#: given the current layer (``None`` when there is none).
Job = Callable[[GroupSender | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class EmitterStatistics:
    """A snapshot of one process's emitter. Counts are since the emitter started in
    this process (a forked child starts from zero).

    Attributes:
        pid: the process the numbers belong to.
        queued: events waiting to be sent now.
        accepted: events handed to :meth:`Emitter.emit`.
        sent: events the layer accepted.
        failed: sends that raised.
        timed_out: sends that did not finish within the send timeout.
        dropped_full: events dropped because the queue was full (the oldest go).
        dropped_no_layer: events dropped because no channel layer was available.
        dropped_invalid: events whose task id cannot name a channel-layer group.
        dropped_closed: events emitted after :meth:`Emitter.close`, or still queued
            when it gave up waiting.
    """

    pid: int
    queued: int
    accepted: int
    sent: int
    failed: int
    timed_out: int
    dropped_full: int
    dropped_no_layer: int
    dropped_invalid: int
    dropped_closed: int


class Delivery:
    """The sends of one emitter in one process, on its thread (module docstring).

    Args:
        factory: returns the layer to send with (see :data:`LayerFactory`).
        send_timeout: seconds one ``group_send`` may take.
        count: adds one to the emitter's count of that name (thread-safe).
    """

    def __init__(
        self, factory: LayerFactory, send_timeout: float, count: Callable[[str], None]
    ) -> None:
        self._factory = factory
        self._send_timeout = send_timeout
        self._count = count
        self._logged = OnceLog(logger)

    async def run_job(self, job: Job) -> None:
        """``await job(layer)``; an exception is logged once per type, never raised."""
        try:
            await job(self.layer())
        except Exception as exc:
            self.problem(f"job:{type(exc).__name__}", "an emitter job raised %s", describe(exc))

    def layer(self) -> GroupSender | None:
        """The layer from the factory, ``None`` (logged once) if it fails."""
        try:
            return self._factory()
        except Exception as exc:
            self.problem(
                f"factory:{type(exc).__name__}",
                "aceleryctl could not get a channel layer: %s",
                describe(exc),
            )
            return None

    async def send(self, event: TaskEvent) -> None:
        """Send ``event`` to its task's group within the send timeout; count the outcome."""
        try:
            group = group_name(event.task_id)
        except ValueError as exc:
            self._count("dropped_invalid")
            self.problem("invalid", "an event was dropped: %s", exc)
            return
        layer = self.layer()
        if layer is None:
            self._count("dropped_no_layer")
            self.problem("no_layer", "no channel layer is configured: task events are dropped")
            return
        try:
            await asyncio.wait_for(
                layer.group_send(group, event.to_layer_message()), self._send_timeout
            )
        except TimeoutError:
            self._count("timed_out")
            self.problem(
                "timeout",
                "channel layer group_send took longer than %.3g s: events are being dropped",
                self._send_timeout,
            )
        except Exception as exc:
            self._count("failed")
            self.problem(
                f"send:{type(exc).__name__}",
                "channel layer group_send failed (%s): events are being dropped",
                describe(exc),
            )
        else:
            self._count("sent")
            seen = self._logged.seen() if len(self._logged) else ()
            transport = [k for k in seen if k == "timeout" or k.startswith("send:")]
            if transport and self._logged.forget(transport):
                logger.info("channel layer group_send works again; task events flow")

    def problem(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` at WARNING the first time ``kind`` happens (again after a
        successful send, for transport problems). Emitter thread only."""
        self._logged.warning(kind, message, *args)


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, credentials masked, at most 300 characters."""
    return clip_text(scrub_credentials(f"{type(exc).__name__}: {exc}"), 300)
