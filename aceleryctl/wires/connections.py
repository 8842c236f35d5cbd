"""Bounded broker connections for the publishing threads, and what a failure proves.

Stock Celery publishes through a shared producer pool whose acquire blocks
without limit, over connections with no socket timeout, and retries a failed
publish through kombu's ``ensure`` on any connection error, including a read
timeout after the command reached the server: measured here, one call then put
two copies of its message in Redis. This module gives each publishing thread one
connection and producer of its own, configured so that:

* connecting and every socket read or write give up after bounded time;
* a publish is never replayed: Celery's publish retry is off (unless the caller
  asks for it), and redis-py is left without a retry policy (kombu's default);
* a connection that was *refused* is retried a few times within the call's
  deadline, because then nothing can have been sent.

Only Redis transports (``redis://``, ``rediss://``, ``sentinel://``, ``socket://``) are
bounded this way; others publish through Celery's stock path.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kombu.exceptions
import redis.exceptions
from celery import Celery
from kombu import Connection, Producer

from aceleryctl._clock import Clock
from aceleryctl.compat.kombu_redis import channel_pool, take_connection
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.wires.base import WireOutcome

__all__ = [
    "BOUNDED_DRIVERS",
    "BROKER_ERRORS",
    "SERIALIZATION_ERRORS",
    "ConnectFailed",
    "ConnectionRegistry",
    "ReplicaAckTimeout",
    "LeanProducer",
    "ThreadPublisher",
    "TransportPolicy",
    "classify_failure",
    "failure_hint",
    "nothing_sent",
    "transport_driver",
]

#: Transports whose publishes this module bounds: Redis, and kombu's in-process
#: ``memory`` transport (so that tests without a broker take the same path).
BOUNDED_DRIVERS = frozenset({"redis", "memory"})


T = TypeVar("T")


class ConnectFailed(Exception):
    """Connecting to the broker failed before any publish command was sent.

    The original error is the ``__cause__``.
    """


class ReplicaAckTimeout(Exception):
    """The primary stored a batch, but fewer replicas than ``REPLICA_ACKS`` asked for
    acknowledged it before the deadline: were the primary lost now, the messages
    could be lost with it, so their outcome is unknown (the caller gets
    :class:`~aceleryctl.exceptions.DispatchTimeout`).

    Args:
        wanted: replicas asked for.
        acknowledged: replicas that acknowledged in time.
        waited: seconds ``WAIT`` was given.
    """

    def __init__(self, wanted: int, acknowledged: int, waited: float) -> None:
        super().__init__(
            f"{acknowledged} of {wanted} replica(s) acknowledged the write within {waited:.3g} s"
        )
        self.wanted = wanted
        self.acknowledged = acknowledged
        self.waited = waited


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def nothing_sent(exc: BaseException) -> bool:
    """Whether ``exc`` proves that no command reached the broker.

    True for a refused connection (anywhere in the exception chain) and for
    :class:`ConnectFailed`; a timeout or a reset after sending proves nothing.
    """
    return any(isinstance(e, ConnectionRefusedError | ConnectFailed) for e in _chain(exc))


def failure_hint(exc: BaseException) -> str:
    """What to change when ``exc`` (anywhere in its chain) is a TLS verification or
    a credentials failure; an empty string otherwise. Never quotes a secret."""
    for error in _chain(exc):
        if isinstance(error, ssl.SSLCertVerificationError) or (
            "CERTIFICATE_VERIFY_FAILED" in str(error)
        ):
            return (
                "; the broker's TLS certificate was not accepted: check broker_use_ssl "
                "(ssl_ca_certs, ssl_cert_reqs) or the rediss:// URL's ssl_* parameters"
            )
        if isinstance(error, redis.exceptions.AuthenticationError):
            return (
                "; the broker refused the credentials: check the user and password "
                "in the broker URL"
            )
    return ""


class TransportPolicy:
    """The timeouts every publishing connection of one controller uses, in seconds.

    Args:
        socket_timeout: bound on one socket read or write (a silent broker).
        connect_timeout: bound on one TCP connect.
        retry_interval: first pause between connection attempts after a refusal;
            doubles up to ``max_retry_interval``.
        max_attempts: connection attempts per publish after refusals (>= 1); with
            the defaults three attempts span about 0.15 s of pauses, enough for a
            broker that is restarting, short enough that a dead one fails fast.
    """

    __slots__ = (
        "connect_timeout",
        "max_attempts",
        "max_retry_interval",
        "retry_interval",
        "socket_timeout",
    )

    def __init__(
        self,
        *,
        socket_timeout: float,
        connect_timeout: float,
        retry_interval: float = 0.05,
        max_retry_interval: float = 0.5,
        max_attempts: int = 3,
    ) -> None:
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.max_attempts = max_attempts

    @classmethod
    def for_deadline(cls, dispatch_timeout: float) -> TransportPolicy:
        """Derive bounds from a controller's default deadline.

        A read or write may take the whole deadline (a thread is then freed about
        when its caller gets ``DispatchTimeout``); a connect at most half of it.
        """
        return cls(socket_timeout=dispatch_timeout, connect_timeout=dispatch_timeout / 2)

    def transport_options(self, base: dict[str, Any]) -> dict[str, Any]:
        """The user's ``broker_transport_options`` with the bounds laid over them."""
        return {
            **base,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry_on_timeout": False,
            # kombu's own connect retry loop: one attempt; refusals are retried here,
            # under the call's deadline.
            "max_retries": 0,
        }


