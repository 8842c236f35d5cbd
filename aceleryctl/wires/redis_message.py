"""Celery's own task message for Redis, built with less work (the direct path's message).

``task.apply_async`` spends most of its time outside the message: it looks up a
dozen configuration values per call, asks the hostname for the ``origin`` header,
formats ``argsrepr`` with a depth-limited repr, routes the task again, and kombu
copies entities and builds a Redis client per message. For the calls that need
none of that generality, this module builds the same message with the same
functions (Celery's ``as_task_v2``, kombu's serializer registry, the Redis
channel's own ``prepare_message`` and envelope augmentation and its priority
key; the private ones among them are reached through :mod:`aceleryctl.compat`)
and pushes a whole batch of messages for one queue with a single
``LPUSH``.

What takes this path (anything else takes Celery's stock ``apply_async``):

* a task of the controller's app whose class keeps Celery's ``apply_async`` and
  ``shadow_name``, without pydantic argument dumping;
* calling options among :data:`DIRECT_OPTIONS`, with ``retry`` off and no
  compression;
* a destination that routing resolves from the task name alone (no
  ``task_routes``, or only dict/glob routes), naming a direct-exchange queue
  without expiry arguments, published through the anonymous exchange as Celery
  does for such queues;
* an app on task protocol 2 that neither runs tasks eagerly nor sends
  ``task-sent`` monitoring events, with no receiver of the deprecated
  ``task_sent`` signal.

Celery's ``before_task_publish`` and ``after_task_publish`` signals fire as on
the stock path, with the same arguments; a receiver may still change headers,
properties and body before the message is written. ``tests/integration`` holds
the differential test that publishes the same calls through both paths and
compares the raw messages field by field.

Everything here runs on a publishing thread unless a docstring says otherwise.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from celery import Celery, Task, signals
from celery.app.task import Task as _StockTask
from dateutil.parser import isoparse  # type: ignore[import-untyped]
from kombu import Queue
from kombu.common import Broadcast
from kombu.entity import maybe_delivery_mode

from aceleryctl.compat.celery import (
    anon_nodename,
    backend_sees_publishes,
    exec_options,
    has_publish_quirks,
    has_receivers,
    reply_to_oid,
    saferepr,
    seconds_until,
    signature_checker,
    static_route,
    task_message_v2,
)
from aceleryctl.compat.kombu_redis import redis_envelope
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.wires.encoding import envelope_json, serialize_body
from aceleryctl.wires.fast_repr import fast_repr

__all__ = ["DIRECT_OPTIONS", "DirectPath", "Prepared", "Snapshot", "fast_repr"]

#: Calling options the direct path reproduces. ``NONE_ONLY`` ones are accepted
#: only when ``None`` (a task's class attributes put them in every call).
DIRECT_OPTIONS: Final = frozenset(
    {
        "add_to_parent",
        "countdown",
        "eta",
        "expires",
        "headers",
        "ignore_result",
        "parent_id",
        "priority",
        "queue",
        "retry",
        "retry_policy",
        "root_id",
        "serializer",
        "soft_time_limit",
        "task_id",
        "time_limit",
    }
)
_NONE_ONLY: Final = frozenset(
    {"compression", "delivery_mode", "exchange", "immediate", "mandatory", "routing_key"}
)

#: Routes cached per (task name, queue option) at most; past that, routed per call.
_MAX_ROUTES: Final = 1024

#: Options Celery passes on to the producer as message properties.
_PROPERTY_OPTIONS: Final = ("priority", "immediate", "mandatory")


@dataclass(slots=True)
class Prepared:
    """A message ready to write: its Redis list key and the encoded envelope (on
    AMQP: no key, and the ``amqp.Message``), the queue to declare first, and what
    ``after_task_publish`` reports."""

    key: str
    queue: Queue
    payload: Any
    task_id: str
    name: str
    body: Any
    headers: dict[str, Any]
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The app's settings one batch of direct messages is built with, and
    Celery's message builder (bound once per batch)."""

    serializer: str
    repr_maxlevels: int
    retry_policy: Mapping[str, Any]
    reply_to: str
    origin: str
    default_delivery_mode: Any
    task_message: Callable[..., Any]


@dataclass(frozen=True, slots=True)
class _Destination:
    queue: Queue
    delivery_mode: int


