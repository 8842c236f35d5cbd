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
from collections.abc import Mapping, Sequence
from typing import Any, Final

from celery import Celery, Task, signals
from celery.app.task import Task as _StockTask
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
    signature_checker,
    static_route,
    task_message_v2,
)
from aceleryctl.compat.kombu_redis import redis_envelope
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.wires.celery_message import (
    Destination,
    Prepared,
    Snapshot,
    broker_properties,
    celery_message,
    reprs,
)
from aceleryctl.wires.encoding import envelope_json, serialize_body
from aceleryctl.wires.fast_repr import fast_repr
from aceleryctl.wires.message_template import learn_template, render_call
from aceleryctl.wires.template_shapes import TemplateCache, shape_key, templates_allowed

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


class DirectPath:
    """Decides which calls take the direct path and builds their messages.

    A call of a shape built before is rendered from that shape's verified
    template (:mod:`aceleryctl.wires.message_template`) when no
    ``before_task_publish`` receiver is connected.

    One per controller. Thread-safety: the route cache is filled under a lock;
    everything else reads immutable state or state of the calling thread.

    Args:
        app: the controller's Celery app (its broker must be Redis: the engine
            only creates this for a Redis transport).
    """

    #: Whether repeated shapes are rendered from templates (Redis envelopes only).
    templates = True

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str | None], Destination | None] = {}
        self._origin: tuple[int, str] | None = None
        self._templates = TemplateCache()

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
            argsrepr_maxsize=app.amqp.argsrepr_maxsize,
            kwargsrepr_maxsize=app.amqp.kwargsrepr_maxsize,
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
        fixed = exec_options(task)
        name = task.name
        shape: Any = None
        if self.templates and templates_allowed():
            # Everything below is a function of the shape: a template learned for it
            # passed the same checks and routing (see message_template).
            shape = shape_key(name, fixed, given, task.ignore_result, snapshot.shape)
            if shape is not None:
                template = self._templates.get(shape, channel, fixed)
                if template:
                    payload, values, body = render_call(
                        template, args, kwargs, given, channel, snapshot
                    )
                    queue = template.queue
                    task_id = given["task_id"]
                    return Prepared(
                        template.key, queue, payload, task_id, name, body, None, "", queue.name,
                        (template, values),
                    )  # fmt: skip
                if template is None:
                    shape = None  # built in full: its template would render otherwise
        options = dict(fixed, **given)
        for key in _NONE_ONLY:
            if options.get(key) is not None:
                return None
        options.setdefault("ignore_result", task.ignore_result)
        if cached_only:
            destination = self._routes.get((name, options.get("queue")))
        else:
            destination = self._destination(name, options.get("queue"), task, snapshot)
        if destination is None:
            return None
        if shape is not None:
            learned = (shape, fixed, destination, channel, snapshot)
            return self._learn(learned, name, args, kwargs, given, options)
        return self._build(name, args, kwargs, options, destination, channel, snapshot)

    def _learn(
        self,
        learned: tuple[Any, Mapping[str, Any], Destination, Any, Snapshot],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        given: Mapping[str, Any],
        options: dict[str, Any],
    ) -> Prepared:
        # The full build of this call, and the template of its shape, kept only if
        # rendering it with this call's values (and delivery tag) gives the same.
        shape, fixed, destination, channel, snapshot = learned
        tag = new_task_id()
        full = self._build(name, args, kwargs, options, destination, channel, snapshot, tag)
        try:  # the call is built: learning may fail, the call must not
            template = learn_template(
                self._app, name, fixed, options, destination, channel, snapshot
            )
            if template is not None:
                payload, values, body = render_call(
                    template, args, kwargs, given, channel, snapshot, tag
                )
                again = (template.key, payload, body, template.message_headers(values))
                if again != (full.key, full.payload, full.body, full.headers):
                    template = None
        except Exception:  # built in full from now on
            template = None
        self._templates.put(shape, template)
        return full

    def _destination(
        self, name: str, queue: str | None, task: Any, snapshot: Snapshot
    ) -> Destination | None:
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
    ) -> Destination | None:
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
        return Destination(found, int(maybe_delivery_mode(mode) or 2))

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
        destination: Destination,
        channel: Any,
        snapshot: Snapshot,
        tag: str | None = None,
    ) -> Prepared:
        # The full build: Celery's message, the publish signal, kombu's envelope.
        argsrepr, kwargsrepr = reprs(args, kwargs, snapshot)
        headers, properties, body = celery_message(
            self._app, name, args, kwargs, options, snapshot, argsrepr, kwargsrepr
        )
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
        props, priority = broker_properties(properties, destination)
        content_type, content_encoding, data = serialize_body(
            body, options.get("serializer") or snapshot.serializer
        )
        key, payload = self.encode(
            channel, routing_key, data, priority, content_type, content_encoding, headers, props,
            tag=tag,
        )  # fmt: skip
        task_id: str = options["task_id"]
        return Prepared(key, queue, payload, task_id, name, body, headers, "", routing_key)

    def encode(
        self, channel: Any, routing_key: str, *message: Any, tag: str | None = None
    ) -> tuple[str, Any]:
        """The broker's form of one serialized message, published through the
        anonymous exchange with ``routing_key``: here the Redis list key and the
        JSON envelope kombu's Redis channel would push. ``message`` is what the
        channel's ``prepare_message`` takes (body, priority, content type and
        encoding, headers, properties); the properties may be updated in place.
        ``tag``: the delivery tag (default: a new one)."""
        # A delivery tag cut from pooled random bytes (kombu reads os.urandom for each one).
        key, envelope = redis_envelope(channel, routing_key, tag or new_task_id(), *message)
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
                headers=item.message_headers(),
                exchange=item.exchange,
                routing_key=item.routing_key,
            )
