"""The seam between the engine and a broker: one abstract :class:`Wire`, one module per broker.

A wire publishes batches of dispatches on a publishing thread and says, for each
one, what is known about its message: sent, not sent, or unknown. The engine
picks one wire per controller when it starts (:func:`aceleryctl.wires.wire_for`)
and knows nothing else about brokers: adding a broker's fast path is one module
with a :class:`Wire` subclass plus its line in the registry.

Everything a wire does runs on a publishing thread of the controller's pool
unless a docstring says otherwise; each publishing thread has its own broker
connection, so a wire keeps per-thread state and needs no locks for it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

from celery import Celery

from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt

__all__ = ["Wire", "WireOutcome"]


class WireOutcome(NamedTuple):
    """What a wire knows about one dispatch of a batch once it has tried to publish it.

    Immutable; a named tuple rather than a frozen dataclass because one is made for
    every dispatch on a publishing thread, where a frozen dataclass's ``__init__``
    costs about six times as much.

    Attributes:
        outcome: :attr:`DispatchOutcome.SENT` (the broker holds the message),
            :attr:`DispatchOutcome.NOT_SENT` (provably nothing reached it) or
            :attr:`DispatchOutcome.UNKNOWN`.
        result: on success, what Celery's ``apply_async`` returned (a result
            object, rebuilt later for the caller's thread), unless ``sent_id`` is set.
        error: on failure, the exception; the engine maps it onto
            :mod:`aceleryctl.exceptions`.
        broker_fault: the failure is the broker's (it counts against the circuit
            breaker); ``False`` for the caller's own mistakes (bad arguments).
        queue: the queue the message was routed to, when the wire knows it.
        path: the name of the wire (or sub-path) that handled the dispatch.
        sent_id: set by a wire that wrote the message itself: the caller gets
            ``app.AsyncResult(sent_id)``, built on the caller's thread.
    """

    outcome: DispatchOutcome
    result: Any = None
    error: BaseException | None = None
    broker_fault: bool = False
    queue: str | None = None
    path: str = ""
    sent_id: str | None = None

    @property
    def sent(self) -> bool:
        """Whether the broker holds the message."""
        return self.outcome is DispatchOutcome.SENT


class Wire(abc.ABC):
    """Publishes dispatches to one broker. One instance per controller.

    Thread-safety: :meth:`publish_batch`, :meth:`probe`, :meth:`connected` and
    :meth:`release_thread` run on publishing threads and may run on several at
    once, each with its own connection; :meth:`close` runs on any thread after the
    pool has drained.

    Args:
        app: the controller's Celery app.
    """

    #: The name listeners see as a dispatch's ``path``.
    name: ClassVar[str] = "wire"

    def __init__(self, app: Celery) -> None:
        self.app = app

    @property
    def batches(self) -> bool:
        """Whether the pool may hand this wire several dispatches at once."""
        return False

    @abc.abstractmethod
    def publish_batch(self, attempts: Sequence[Attempt], deadline: float) -> list[WireOutcome]:
        """Publish every attempt's dispatch; return one outcome per attempt, in order.

        ``deadline`` is a reading of the engine's clock (seconds) by which the
        earliest caller of the batch gives up: connecting and retrying stop there.
        A wire never replays a publish that may have reached the broker. Blocks
        the calling publishing thread; never raises (failures are outcomes).
        """

    @abc.abstractmethod
    def probe(self, deadline: float) -> WireOutcome:
        """Connect as a publish would, and publish nothing.

        Returns :attr:`DispatchOutcome.SENT` when the broker answered, else the failure
        (never raises).
        """

    def connected(self) -> bool:
        """Whether this publishing thread holds a live connection (batches only then)."""
        return False

    def release_thread(self) -> None:  # noqa: B027  (optional hook)
        """Close what this publishing thread opened; called as the thread exits."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release every connection the wire still holds (after the pool drained)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for ``health()`` (which wire, bounded or not)."""
        return {"wire": self.name}
