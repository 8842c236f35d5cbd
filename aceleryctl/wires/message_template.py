"""Redis envelopes from a verified template: the direct path's build of a repeated call.

Calls of one task with the same options differ in a handful of values only: the
task id (in ``id``, ``root_id`` and ``correlation_id``), ``argsrepr``,
``kwargsrepr``, the encoded body, the delivery tag, a parent's ids inside a
running task, and the values of the caller's headers (the correlation id). The
rest of the envelope, about 1 KB of JSON, is the same for every such call, yet
building it runs Celery's ``as_task_v2``, kombu's ``prepare_message`` and the
envelope's JSON encoding each time (about 15 µs of the direct path's 24 µs).

A :class:`MessageTemplate` is that envelope's JSON text with those values cut
out, as a ``%`` format string whose fields take the values' JSON text. The
direct path learns one per shape (:func:`~aceleryctl.wires.template_shapes.shape_key`,
:meth:`DirectPath.prepare <aceleryctl.wires.redis_message.DirectPath.prepare>`):

1. the first call of a shape is built in full, as always;
2. the same message is built again with :class:`Placeholders` (unique strings)
   in place of the per-call values, encoded, and cut where they appear; a
   placeholder that appears inside a longer string rules the shape out;
3. the template is kept only if rendering it with the first call's own values
   (and its delivery tag) gives exactly the full build's text, list key, body and
   headers; otherwise that shape is always built in full.

A call whose shape has a template skips the rest of the build: the options'
merge, their checks and the routing gave the same for the first call of the
shape, since they depend on nothing else.

Only shapes whose other values cannot change between calls qualify
(:func:`~aceleryctl.wires.template_shapes.shape_key` returns ``None`` for a
countdown, an eta or an expiry, times computed per call, and for option values
that cannot be hashed), and the direct path renders nothing while a
``before_task_publish`` receiver that may read or change a message is connected
(:func:`~aceleryctl.wires.template_shapes.templates_allowed`).

Thread-safety: templates are immutable; learning and rendering read only their
arguments. Runs on the building thread (a publishing thread, or the loop's).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any, Final

from aceleryctl.compat.kombu_redis import encoded_body, redis_envelope
from aceleryctl.dispatch.ids import new_task_id
from aceleryctl.wires.celery_message import (
    Destination,
    Snapshot,
    broker_properties,
    celery_message,
    reprs,
)
from aceleryctl.wires.encoding import envelope_json, serialize_body

__all__ = [
    "MessageTemplate",
    "Placeholders",
    "compile_template",
    "learn_template",
    "render_call",
]

#: Slots of the per-call values, in :meth:`MessageTemplate.render`'s order; the
#: caller's header values follow, in the order of their names in the shape.
SLOT_ID, SLOT_ARGSREPR, SLOT_KWARGSREPR, SLOT_BODY, SLOT_TAG, SLOT_ROOT, SLOT_PARENT = range(7)
_FIXED_SLOTS: Final = 7


class Placeholders:
    """Unique strings standing for the per-call values while a template is learned.

    Args:
        header_names: the caller's header names (their values get slots after
            the fixed ones).
    """

    __slots__ = ("_pattern", "_token", "header_names")

    def __init__(self, header_names: Sequence[str]) -> None:
        self._token = uuid.uuid4().hex
        self.header_names = tuple(header_names)
        self._pattern = re.compile(rf'"aceleryctl-slot:{self._token}:(\d+)"')

    def __getitem__(self, slot: int) -> str:
        return f"aceleryctl-slot:{self._token}:{slot}"

    def headers(self) -> dict[str, str]:
        """The caller's headers, each name with its placeholder."""
        return {name: self[_FIXED_SLOTS + i] for i, name in enumerate(self.header_names)}

    def cut(self, text: str) -> tuple[list[str], list[int]] | None:
        """``text`` cut at each placeholder written as a whole JSON string: the
        literal pieces and, between them, the slots; ``None`` if a placeholder
        appears anywhere else (inside a longer string)."""
        pieces: list[str] = []
        slots: list[int] = []
        last = 0
        for found in self._pattern.finditer(text):
            pieces.append(text[last : found.start()])
            slots.append(int(found.group(1)))
            last = found.end()
        pieces.append(text[last:])
        if text.count(self._token) != len(slots):
            return None
        return pieces, slots


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """One shape's Redis list key and envelope text, with fields for the per-call values.

    Attributes:
        key: the Redis list the message is pushed onto.
        queue: the queue it was routed to (declared by the full build).
        serializer: the body's serializer (the caller's, the class's or the app's).
        text: the envelope's JSON text as a ``%`` format string: each ``%s`` takes
            the JSON text of one slot's value, in the order ``pick`` gives them
            (``%`` formatting costs a third of ``str.format`` here).
        pick: takes the values of the fields, in order, from the slot values.
        used: the slots the text has (only those are encoded).
        channel: the kombu channel the template was learned with (a new channel,
            after a reconnect, learns again: its settings may differ).
        fixed: the task class's options it was learned with (kept: the shape key
            holds their identity).
        headers: the message headers with placeholders, and ``fills``: which header
            takes which slot's value (for ``after_task_publish`` receivers).
        embed: the body's third element (callbacks, errbacks, chain, chord).
    """

    key: str
    queue: Any
    serializer: str
    text: str
    pick: Callable[[list[Any]], tuple[Any, ...]]
    used: tuple[int, ...]
    channel: Any
    fixed: Any
    headers: dict[str, Any]
    fills: tuple[tuple[str, int], ...]
    embed: dict[str, Any]

    def render(self, values: Sequence[Any]) -> str:
        """The envelope of one call: ``values`` in slot order (see ``SLOT_*``; the
        caller's header values last). Unused slots may hold anything."""
        encoded = list(values)
        for slot in self.used:  # each value as kombu's JSON encoder writes it (ensure_ascii)
            value = encoded[slot]
            encoded[slot] = (
                encode_basestring_ascii(value) if type(value) is str else envelope_json(value)
            )
        return self.text % self.pick(encoded)

    def message_headers(self, values: Sequence[Any]) -> dict[str, Any]:
        """A fresh copy of the call's headers, as Celery built them (nested lists and
        dicts copied too: receivers may change them)."""
        headers = {k: _fresh(v) for k, v in self.headers.items()}
        for name, slot in self.fills:
            headers[name] = values[slot]
        return headers


