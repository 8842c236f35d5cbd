"""What a wire with one publisher per publishing thread shares: :class:`PerThreadWire`.

The stock wire (:class:`~aceleryctl.wires.connections.ThreadPublisher`) and the AMQP
wire (:class:`~aceleryctl.wires.amqp_confirms.AmqpPublisher`) each keep one
publisher per publishing thread, made on the thread's first publish and dropped when
the thread exits; this base holds that bookkeeping once. The subclass says how a
publisher is made (:meth:`PerThreadWire.new_publisher`) and publishes with it.
"""

from __future__ import annotations

import abc
import threading
import time
from typing import Generic, TypeVar

from celery import Celery

from aceleryctl._clock import Clock
from aceleryctl.wires.base import Wire
from aceleryctl.wires.connections import ConnectionRegistry, ThreadPublisher, TransportPolicy

__all__ = ["PerThreadWire"]

P = TypeVar("P", bound=ThreadPublisher)


class PerThreadWire(Wire, Generic[P]):
    """A wire whose publishing threads each hold one publisher of type ``P``.

    Thread-safety: a publisher lives in a ``threading.local`` and is only touched by
    its own thread; :attr:`_registry` (locked inside) lets :meth:`Wire.close` reach
    them all from any thread.

    Args:
        app: the controller's Celery app.
        policy: socket and connect bounds of the publishing connections, or
            ``None`` where the subclass publishes through Celery's own pool.
        clock: monotonic seconds, the engine's clock (deadlines are its readings).
    """

    def __init__(
        self, app: Celery, policy: TransportPolicy | None, *, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(app)
        self._policy = policy
        self._clock = clock
        self._registry = ConnectionRegistry()
        self._local = threading.local()

    @abc.abstractmethod
    def new_publisher(self) -> P:
        """A publisher for the calling publishing thread (its first publish)."""

    def publisher(self) -> P:
        """This publishing thread's publisher, made on first use."""
        publisher: P | None = getattr(self._local, "publisher", None)
        if publisher is None:
            publisher = self.new_publisher()
            self._local.publisher = publisher
        return publisher

    def connected(self) -> bool:
        publisher: P | None = getattr(self._local, "publisher", None)
        return publisher is not None and publisher.connected

    def release_thread(self) -> None:
        publisher: P | None = getattr(self._local, "publisher", None)
        if publisher is not None:
            publisher.discard()