#: Exceptions that mean the broker connection failed (as opposed to the caller's input).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.RedisError,
    OSError,  # ConnectionError, socket timeouts and resets
)


#: Exceptions that mean the caller's arguments cannot be encoded (nothing was sent).
SERIALIZATION_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.EncodeError,
    kombu.exceptions.ContentDisallowed,
)


def classify_failure(exc: BaseException, path: str, queue: str | None = None) -> WireOutcome:
    """What a publish that raised ``exc`` proves about its message.

    * an encoding error: nothing was sent, and it is the caller's fault;
    * a broker or connection error: nothing was sent when the connection was
      refused (:func:`nothing_sent`), otherwise the message may exist; either
      way it counts against the circuit breaker;
    * anything else (a caller's mistake Celery found, a dispatcher callable's
      own error): the outcome is unknown, and the breaker is not told.
    """
    if isinstance(exc, SERIALIZATION_ERRORS):
        return WireOutcome(DispatchOutcome.NOT_SENT, error=exc, queue=queue, path=path)
    if isinstance(exc, (ConnectFailed, *BROKER_ERRORS)):
        outcome = DispatchOutcome.NOT_SENT if nothing_sent(exc) else DispatchOutcome.UNKNOWN
        return WireOutcome(outcome, error=exc, broker_fault=True, queue=queue, path=path)
    return WireOutcome(DispatchOutcome.UNKNOWN, error=exc, queue=queue, path=path)


def transport_driver(app: Celery) -> str:
    """The driver type of ``app``'s broker transport (``"redis"``, ``"amqp"``, ...).

    Creating the transport object opens nothing.
    """
    connection = app.connection_for_write()
    try:
        return str(connection.transport.driver_type)
    finally:
        connection.release()


