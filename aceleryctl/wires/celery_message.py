"""The pieces of Celery's task message the direct path assembles, and their records.

Celery's ``apply_async`` hands ``as_task_v2`` a dozen options, puts the caller's
headers into its headers, passes the options no step consumed on as message
properties, and kombu's ``Producer.publish`` then splits those properties into
the priority, the expiry in milliseconds and the queue's delivery mode. These
functions do the same steps in the same order for one message; the direct path
(:mod:`aceleryctl.wires.redis_message`) and its templates
(:mod:`aceleryctl.wires.message_template`) both build with them.

Runs on whatever thread builds the message; everything here is pure or reads
immutable state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from celery import Celery
from dateutil.parser import isoparse  # type: ignore[import-untyped]
from kombu import Queue

from aceleryctl.compat.celery import saferepr, seconds_until
from aceleryctl.wires.fast_repr import fast_repr

__all__ = [
    "Destination",
    "Prepared",
    "Snapshot",
    "broker_properties",
    "celery_message",
    "reprs",
]

#: Options Celery passes on to the producer as message properties.
_PROPERTY_OPTIONS: Final = ("priority", "immediate", "mandatory")


@dataclass(slots=True)
class Prepared:
    """A message ready to write: its Redis list key and the encoded envelope (on
    AMQP: no key, and the ``amqp.Message``), the queue to declare first, and what
    ``after_task_publish`` reports.

    A message rendered from a template has no ``headers`` dict until
    :meth:`message_headers` asks (only ``after_task_publish`` receivers read them):
    ``rendered`` holds its template and slot values then.
    """

    key: str
    queue: Queue
    payload: Any
    task_id: str
    name: str
    body: Any
    headers: dict[str, Any] | None
    exchange: str
    routing_key: str
    rendered: tuple[Any, list[Any]] | None = None

    def message_headers(self) -> dict[str, Any]:
        """The message's headers (made once, on first use, for a rendered message)."""
        headers = self.headers
        if headers is None:
            template, values = self.rendered  # type: ignore[misc]
            headers = self.headers = template.message_headers(values)
        return headers


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The app's settings one batch of direct messages is built with, and
    Celery's message builder (bound once per batch). ``shape``: the settings a
    message's fixed text depends on (serializer, ``reply_to``, ``origin``), a
    part of every template's key."""

    serializer: str
    repr_maxlevels: int
    argsrepr_maxsize: int
    kwargsrepr_maxsize: int
    retry_policy: Mapping[str, Any]
    reply_to: str
    origin: str
    default_delivery_mode: Any
    task_message: Callable[..., Any]
    shape: tuple[str, str, str] = field(init=False)

    def __post_init__(self) -> None:
        # Read per rendered call: made once, with the snapshot.
        object.__setattr__(self, "shape", (self.serializer, self.reply_to, self.origin))


@dataclass(frozen=True, slots=True)
class Destination:
    """A routed call's queue and the delivery mode its exchange gives messages."""

    queue: Queue
    delivery_mode: int


def reprs(args: tuple[Any, ...], kwargs: dict[str, Any], snapshot: Snapshot) -> tuple[str, str]:
    """Celery's ``argsrepr`` and ``kwargsrepr`` (its ``saferepr`` with the app's
    size and depth limits, read into ``snapshot``), through ``repr`` where that is
    provably the same text."""
    maxlevels = snapshot.repr_maxlevels
    limit = snapshot.argsrepr_maxsize
    argsrepr = fast_repr(args, limit) or saferepr(args, limit, maxlevels=maxlevels)
    limit = snapshot.kwargsrepr_maxsize
    kwargsrepr = fast_repr(kwargs, limit) or saferepr(kwargs, limit, maxlevels=maxlevels)
    return argsrepr, kwargsrepr


def celery_message(
    app: Celery,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Mapping[str, Any],
    snapshot: Snapshot,
    argsrepr: str,
    kwargsrepr: str,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Celery's headers, properties and body of one call, as ``apply_async`` makes
    them: ``as_task_v2``'s, then the caller's headers, then the options Celery
    hands on as message properties (those no step consumed).

    Raises:
        TypeError, ValueError: what ``as_task_v2`` raises for the same input.
    """
    expires = options.get("expires")
    extra: dict[str, Any] = {k: options[k] for k in _PROPERTY_OPTIONS if k in options}
    if expires is not None:
        extra["expiration"] = _expires_in(app, expires)
    headers, properties, body, _ = snapshot.task_message(
        options["task_id"],
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
    return headers, properties, body


def broker_properties(
    properties: Mapping[str, Any], destination: Destination
) -> tuple[dict[str, Any], Any]:
    """What kombu's ``Producer.publish`` makes of Celery's properties: the new
    properties (the expiry in milliseconds, the queue's delivery mode) and the
    priority apart."""
    props = dict(properties)
    priority = props.pop("priority", None)
    expiration = props.pop("expiration", None)
    props.pop("immediate", None)
    props.pop("mandatory", None)
    props["delivery_mode"] = destination.delivery_mode
    if expiration is not None:
        props["expiration"] = str(int(expiration * 1000))
    return props, priority


def _expires_in(app: Celery, expires: Any) -> float:
    # Seconds until ``expires``, as Celery's send_task computes the message TTL.
    if isinstance(expires, datetime):
        seconds: float = seconds_until(expires, app.now())
    elif isinstance(expires, str):
        seconds = seconds_until(isoparse(expires), app.now())
    else:
        seconds = expires
    return max(seconds, 0)
