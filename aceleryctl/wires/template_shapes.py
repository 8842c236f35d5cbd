"""Which calls share a template, and the templates learned: the direct path's cache.

A *shape* (:func:`shape_key`) is what every call rendered from one template has
in common; :class:`TemplateCache` keeps one template (or "build in full") per
shape; :func:`templates_allowed` says whether rendering is allowed at all right
now (no ``before_task_publish`` receiver that could read or change a message).
The templates themselves are :mod:`aceleryctl.wires.message_template`'s.

Thread-safety: the cache is a dict filled without a lock (two threads learning
one shape at once compute the same template); the rest is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from celery import signals

from aceleryctl.compat.celery import all_receivers

if TYPE_CHECKING:
    from aceleryctl.wires.message_template import MessageTemplate

__all__ = [
    "MAX_SHAPES_PER_TASK",
    "MAX_TEMPLATES",
    "TemplateCache",
    "ignores_direct_messages",
    "shape_key",
    "templates_allowed",
]

#: Options whose value makes a message time-dependent: no template then.
_TIMED: Final = frozenset({"countdown", "eta", "expires"})
#: Options that only steer signals and retries, never the message.
_UNWRITTEN: Final = frozenset({"task_id", "retry_policy", "add_to_parent"})

#: Shapes kept at most; past that the cache starts again (per-tenant header names
#: or option values must not grow it without bound).
MAX_TEMPLATES: Final = 1024
#: Shapes one task may learn, at most (see :class:`TemplateCache`).
MAX_SHAPES_PER_TASK: Final = 64


#: ``before_task_publish`` receivers that do nothing for a message the direct path
#: builds (see :func:`ignores_direct_messages`).
_IGNORING: set[Any] = set()


def ignores_direct_messages(receiver: Any) -> Any:
    """Declare a ``before_task_publish`` receiver that returns without reading
    further or changing anything for a message whose ``retries`` header is 0,
    which every message the direct path renders has (the controller takes no
    ``retries`` option, and a ``retries`` header rules a template out). Rendered
    calls skip it, as its call would do nothing; full builds still call it. For
    aceleryctl's own receivers only (the worker's retry announcer). Returns
    ``receiver``.
    """
    _IGNORING.add(receiver)
    return receiver


def _ignores(receiver: Any) -> bool:
    return receiver in _IGNORING


def templates_allowed() -> bool:
    """Whether calls may be rendered now: no ``before_task_publish`` receiver that
    may read or change the message is connected (a rendered message is never
    handed to one). Cheap with no receiver."""
    return all_receivers(signals.before_task_publish, _ignores)


def shape_key(
    name: str,
    fixed: Mapping[str, Any],
    given: Mapping[str, Any],
    ignore_result: Any,
    where: tuple[Any, ...],
) -> Any:
    """What every call rendered from one template shares, hashable; or ``None``
    when a call must be built in full.

    ``fixed`` is the task class's options (Celery's cached dict, the same object
    for every call: it enters the key by identity, and the template keeps it),
    ``given`` the caller's, which win; ``ignore_result`` the task's own (the
    caller's, when given, is among its values); ``where`` the settings the text
    depends on (:attr:`Snapshot.shape`). The queue and its delivery mode follow
    from these (the route of a task and ``queue`` option is cached once worked
    out), so a template holds them. A countdown, an eta or an expiry, from either,
    rules templates out (times computed per call). The caller's values are keyed
    with their types (``1``, ``1.0`` and ``True`` are written differently); its
    ``headers`` enter by their names and ``root_id``/``parent_id`` by their
    presence, their values being per-call slots. Cheap: a loop over the caller's
    few options.
    """
    if fixed.get("expires") is not None and "expires" not in given:
        return None  # the class's expiry (its only option of _TIMED)
    items: list[tuple[str, type, Any]] = []
    header_names: tuple[str, ...] = ()
    for key, value in given.items():
        if key in _TIMED:
            if value is not None and (key != "countdown" or value):  # as_task_v2's tests
                return None
            continue
        if key in _UNWRITTEN or key == "root_id" or key == "parent_id":
            continue
        if key == "headers":
            if value is None:
                continue
            if type(value) is not dict or not all(type(k) is str for k in value):
                return None
            if "retries" in value:  # a message that a retry receiver would act on
                return None
            header_names = tuple(value)
            continue
        items.append((key, type(value), value))
    linked = (bool(given.get("root_id")), given.get("parent_id") is not None)
    try:
        values = frozenset(items)
    except TypeError:  # a value that cannot be hashed
        return None
    return (name, where, id(fixed), ignore_result, values, header_names, linked)


class TemplateCache:
    """Learned templates by shape key; ``None`` marks a shape built in full.

    A task learns at most :data:`MAX_SHAPES_PER_TASK` shapes (until the cache
    starts again): shapes that keep changing (header names per tenant, option
    values per call) would otherwise cost a learn, a full build and a render, on
    every call.
    """

    __slots__ = ("_learned", "_templates")

    def __init__(self) -> None:
        self._templates: dict[Any, MessageTemplate | None] = {}
        self._learned: dict[str, int] = {}

    def get(self, key: Any, channel: Any, fixed: Any) -> MessageTemplate | Literal[False] | None:
        """The template of ``key`` for ``channel`` and the task options ``fixed``;
        ``None`` if the shape is built in full; ``False`` if it is not learned yet
        (for this channel and these options) and may be."""
        try:
            found = self._templates[key]
        except KeyError:
            pass
        else:
            if found is None or (found.channel is channel and found.fixed is fixed):
                return found
        if self._learned.get(key[0], 0) >= MAX_SHAPES_PER_TASK:
            return None
        return False

    def put(self, key: Any, template: MessageTemplate | None) -> None:
        """Keep ``template`` (or ``None``: build in full) for ``key``."""
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
            self._learned.clear()
        self._templates[key] = template
        self._learned[key[0]] = self._learned.get(key[0], 0) + 1

    def __len__(self) -> int:
        return len(self._templates)
