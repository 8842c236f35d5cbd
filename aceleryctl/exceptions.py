"""Every exception aceleryctl raises, ordered by what the caller may safely do next.

::

    TaskDispatchError                 base; .task_name, .task_id
    ├─ DispatchRejected               nothing was sent: safe to retry later
    │  ├─ CircuitOpenError            the breaker is open; .retry_after seconds
    │  ├─ DispatchOverloaded          no pool slot before the deadline
    │  └─ ControllerClosed            the controller was shut down
    ├─ DispatchTimeout                the deadline passed mid-publish: outcome UNKNOWN
    ├─ BrokerError                    the broker refused or failed the publish
    └─ TaskSerializationError         the arguments cannot be encoded (the caller's bug)

    AsyncContextError                 a sync facade method was called on a thread that
                                      runs an event loop (a programming error, not a
                                      dispatch failure, so not a TaskDispatchError)

Every :class:`TaskDispatchError` raised for a failed publish has the original
exception as ``__cause__``. This module imports nothing but the standard library.
"""

from __future__ import annotations

__all__ = [
    "AsyncContextError",
    "BrokerError",
    "CircuitOpenError",
    "ControllerClosed",
    "DispatchOverloaded",
    "DispatchRejected",
    "DispatchTimeout",
    "TaskDispatchError",
    "TaskSerializationError",
]


class TaskDispatchError(Exception):
    """A task could not be dispatched.

    The name and meaning are those of the original sync controller, so existing
    ``except TaskDispatchError`` blocks keep working. Catch a subclass to act on
    what happened.

    Attributes:
        task_name: the Celery task name, or a description of the callable or canvas
            that was dispatched; ``None`` when not known.
        task_id: the id the message was (or would have been) sent under, when it
            was known before the publish started; ``None`` otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        task_name: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task_name = task_name
        self.task_id = task_id


class DispatchRejected(TaskDispatchError):
    """Nothing was sent to the broker; retrying later is safe."""


class CircuitOpenError(DispatchRejected):
    """The circuit breaker is open, so the call was refused without touching the broker.

    Attributes:
        retry_after: seconds until the breaker lets a probe call through (``0.0``
            when it already would).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        task_name: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, task_name=task_name, task_id=task_id)
        self.retry_after = retry_after


class DispatchOverloaded(DispatchRejected):
    """No publishing thread became free before the call's deadline, or the wait
    queue was full; the publish never started."""


class ControllerClosed(DispatchRejected):
    """The controller has been closed and accepts no more dispatches."""


class DispatchTimeout(TaskDispatchError, TimeoutError):
    """The deadline passed while the publish was in progress: the outcome is UNKNOWN.

    The publishing thread may still complete the publish after this is raised, so
    the task may run. Make tasks idempotent, or pass your own ``task_id`` and check
    for it before dispatching again.

    Attributes:
        timeout: the deadline that passed, in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        timeout: float,
        task_name: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, task_name=task_name, task_id=task_id)
        self.timeout = timeout


class BrokerError(TaskDispatchError):
    """The broker refused or failed the publish (a connection or protocol error).

    The original kombu or redis-py exception is the ``__cause__``.

    Attributes:
        message_may_exist: ``False`` when the failure proves nothing was sent (the
            connection was refused or never established), so retrying cannot
            duplicate; ``True`` when the connection failed after the publish
            command may have reached the broker.
    """

    def __init__(
        self,
        message: str,
        *,
        task_name: str | None = None,
        task_id: str | None = None,
        message_may_exist: bool = True,
    ) -> None:
        super().__init__(message, task_name=task_name, task_id=task_id)
        self.message_may_exist = message_may_exist


class TaskSerializationError(TaskDispatchError):
    """The task's arguments or options cannot be encoded by the configured serializer.

    This is the caller's bug: it is never retried and never counts as a broker
    fault. Nothing was sent.
    """


class AsyncContextError(RuntimeError):
    """A blocking sync facade method was called on a thread running an event loop.

    Await the method of the same name on the async controller instead (the message
    names it). Raised at once, before anything is sent.
    """
