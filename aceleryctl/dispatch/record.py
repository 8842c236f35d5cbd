"""The dispatch record: what a caller asked for, as plain frozen data, and its attempt.

A :class:`Dispatch` holds everything needed to publish one task message again
(task name, arguments, every Celery calling option, task id, headers with the
correlation id, the deadline budget, and the kind), so that it can be stored,
inspected, replayed and recorded without working the options out again. A
dispatch of a task, a signature or a canvas round-trips through Celery's own
serializer (:meth:`Dispatch.dumps` / :meth:`Dispatch.loads`); a zero-argument
callable is the one kind that is not data, and says so.

An :class:`Attempt` holds the facts of one attempt to publish a dispatch (when
it was queued, started and finished, the id a canvas was frozen under, the path
it took); the engine alone writes it.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from kombu.serialization import dumps as _serialize
from kombu.serialization import loads as _deserialize

__all__ = ["Attempt", "Dispatch", "DispatchKind", "NotData"]

#: Version of the dictionary layout of :meth:`Dispatch.to_dict`.
FORMAT_VERSION: Final = 1


class DispatchKind(enum.Enum):
    """What the caller handed over; the values are stable lowercase strings."""

    #: A task, by object or by registered name (``send_task``).
    TASK = "task"
    #: A single-task signature, possibly with partial arguments.
    SIGNATURE = "signature"
    #: A group, chain or chord.
    CANVAS = "canvas"
    #: A zero-argument callable that dispatches on its own: not data.
    CALLABLE = "callable"


class NotData(TypeError):
    """A dispatch of a zero-argument callable cannot be stored or serialized."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One dispatch as the caller asked for it. Immutable; safe to share between threads.

    Attributes:
        kind: see :class:`DispatchKind`.
        task_name: the task's registered name; for a canvas or a callable, a
            description of it (for logs and errors).
        task_id: the id the message is sent under. Always set for tasks and
            signatures; for a canvas only when the caller gave one (otherwise
            assigned when the canvas is frozen, at publish time); ``None`` for a
            callable.
        args, kwargs: the call's own arguments. For a signature these are the
            partial arguments added at call time; its stored ones are in
            ``signature``.
        options: the Celery calling options handed to Celery as they are:
            ``task_id``, ``headers`` (with the correlation id), ``parent_id`` and
            ``root_id`` when dispatched from inside a task, and everything the
            caller passed. Controller options (``dispatch_timeout``) are not here.
        timeout: the deadline budget of one attempt, in seconds.
        method: the controller method that made it (``"delay"``, ``"send_task"``...).
        signature: for a signature or canvas, Celery's own dictionary form of it.
        correlation_id: the correlation id carried in ``options["headers"]``.
        by_name: a task sent by its registered name (``send_task``): published
            with ``app.send_task``, without the task class's own options.
        trace_context: the W3C trace context of the caller, kept when the dispatch
            is stored in the outbox (:mod:`aceleryctl.tracing`), so that the relay
            publishes it inside the caller's trace; ``None`` otherwise.
        target: the caller's task, signature or canvas object, or the callable,
            kept to publish without rebuilding it. Not data: it is neither compared
            nor serialized; a dispatch loaded from its serialized form resolves
            its task again by name.
    """

    kind: DispatchKind
    task_name: str
    task_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    timeout: float
    method: str = "delay"
    signature: Mapping[str, Any] | None = None
    correlation_id: str | None = None
    by_name: bool = False
    trace_context: Mapping[str, str] | None = None
    target: Any = field(default=None, compare=False, repr=False)

    @property
    def is_data(self) -> bool:
        """Whether this dispatch can be serialized (every kind but a callable)."""
        return self.kind is not DispatchKind.CALLABLE

    @property
    def queue(self) -> str | None:
        """The ``queue`` option as given, when it is a queue name."""
        queue = self.options.get("queue")
        return queue if isinstance(queue, str) else None

    def to_dict(self) -> dict[str, Any]:
        """This dispatch as a dictionary of plain values (what an outbox stores).

        Raises:
            NotData: the dispatch is of a zero-argument callable.
        """
        if not self.is_data:
            raise NotData(
                f"{self.task_name} is a zero-argument callable, which cannot be stored; "
                "dispatch the task itself with its arguments to make it durable"
            )
        return {
            "v": FORMAT_VERSION,
            "kind": self.kind.value,
            "task_name": self.task_name,
            "task_id": self.task_id,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "timeout": self.timeout,
            "method": self.method,
            "signature": None if self.signature is None else dict(self.signature),
            "correlation_id": self.correlation_id,
            "by_name": self.by_name,
            "trace_context": None if self.trace_context is None else dict(self.trace_context),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Dispatch:
        """Rebuild a dispatch from :meth:`to_dict`'s output.

        Raises:
            ValueError: the dictionary is of an unknown format or kind.
        """
        if data.get("v") != FORMAT_VERSION:
            raise ValueError(f"unknown dispatch format {data.get('v')!r} (expected 1)")
        kind = DispatchKind(data["kind"])
        if kind is DispatchKind.CALLABLE:
            raise ValueError("a callable dispatch has no stored form")
        return cls(
            kind=kind,
            task_name=str(data["task_name"]),
            task_id=data.get("task_id"),
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            options=dict(data.get("options") or {}),
            timeout=float(data["timeout"]),
            method=str(data.get("method") or "delay"),
            signature=data.get("signature"),
            correlation_id=data.get("correlation_id"),
            by_name=bool(data.get("by_name")),
            trace_context=data.get("trace_context"),
        )

    def dumps(self, serializer: str = "json") -> tuple[str, str, bytes | str]:
        """Serialize with Celery's (kombu's) serializer registry.

        Returns:
            ``(content_type, content_encoding, data)`` as kombu's ``dumps`` does.

        Raises:
            NotData: the dispatch is of a zero-argument callable.
            kombu.exceptions.EncodeError: an argument or option cannot be encoded.
        """
        content_type, encoding, payload = _serialize(self.to_dict(), serializer=serializer)
        return content_type, encoding, payload

    @classmethod
    def loads(cls, data: bytes | str, content_type: str, content_encoding: str) -> Dispatch:
        """The inverse of :meth:`dumps`.

        Raises:
            kombu.exceptions.DecodeError: ``data`` is not what ``content_type`` says.
            ValueError: the decoded value is not a stored dispatch.
        """
        decoded = _deserialize(data, content_type, content_encoding, accept={content_type})
        if not isinstance(decoded, Mapping):
            raise ValueError(f"a stored dispatch is a mapping, got {type(decoded).__name__}")
        return cls.from_dict(decoded)


def _init_dispatch(
    self: Dispatch,
    kind: DispatchKind,
    task_name: str,
    task_id: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    timeout: float,
    method: str = "delay",
    signature: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    by_name: bool = False,
    trace_context: Mapping[str, str] | None = None,
    target: Any = None,
) -> None:
    # Dispatch.__init__: the generated one of a frozen dataclass sets each field
    # with object.__setattr__ by name (2.4 µs for these 13, on every dispatch);
    # this sets each slot through its own descriptor (1.2 µs). The instance stays
    # frozen. Same signature and defaults (test_record checks them).
    _kind(self, kind)
    _task_name(self, task_name)
    _task_id(self, task_id)
    _args(self, args)
    _kwargs(self, kwargs)
    _options(self, options)
    _timeout(self, timeout)
    _method(self, method)
    _signature(self, signature)
    _correlation_id(self, correlation_id)
    _by_name(self, by_name)
    _trace_context(self, trace_context)
    _target(self, target)


(
    _kind,
    _task_name,
    _task_id,
    _args,
    _kwargs,
    _options,
    _timeout,
    _method,
    _signature,
    _correlation_id,
    _by_name,
    _trace_context,
    _target,
) = (vars(Dispatch)[f.name].__set__ for f in fields(Dispatch))
Dispatch.__init__ = _init_dispatch  # type: ignore[method-assign]


@dataclass(slots=True, eq=False)
class Attempt:
    """One attempt to publish a :class:`Dispatch`: facts written by the engine only.

    Times are readings of the engine's monotonic clock, in seconds.

    Attributes:
        dispatch: what is being published.
        deadline: the clock reading by which the caller gives up.
        queued_at: when the engine accepted it.
        context: the caller's ``contextvars`` context, copied by the pool at
            submission and set by the batch runner; the wire runs Celery's publish
            signals inside it (``None``: run in the current context).
        task_id: the id the message goes under; for a canvas without a given id,
            set by the wire when it freezes the canvas.
        parent: the Celery task running on the caller's thread, if any (its
            trail gets the result, as Celery's own ``apply_async`` does).
        started_at, finished_at: when the publish started and ended on its
            publishing thread (0.0 until then).
        path: the wire that published it (``"redis"``, ``"stock"``), once known.
        queue: the queue the wire routed it to, when the wire knows it.
        on_commit: the dispatch was published after a transaction committed.
        relayed: the outbox's relay publishes it.
        kept: an on-commit dispatch whose failure something settles (the outbox
            keeps its row); ``False``: a failure after the commit loses it.
    """

    dispatch: Dispatch
    deadline: float
    queued_at: float
    context: contextvars.Context | None = None
    task_id: str | None = None
    parent: Any = None
    started_at: float = 0.0
    finished_at: float = 0.0
    path: str | None = None
    queue: str | None = None
    on_commit: bool = False
    relayed: bool = False
    kept: bool = False

    @property
    def duration(self) -> float:
        """Seconds the publish took on its thread (0.0 before it finished)."""
        return max(self.finished_at - self.started_at, 0.0)

    def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        """Call ``fn(*args)`` inside the caller's context (or as is without one),
        with a stored dispatch's trace context current when it carries one."""
        carrier = self.dispatch.trace_context
        if carrier is not None:
            from aceleryctl.tracing import run_within

            args = (carrier, fn, *args)
            fn = run_within
        if self.context is None:
            return fn(*args)
        return self.context.run(fn, *args)
