"""What a failed dispatch raises, what it tells the breaker, and its one log record.

Each function here turns one way a dispatch can fail (refused at the pool,
never started, past its deadline, or a wire's failure outcome) into the
exception of :mod:`aceleryctl.exceptions` that tells the caller what it may do
next. Runs on the caller's thread (or, for an on-commit publish, the thread that
settles it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from celery import Celery

from aceleryctl._logging import Redactor, log_dispatch_failure
from aceleryctl.dispatch.jobs import AnyFuture
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.dispatch.refusals import RefusalDigest
from aceleryctl.exceptions import (
    BrokerError,
    CircuitOpenError,
    ControllerClosed,
    DispatchOverloaded,
    DispatchTimeout,
    TaskDispatchError,
    TaskSerializationError,
)
from aceleryctl.wires.base import WireOutcome
from aceleryctl.wires.connections import (
    SERIALIZATION_ERRORS,
    ConnectFailed,
    ReplicaAckTimeout,
    failure_hint,
)

__all__ = ["Failures", "Permit", "Settled", "outcome_of", "settle_unobserved"]

#: Told how a detached (on-commit) dispatch ended: its outcome, and the error a
#: caller would have got (``None`` when sent). Runs on a publishing thread, or on
#: the committing thread when the dispatch was refused at once; must not block.
Settled = Callable[[DispatchOutcome, TaskDispatchError | None], None]


class Permit(Protocol):
    """What the engine needs of a breaker permit (see ``aceleryctl.breaker.Permit``)."""

    def record_success(self, duration: float) -> None: ...
    def record_failure(self, duration: float) -> None: ...
    def release(self) -> None: ...


class Failures:
    """Builds dispatch errors and writes the failure log for one engine.

    Args:
        app: the controller's Celery app (to name positional arguments in the log).
        redactor: masks secrets in the logged arguments.
    """

    __slots__ = ("_app", "_redactor", "refusals")

    def __init__(self, app: Celery, redactor: Redactor) -> None:
        self._app = app
        self._redactor = redactor
        #: Refused on-commit dispatches, logged as a digest, never one by one.
        self.refusals = RefusalDigest()

    # -- errors --------------------------------------------------------------------

    @staticmethod
    def refused(attempt: Attempt, exc: Exception, *, closed: bool) -> TaskDispatchError:
        """The pool would not queue the dispatch (full, or shut down): nothing was sent."""
        name, task_id = attempt.dispatch.task_name, attempt.task_id
        if closed:
            return ControllerClosed(
                f"could not dispatch {name}: the controller is closed; nothing was sent",
                task_name=name,
                task_id=task_id,
            )
        return DispatchOverloaded(
            f"could not dispatch {name}: {exc}; nothing was sent", task_name=name, task_id=task_id
        )

    @staticmethod
    def never_started(attempt: Attempt, *, closed: bool) -> TaskDispatchError:
        """The deadline passed (or the pool closed) before a thread took it: nothing was sent."""
        dispatch = attempt.dispatch
        reason = (
            "the controller closed before a publishing thread took it"
            if closed
            else f"no publishing thread became free within {dispatch.timeout:g} s"
        )
        error_type = ControllerClosed if closed else DispatchOverloaded
        return error_type(
            f"could not dispatch {dispatch.task_name}: {reason}; nothing was sent",
            task_name=dispatch.task_name,
            task_id=attempt.task_id,
        )

    @staticmethod
    def opened_meanwhile(attempt: Attempt, retry_after: float) -> CircuitOpenError:
        """A detached publish found the breaker open when its turn came: nothing was sent."""
        return CircuitOpenError(
            f"not dispatching {attempt.dispatch.task_name}: the circuit breaker opened "
            "while it waited for a publishing thread; nothing was sent",
            retry_after=retry_after,
            task_name=attempt.dispatch.task_name,
            task_id=attempt.task_id,
        )

    @staticmethod
    def timed_out(attempt: Attempt) -> DispatchTimeout:
        """The deadline passed while the publish ran: the outcome is unknown."""
        dispatch = attempt.dispatch
        id_note = f" under task id {attempt.task_id}" if attempt.task_id else ""
        return DispatchTimeout(
            f"dispatching {dispatch.task_name}{id_note} did not finish within "
            f"{dispatch.timeout:g} s; the outcome is unknown: the message may still reach "
            "the broker and the task may run",
            timeout=dispatch.timeout,
            task_name=dispatch.task_name,
            task_id=attempt.task_id,
        )

    @staticmethod
    def from_wire(attempt: Attempt, outcome: WireOutcome, permit: Permit) -> TaskDispatchError:
        """The error for a wire's failure outcome; tells the breaker (a broker fault
        counts against it, the caller's own mistakes do not)."""
        exc = outcome.error
        name, task_id = attempt.dispatch.task_name, attempt.task_id
        if outcome.broker_fault:
            permit.record_failure(attempt.duration)
        else:
            permit.release()
        if isinstance(exc, SERIALIZATION_ERRORS):
            return TaskSerializationError(
                f"the arguments of {name} cannot be serialized ({exc}); "
                "pass JSON-serializable values (ids instead of objects), or set a "
                "serializer that accepts them; nothing was sent",
                task_name=name,
                task_id=task_id,
            )
        if isinstance(exc, TaskDispatchError):  # raised by a zero-argument dispatcher
            return exc
        if isinstance(exc, ReplicaAckTimeout):
            return DispatchTimeout(
                f"dispatching {name} under task id {task_id}: the primary stored the "
                f"message but {exc} (REPLICA_ACKS); the outcome is unknown: the message "
                "is lost if the primary is lost before a replica copies it, else the task runs",
                timeout=attempt.dispatch.timeout,
                task_name=name,
                task_id=task_id,
            )
        if outcome.broker_fault and exc is not None:
            if outcome.outcome is DispatchOutcome.NOT_SENT:
                note = "nothing was sent"
            else:
                note = "the message may or may not have reached the broker"
            shown = exc.__cause__ if isinstance(exc, ConnectFailed) and exc.__cause__ else exc
            return BrokerError(
                f"the broker failed while dispatching {name}: {type(shown).__name__}: "
                f"{shown}; {note}{failure_hint(exc)}",
                task_name=name,
                task_id=task_id,
                message_may_exist=outcome.outcome is not DispatchOutcome.NOT_SENT,
            )
        return TaskDispatchError(
            f"could not dispatch {name}: {type(exc).__name__}: {exc}",
            task_name=name,
            task_id=task_id,
        )

    @staticmethod
    def attach_cause(error: TaskDispatchError, cause: BaseException | None) -> None:
        """Chain the library's own error (not aceleryctl's internal connect marker)."""
        if isinstance(cause, ConnectFailed) and cause.__cause__ is not None:
            cause = cause.__cause__
        if error is not cause:
            error.__cause__ = cause

    # -- the log -----------------------------------------------------------------

    @staticmethod
    def log_outcome(error: TaskDispatchError, outcome: DispatchOutcome) -> str:
        """The ``outcome`` field of the failure record: ``not_sent``, ``unknown``
        (the deadline passed mid-publish) or ``failed`` (anything else)."""
        if outcome is DispatchOutcome.NOT_SENT:
            return "not_sent"
        if isinstance(error, DispatchTimeout):
            return "unknown"
        return "failed"

    def log_attempt(self, attempt: Attempt, error: TaskDispatchError, outcome: str) -> None:
        """The failure record of ``attempt`` (:meth:`log`), except a breaker refusal:
        never logged per call; an on-commit one goes to :attr:`refusals`."""
        if isinstance(error, CircuitOpenError):
            if attempt.on_commit:
                self.refusals.add(attempt.dispatch.task_name, lost=not attempt.kept)
            return
        self.log(attempt.dispatch, error, outcome, attempt.task_id, attempt.relayed)

    def log(
        self,
        dispatch: Dispatch,
        error: TaskDispatchError,
        outcome: str,
        task_id: str | None = None,
        relayed: bool = False,
    ) -> None:
        """Write the one structured record of a failed dispatch (arguments redacted):
        at ERROR, or at WARNING for the outbox relay's attempts (the row keeps the
        dispatch: nothing is lost, and the relay tries again)."""
        args: Any = dispatch.args
        kwargs: Any = dispatch.kwargs
        signature_of: Any = None
        if dispatch.kind is DispatchKind.TASK and not dispatch.by_name:
            signature_of = dispatch.target
        elif dispatch.kind is DispatchKind.SIGNATURE and dispatch.signature is not None:
            signature = dispatch.signature
            args = (*args, *tuple(signature.get("args") or ()))
            kwargs = {**dict(signature.get("kwargs") or {}), **kwargs}
            target = dispatch.target
            if target is not None and signature.get("task") in self._app.tasks:
                signature_of = target.type
        log_dispatch_failure(
            redactor=self._redactor,
            task_name=dispatch.task_name,
            task_id=task_id if task_id is not None else dispatch.task_id,
            args=args,
            kwargs=kwargs,
            error=error,
            outcome=outcome,
            dispatch_method=dispatch.method,
            signature_of=signature_of,
            level=logging.WARNING if relayed else logging.ERROR,
            correlation_id=dispatch.correlation_id,
        )


def outcome_of(error: TaskDispatchError) -> DispatchOutcome:
    """What ``error`` says about the message: unknown after a deadline passed
    mid-publish or a broker failure that may have stored it, else not sent."""
    if isinstance(error, DispatchTimeout) or (
        isinstance(error, BrokerError) and error.message_may_exist
    ):
        return DispatchOutcome.UNKNOWN
    return DispatchOutcome.NOT_SENT


def settle_unobserved(attempt: Attempt, permit: Permit, future: AnyFuture[Any]) -> None:
    """Tell the breaker how a publish whose caller was cancelled ended, without
    logging or raising (there is no caller). Any thread (a done callback)."""
    if future.cancelled():
        permit.release()
        return
    outcome: WireOutcome = future.result()
    if outcome.sent:
        permit.record_success(attempt.duration)
    elif outcome.broker_fault:
        permit.record_failure(attempt.duration)
    else:
        permit.release()
