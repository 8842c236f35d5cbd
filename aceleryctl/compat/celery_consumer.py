"""The worker consumer's task strategies: how Celery hands a message to a task, and how
that message is settled, behind one wrapper the run-once guard uses.

``consumer.strategies`` is documented (Celery's "Extensions and Bootsteps" guide:
one callable per task name, built by the ``Tasks`` bootstep), but what a strategy
is called with is not: ``celery.worker.consumer.Consumer.create_task_handler``
calls ``strategy(message, body, ack, reject, callbacks)`` positionally, and
``celery.worker.request.Request`` settles the message by calling
``ack(logger, connection_errors)`` once or ``reject(logger, connection_errors,
requeue)`` once (``Request.acknowledge`` / ``Request.reject``, both guarded by
``Request.acknowledged``). Nor is the ``replaced_task_nesting`` header
``Task.replace`` sets on the message that keeps the replaced task's id. As in
:mod:`aceleryctl.compat.celery`, each docstring says what is relied on and what
happens when it changes; ``tests/unit/test_compat.py`` checks each against a
real strategy, request and message.

Everything here runs in the worker's main process: :func:`wrap_strategy`'s
wrapper on the consumer's thread, per message; the settle callbacks on whichever
thread settles the request (the consumer's thread with the prefork and solo pools,
a pool thread with the threads pool).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

__all__ = [
    "MessageAttempt",
    "Settle",
    "Verdict",
    "is_wrapped",
    "message_attempt",
    "wrap_strategy",
]

_logger: Final = logging.getLogger("aceleryctl.guard")

#: Marks a strategy :func:`wrap_strategy` made, so that a restarted consumer's
#: strategies are never wrapped twice.
_WRAPPED: Final = "aceleryctl_run_once"


@dataclass(frozen=True, slots=True)
class MessageAttempt:
    """Which run of which task a message asks for, read from its headers.

    Attributes:
        task_name: the task's registered name (header ``task``).
        task_id: the task id (``id``).
        retries: Celery's attempt number (``retries``): 0, then +1 per ``self.retry``.
        nesting: ``replaced_task_nesting``: +1 each time ``Task.replace`` hands the
            id on to a new signature (whose ``retries`` starts at 0 again).
        eta: when the message is due (``eta``, a POSIX timestamp in seconds), or
            ``None`` when it is due at once or its ``eta`` cannot be read.
    """

    task_name: str
    task_id: str
    retries: int
    nesting: int
    eta: float | None


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # Celery writes UTC by default (enable_utc)
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def message_attempt(message: Any, body: Any) -> MessageAttempt | None:
    """The run a task message asks for, or ``None`` when it names no task id.

    Reads the protocol-2 headers (``message.headers``: ``task``, ``id``,
    ``retries``, ``eta`` from Celery's documented message protocol, and the
    undocumented ``replaced_task_nesting``), or, for a protocol-1 message, the
    decoded ``body`` the consumer passes to the strategy. A header missing or of
    another type reads as 0 (``retries``, ``replaced_task_nesting``) or ``None``
    (``eta``). Were ``Task.replace`` to stop setting ``replaced_task_nesting``, a
    replacement would look like a second copy of the replaced task and be skipped:
    ``test_compat.py`` fails first. Runs per message on the consumer's thread.
    """
    headers = getattr(message, "headers", None)
    fields: Mapping[str, Any]
    if isinstance(headers, Mapping) and "id" in headers:
        fields = headers
    elif isinstance(body, Mapping) and "id" in body:
        fields = body
    else:
        return None
    task_id = fields.get("id")
    if not isinstance(task_id, str) or not task_id:
        return None
    return MessageAttempt(
        task_name=str(fields.get("task")),
        task_id=task_id,
        retries=_number(fields.get("retries")),
        nesting=_number(fields.get("replaced_task_nesting")),
        eta=_timestamp(fields.get("eta")),
    )


class Verdict(enum.Enum):
    """What :func:`wrap_strategy`'s ``admit`` may answer besides a :class:`Settle`."""

    #: Run the message as Celery would, unwatched.
    RUN = "run"
    #: Ack the message and never run it.
    DROP = "drop"


class Settle(Protocol):
    """Told how an admitted message was settled; exactly one method is called, at
    most once, on whichever thread settles the request. Must not raise."""

    def acked(self) -> None:
        """The message was acked: it will never be delivered again."""

    def rejected(self, requeue: bool) -> None:
        """The message was rejected; with ``requeue`` it goes back to its queue."""

    def abandoned(self) -> None:
        """The strategy raised before the message became a request (an invalid
        message the consumer rejects itself)."""


Strategy = Callable[..., Any]
Admit = Callable[[Any, Any], "Verdict | Settle"]


def _requeue(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    if "requeue" in kwargs:
        return bool(kwargs["requeue"])
    return bool(args[2]) if len(args) > 2 else False


def wrap_strategy(strategy: Strategy, admit: Admit, connection_errors: Any) -> Strategy:
    """A strategy that asks ``admit(message, body)`` first, then runs ``strategy``
    (:data:`Verdict.RUN`), drops the message (:data:`Verdict.DROP`: acked through
    Celery's own ack callback, so the consumer's prefetch accounting is kept), or
    runs it with ack and reject callbacks that first tell the returned
    :class:`Settle`.

    ``connection_errors`` is the consumer's, handed to the ack of a dropped message
    as ``Request`` would hand it. A strategy this function made is returned as it
    is (:func:`is_wrapped`). If Celery changed how it calls strategies or their
    callbacks, the wrapper raises ``TypeError`` per message and the consumer logs
    and rejects it; ``test_compat.py`` fails first.
    """
    if is_wrapped(strategy):
        return strategy

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
        verdict = admit(message, body)
        if verdict is Verdict.RUN:
            return strategy(message, body, ack, reject, callbacks)
        if verdict is Verdict.DROP:
            ack(_logger, connection_errors)
            return None
        settle: Settle = verdict

        def on_ack(*args: Any, **kwargs: Any) -> Any:
            settle.acked()
            return ack(*args, **kwargs)

        def on_reject(*args: Any, **kwargs: Any) -> Any:
            settle.rejected(_requeue(args, kwargs))
            return reject(*args, **kwargs)

        try:
            return strategy(message, body, on_ack, on_reject, callbacks)
        except BaseException:
            settle.abandoned()
            raise

    setattr(guarded, _WRAPPED, True)
    return guarded


def is_wrapped(strategy: Strategy) -> bool:
    """Whether ``strategy`` was made by :func:`wrap_strategy`."""
    return getattr(strategy, _WRAPPED, False) is True