def _fresh(value: Any) -> Any:
    if type(value) is list:
        return [_fresh(v) for v in value]
    if type(value) is dict:
        return {k: _fresh(v) for k, v in value.items()}
    return value


def compile_template(
    holders: Placeholders,
    key: str,
    queue: Any,
    serializer: str,
    envelope_text: str,
    channel: Any,
    fixed: Any,
    headers: dict[str, Any],
    embed: dict[str, Any],
) -> MessageTemplate | None:
    """The template of an envelope built with ``holders`` in place of the per-call
    values, or ``None`` when a placeholder was written inside a longer string."""
    cut = holders.cut(envelope_text)
    if cut is None:
        return None
    pieces, slots = cut
    if not slots:  # not even the task id: nothing to render per call
        return None
    text = "%s".join(piece.replace("%", "%%") for piece in pieces)
    fetch = itemgetter(*slots)
    pick = fetch if len(slots) > 1 else (lambda values: (fetch(values),))
    fills = tuple(
        (name, slot)
        for name, value in headers.items()
        for slot in range(_FIXED_SLOTS + len(holders.header_names))
        if value == holders[slot]
    )
    used = tuple(sorted(set(slots)))
    return MessageTemplate(
        key, queue, serializer, text, pick, used, channel, fixed, headers, fills, embed
    )


def learn_template(
    app: Any,
    name: str,
    fixed: Mapping[str, Any],
    options: Mapping[str, Any],
    destination: Destination,
    channel: Any,
    snapshot: Snapshot,
) -> MessageTemplate | None:
    """Build the message of a call of ``options`` (merged from the task's ``fixed``
    and the caller's) with placeholders for its per-call values, as the full build
    does but for the publish signals (nothing is rendered while a
    ``before_task_publish`` receiver that may read or change a message is
    connected), and cut it into a template. Not yet verified: the caller compares a
    render with a full build.

    Raises:
        TypeError, ValueError, kombu.exceptions.EncodeError: what the full build
            of the same options raises.
    """
    headers_given = options.get("headers") or {}
    holders = Placeholders(tuple(headers_given))
    held = dict(options, task_id=holders[SLOT_ID])
    if held.get("root_id"):
        held["root_id"] = holders[SLOT_ROOT]
    if held.get("parent_id") is not None:
        held["parent_id"] = holders[SLOT_PARENT]
    if holders.header_names:
        held["headers"] = holders.headers()
    headers, properties, body = celery_message(
        app, name, (), {}, held, snapshot, holders[SLOT_ARGSREPR], holders[SLOT_KWARGSREPR]
    )
    props, priority = broker_properties(properties, destination)
    serializer = options.get("serializer") or snapshot.serializer
    content_type, content_encoding, _ = serialize_body(body, serializer)
    routing_key = destination.queue.name
    key, envelope = redis_envelope(
        channel, routing_key, holders[SLOT_TAG], "", priority, content_type, content_encoding,
        headers, props,
    )  # fmt: skip
    envelope["body"] = holders[SLOT_BODY]
    text = envelope_json(envelope)
    return compile_template(
        holders, key, destination.queue, serializer, text, channel, fixed, headers, body[2]
    )


def render_call(
    template: MessageTemplate,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    given: Mapping[str, Any],
    channel: Any,
    snapshot: Snapshot,
    tag: str | None = None,
) -> tuple[str, list[Any], Any]:
    """One call's envelope text, its slot values (the headers, when asked for, are
    :meth:`MessageTemplate.message_headers` of them) and its body, from its shape's
    ``template``.

    Per call: ``argsrepr`` and ``kwargsrepr``, the body serialized and encoded as
    kombu's channel does, a delivery tag (``tag``, or a new one), then one ``%``.
    Runs on the building thread (a publishing thread, or the loop's).

    Raises:
        TypeError: ``args`` is not a list or tuple, or ``kwargs`` not a mapping
            (as ``as_task_v2``).
        kombu.exceptions.EncodeError: the body cannot be serialized.
    """
    args = args or ()
    kwargs = kwargs or {}
    if not isinstance(args, list | tuple):
        raise TypeError("task args must be a list or tuple")
    if not isinstance(kwargs, Mapping):
        raise TypeError("task keyword arguments must be a mapping")
    argsrepr, kwargsrepr = reprs(args, kwargs, snapshot)
    body = (args, kwargs, dict(template.embed))
    _, _, data = serialize_body(body, template.serializer)
    encoded = encoded_body(channel, data)
    values: list[Any] = [
        given["task_id"],
        argsrepr,
        kwargsrepr,
        encoded,
        tag or new_task_id(),
        given.get("root_id"),
        given.get("parent_id"),
    ]
    headers = given.get("headers")
    if headers:
        values.extend(headers.values())
    return template.render(values), values, body
