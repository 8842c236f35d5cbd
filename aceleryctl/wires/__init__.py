"""Internal: one module per broker behind one seam (:class:`~aceleryctl.wires.base.Wire`).

:func:`wire_for` picks the wire for an app's broker when a controller starts;
the engine knows nothing else about brokers. To add a broker's fast path, write
a :class:`~aceleryctl.wires.base.Wire` subclass in a module of its own and add
its transport's driver name to :data:`_FAST`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import Celery

from aceleryctl._clock import Clock
from aceleryctl.wires.base import Wire, WireOutcome
from aceleryctl.wires.connections import TransportPolicy, transport_driver

__all__ = ["Wire", "WireOutcome", "wire_for"]


def _redis(
    app: Celery, policy: TransportPolicy, direct: bool, clock: Clock, replica_acks: int
) -> Wire:
    from aceleryctl.wires.redis import RedisWire

    return RedisWire(app, policy, direct=direct, clock=clock, replica_acks=replica_acks)


def _amqp(
    app: Celery, policy: TransportPolicy, direct: bool, clock: Clock, replica_acks: int
) -> Wire:
    from aceleryctl.wires.amqp_confirms import speaks_py_amqp

    if not speaks_py_amqp(app):  # librabbitmq: no py-amqp channel to confirm on
        from aceleryctl.wires.stock import StockWire

        return StockWire(app, None, clock=clock)
    from aceleryctl.wires.amqp import AmqpWire

    return AmqpWire(app, policy, direct=direct, clock=clock)


def _bounded_stock(
    app: Celery, policy: TransportPolicy, direct: bool, clock: Clock, replica_acks: int
) -> Wire:
    from aceleryctl.wires.stock import StockWire

    return StockWire(app, policy, clock=clock)


#: Driver name -> the wire for it. Any other transport gets the unbounded stock
#: wire (Celery's own connection pool and publish). ``memory`` is kombu's
#: in-process transport, bounded like Redis so that tests without a broker take
#: the same path.
_FAST: dict[str, Callable[[Celery, TransportPolicy, bool, Clock, int], Wire]] = {
    "redis": _redis,
    "amqp": _amqp,
    "memory": _bounded_stock,
}


def wire_for(
    app: Celery,
    policy: TransportPolicy,
    *,
    direct: bool = True,
    clock: Clock = time.monotonic,
    replica_acks: int = 0,
) -> Wire:
    """The wire for ``app``'s broker transport. Opens no connection.

    Args:
        app: the controller's Celery app.
        policy: socket and connect bounds for the wires that use their own connections.
        direct: allow a wire's direct path (Redis, AMQP); ``False`` publishes
            everything through Celery's stock ``apply_async`` (on AMQP still on
            the wire's own confirmed connections).
        clock: monotonic seconds, the engine's clock.
        replica_acks: replicas that must acknowledge each direct write (Redis,
            ``WAIT``); ignored by other wires.

    Raises:
        ValueError: ``replica_acks`` is negative or not an int.
    """
    if isinstance(replica_acks, bool) or not isinstance(replica_acks, int) or replica_acks < 0:
        raise ValueError(f"replica_acks must be an int >= 0 (0 = off), got {replica_acks!r}")
    factory = _FAST.get(transport_driver(app))
    if factory is not None:
        return factory(app, policy, direct, clock, replica_acks)
    from aceleryctl.wires.stock import StockWire

    return StockWire(app, None, clock=clock)