class ThreadPublisher:
    """One thread's broker connection and producer. Not thread-safe: one per thread.

    Created lazily on a publishing thread and kept for its life; replaced after a
    connection error so the next publish starts on a fresh connection.
    """

    __slots__ = ("_app", "_clock", "_connection", "_policy", "_producer", "_registry")

    def __init__(
        self,
        app: Celery,
        policy: TransportPolicy,
        registry: ConnectionRegistry,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._app = app
        self._clock = clock
        self._policy = policy
        self._registry = registry
        self._connection: Connection | None = None
        self._producer: LeanProducer | None = None

    @property
    def connected(self) -> bool:
        """Whether this thread holds a connected producer (until an error drops it)."""
        return self._producer is not None

    def run(self, publish: Callable[[LeanProducer], T], deadline: float) -> T:
        """Publish once on this thread's connection; reconnect and retry only on refusal.

        ``publish`` gets the producer and must publish without retrying. A
        connection error drops the connection; if the error proves nothing was
        sent (a refused reconnect) the publish is tried again, with backoff, within
        the policy's attempt budget and ``deadline`` (a reading of the injected
        clock, seconds). Blocks the calling thread.

        Raises:
            ConnectFailed: no connection before the deadline (nothing was sent).
            Exception: what ``publish`` raised; after a connection error the
                message may or may not have reached the broker.
        """
        pause = self._policy.retry_interval
        attempts = 1
        while True:
            producer = self.producer(deadline)
            try:
                return publish(producer)
            except BROKER_ERRORS as exc:
                self.discard()
                if not nothing_sent(exc) or not self._again(attempts, deadline, pause):
                    raise
            time.sleep(pause)  # back off before reconnecting
            pause = min(pause * 2, self._policy.max_retry_interval)
            attempts += 1

    def producer(self, deadline: float) -> LeanProducer:
        """A connected producer, connecting first if needed.

        Refused connections are retried with backoff, at most ``max_attempts``
        attempts and never past ``deadline`` (a reading of the injected clock).
        Blocks the calling thread.

        Raises:
            ConnectFailed: no connection before the deadline (nothing was sent).
        """
        if self._producer is not None:
            return self._producer
        pause = self._policy.retry_interval
        attempts = 1
        while True:
            try:
                return self._connect()
            except Exception as exc:
                self.discard()
                if not nothing_sent(exc) or not self._again(attempts, deadline, pause):
                    raise ConnectFailed(f"could not connect to the broker: {exc}") from exc
                time.sleep(pause)  # back off before the next connection attempt
                pause = min(pause * 2, self._policy.max_retry_interval)
                attempts += 1

    def _again(self, attempts: int, deadline: float, pause: float) -> bool:
        # Another attempt only within the attempt budget and the caller's deadline.
        left = deadline - self._clock()
        return attempts < self._policy.max_attempts and left > pause + GIVE_UP_MARGIN

    def _connect(self) -> LeanProducer:
        app = self._app
        options = self._policy.transport_options(dict(app.conf.broker_transport_options or {}))
        connection = app.connection_for_write(
            transport_options=options, connect_timeout=self._policy.connect_timeout
        )
        self._connection = connection
        self._registry.add(connection)
        channel = connection.default_channel  # connects and PINGs (Redis)
        self._producer = LeanProducer(channel)
        return self._producer

    def discard(self) -> None:
        """Drop the connection (after an error); the next publish reconnects."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            self._registry.remove(connection)
            _close_quietly(connection)


#: Seconds before the caller's deadline at which retrying stops, so the caller
#: receives the precise "nothing was sent" error rather than an ambiguous timeout.
GIVE_UP_MARGIN = 0.05


class LeanProducer(Producer):
    """kombu's ``Producer``, declaring each queue and exchange once per connection.

    Celery asks for its queue to be declared on every publish; kombu then copies
    (binds) the entities before finding them in its own declared cache, which
    costs about a sixth of a publish. Everything else is kombu's own code, so the
    messages are exactly the stock ones.
    """

    def __init__(self, channel: Any) -> None:
        super().__init__(channel, auto_declare=False)
        self._declared: set[int] = set()
        self._held: Any = None

    def redis_connection(self) -> Any:
        """A redis-py connection this producer keeps for itself (Redis only).

        Taken from the pool once and kept: every ``get_connection`` from a pool
        polls the socket and records metrics, which costs a system call and a few
        microseconds per write. Only the owning publishing thread uses it.
        """
        if self._held is None:
            self._held = take_connection(self._pool())
        return self._held

    def drop_redis_connection(self) -> None:
        """Close the kept connection after an error; the next write takes a new one."""
        held, self._held = self._held, None
        if held is not None:
            held.disconnect()
            self._pool().release(held)

    def _pool(self) -> Any:
        # The Redis channel's own connection pool: kombu closes it with the channel.
        return channel_pool(self.channel)

    def declare_once(self, entity: Any) -> None:
        """Declare ``entity`` on this connection unless this producer already did."""
        key = hash(entity)
        if key not in self._declared:
            self.maybe_declare(entity)
            self._declared.add(key)

    def publish(self, body: Any, *args: Any, declare: Any = None, **kwargs: Any) -> Any:
        """``Producer.publish``, skipping entities this producer already declared."""
        fresh = [e for e in declare or () if hash(e) not in self._declared]
        publish: Any = super().publish  # the stubs predate kombu 5.7's signature
        result = publish(body, *args, declare=fresh, **kwargs)
        self._declared.update(hash(e) for e in fresh)
        return result


class ConnectionRegistry:
    """Every connection the publishing threads hold, so close() can release them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()

    def add(self, connection: Connection) -> None:
        with self._lock:
            self._connections.add(connection)

    def remove(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def close_all(self, close: Callable[[Connection], None] | None = None) -> None:
        """Close every connection with ``close`` (default: kombu's ``release``)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            (close or _close_quietly)(connection)


def _close_quietly(connection: Connection) -> None:
    # Closing a broken connection may raise; it is gone either way.
    with contextlib.suppress(Exception):
        connection.release()