class DirectPath:
    """Decides which calls take the direct path and builds their messages.

    One per controller. Thread-safety: the route cache is filled under a lock;
    everything else reads immutable state or state of the calling thread.

    Args:
        app: the controller's Celery app (its broker must be Redis: the engine
            only creates this for a Redis transport).
    """

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str | None], _Destination | None] = {}
        self._origin: tuple[int, str] | None = None

    def accepts(self, task: Task, options: Mapping[str, Any]) -> bool:  # type: ignore[type-arg]
        """Whether a call of ``task`` with ``options`` may take the direct path.

        Cheap (a few attribute reads); the app's configuration is checked once per
        batch (:meth:`configured`). Runs on any thread.
        """
        cls = type(task)
        if (
            cls.apply_async is not _StockTask.apply_async
            or cls.shadow_name is not _StockTask.shadow_name
            or has_publish_quirks(task)
            or options.get("retry")
        ):
            return False
        for key, value in options.items():
            if key not in DIRECT_OPTIONS and not (key in _NONE_ONLY and value is None):
                return False
        queue = options.get("queue")
        return queue is None or isinstance(queue, str)

    def takes(self, attempt: Attempt) -> bool:
        """Whether ``attempt`` may take the direct path: a plain call of a task of this
        app (not by name) that :meth:`accepts`. Runs on any thread."""
        return self.takes_dispatch(attempt.dispatch)

    def takes_dispatch(self, dispatch: Dispatch) -> bool:
        """:meth:`takes`, for a dispatch not yet attempted."""
        task = dispatch.target
        return (
            dispatch.kind is DispatchKind.TASK
            and not dispatch.by_name
            and isinstance(task, Task)
            and task.app is self._app
            and self.accepts(task, dispatch.options)
        )

    def configured(self) -> Snapshot | None:
        """The configuration one batch is built with, or ``None`` when the app's
        configuration rules the direct path out right now. Read once per batch:
        Celery's settings lookups are slow enough to matter per message."""
        app = self._app
        conf = app.conf
        if (
            conf.task_protocol != 2
            or conf.task_always_eager
            or conf.task_send_sent_event
            or conf.task_compression
            or has_receivers(signals.task_sent)
        ):
            return None
        if backend_sees_publishes(app):
            return None  # the backend must see each publish (rpc:// declares a reply queue)
        return Snapshot(
            serializer=conf.task_serializer,
            repr_maxlevels=conf.task_repr_maxlevels,
            retry_policy=conf.task_publish_retry_policy,
            reply_to=reply_to_oid(app),
            origin=self._origin_header(),
            default_delivery_mode=conf.task_default_delivery_mode,
            task_message=task_message_v2(app),
        )

    def prepare(
        self,
        task: Task,  # type: ignore[type-arg]
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        given: Mapping[str, Any],
        channel: Any,
        snapshot: Snapshot,
        cached_only: bool = False,
    ) -> Prepared | None:
        """Build ``message`` as Celery would, or return ``None`` if it must take
        the stock path after all (its destination is not a plain direct queue;
        with ``cached_only``, also when its route was not worked out before).

        Raises what Celery's ``apply_async`` raises for the same input: ``TypeError``
        for arguments that do not fit the task's signature, ``ValueError`` for
        inconsistent time limits, kombu's ``EncodeError`` for unserializable
        arguments.
        """
        if task.soft_time_limit and task.time_limit and task.soft_time_limit > task.time_limit:
            raise ValueError("soft_time_limit must be less than or equal to time_limit")
        if task.typing:
            check = signature_checker(task)
            if check is not None:
                check(*args, **kwargs)
        options = dict(exec_options(task), **given)
        for key in _NONE_ONLY:
            if options.get(key) is not None:
                return None
        options.setdefault("ignore_result", task.ignore_result)
        name = task.name
        if cached_only:
            destination = self._routes.get((name, options.get("queue")))
        else:
            destination = self._destination(name, options.get("queue"), task, snapshot)
        if destination is None:
            return None
        return self._build(name, args, kwargs, options, destination, channel, snapshot)

    def _destination(
        self, name: str, queue: str | None, task: Any, snapshot: Snapshot
    ) -> _Destination | None:
        key = (name, queue)
        try:
            return self._routes[key]
        except KeyError:
            pass
        found = self._route(name, queue, task, snapshot)
        with self._lock:
            if len(self._routes) < _MAX_ROUTES:  # per-tenant queue names must not grow it
                self._routes[key] = found
        return found

    def _route(
        self, name: str, queue: str | None, task: Any, snapshot: Snapshot
    ) -> _Destination | None:
        # Route once per (task, queue option), with Celery's own router, when the
        # result can depend on nothing else.
        routed = static_route(self._app, name, queue, task)
        if routed is None:
            return None
        found: Any = routed.get("queue")
        if set(routed) != {"queue"} or not isinstance(found, Queue):
            return None  # the route sets an exchange, a routing key or other options
        exchange = found.exchange
        if (
            isinstance(found, Broadcast)
            or exchange is None
            or exchange.type != "direct"
            or not self.plain_queue(found)
        ):
            return None
        mode = exchange.delivery_mode or snapshot.default_delivery_mode
        return _Destination(found, int(maybe_delivery_mode(mode) or 2))

    def plain_queue(self, queue: Queue) -> bool:
        """Whether messages for ``queue`` can be written here: on Redis, a queue
        without expiry, message TTL or other arguments (kombu's Redis channel
        applies some of those when it declares or reads the list)."""
        return (
            getattr(queue, "expires", None) is None
            and getattr(queue, "message_ttl", None) is None
            and not queue.queue_arguments
        )

    def _origin_header(self) -> str:
        # anon_nodename() asks the OS for the hostname on every call; cache it per
        # process (a fork gets its own pid, hence its own origin).
        pid = os.getpid()
        cached = self._origin
        if cached is None or cached[0] != pid:
            cached = self._origin = (pid, anon_nodename())
        return cached[1]

    def _build(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        destination: _Destination,
        channel: Any,
        snapshot: Snapshot,
    ) -> Prepared:
        app = self._app
        amqp = app.amqp
        task_id: str = options["task_id"]
        expires = options.get("expires")
        # What Celery hands on as message properties: the options no step consumed.
        extra: dict[str, Any] = {k: options[k] for k in _PROPERTY_OPTIONS if k in options}
        if expires is not None:
            extra["expiration"] = _expires_in(app, expires)
        maxlevels = snapshot.repr_maxlevels
        argsrepr = fast_repr(args, amqp.argsrepr_maxsize) or saferepr(
            args, amqp.argsrepr_maxsize, maxlevels=maxlevels
        )
        kwargsrepr = fast_repr(kwargs, amqp.kwargsrepr_maxsize) or saferepr(
            kwargs, amqp.kwargsrepr_maxsize, maxlevels=maxlevels
        )
        headers, properties, body, _ = snapshot.task_message(
            task_id,
            name,
            args,
            kwargs,
            countdown=options.get("countdown"),
            eta=options.get("eta"),
            expires=expires,
            reply_to=snapshot.reply_to,
            time_limit=options.get("time_limit"),
            soft_time_limit=options.get("soft_time_limit"),
            root_id=options.get("root_id"),
            parent_id=options.get("parent_id"),
            ignore_result=options["ignore_result"],
            origin=snapshot.origin,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
        )
        user_headers = options.get("headers")
        if user_headers:
            headers.update(user_headers)
        properties.update(extra)
        queue = destination.queue
        routing_key = queue.name
        if has_receivers(signals.before_task_publish):
            retry_policy = options.get("retry_policy")
            policy = snapshot.retry_policy
            signals.before_task_publish.send(
                sender=name,
                body=body,
                exchange="",
                routing_key=routing_key,
                declare=[queue],
                headers=headers,
                properties=properties,
                retry_policy=dict(policy, **retry_policy) if retry_policy else dict(policy),
            )
        props = dict(properties)
        priority = props.pop("priority", None)
        expiration = props.pop("expiration", None)
        props.pop("immediate", None)
        props.pop("mandatory", None)
        props["delivery_mode"] = destination.delivery_mode
        if expiration is not None:
            props["expiration"] = str(int(expiration * 1000))
        content_type, content_encoding, data = serialize_body(
            body, options.get("serializer") or snapshot.serializer
        )
        key, payload = self.encode(
            channel, routing_key, data, priority, content_type, content_encoding, headers, props
        )
        return Prepared(key, queue, payload, task_id, name, body, headers, "", routing_key)

    def encode(self, channel: Any, routing_key: str, *message: Any) -> tuple[str, Any]:
        """The broker's form of one serialized message, published through the
        anonymous exchange with ``routing_key``: here the Redis list key and the
        JSON envelope kombu's Redis channel would push. ``message`` is what the
        channel's ``prepare_message`` takes (body, priority, content type and
        encoding, headers, properties); the properties may be updated in place."""
        # A delivery tag cut from pooled random bytes (kombu reads os.urandom for each one).
        key, envelope = redis_envelope(channel, routing_key, new_task_id(), *message)
        return key, envelope_json(envelope)

    @staticmethod
    def announce(prepared: Sequence[Prepared]) -> None:
        """Fire ``after_task_publish`` for written messages, as Celery does."""
        if not has_receivers(signals.after_task_publish):
            return
        for item in prepared:
            signals.after_task_publish.send(
                sender=item.name,
                body=item.body,
                headers=item.headers,
                exchange=item.exchange,
                routing_key=item.routing_key,
            )


def _expires_in(app: Celery, expires: Any) -> float:
    # Seconds until ``expires``, as Celery's send_task computes the message TTL.
    if isinstance(expires, datetime):
        seconds: float = seconds_until(expires, app.now())
    elif isinstance(expires, str):
        seconds = seconds_until(isoparse(expires), app.now())
    else:
        seconds = expires
    return max(seconds, 0)
