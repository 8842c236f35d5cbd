"""``AsyncCeleryController``: dispatch Celery tasks from coroutines without blocking the loop.

Every method is a coroutine that runs on the event loop thread. The blocking part
of a dispatch (Celery and kombu building and publishing the message) runs on the
controller's own small pool of daemon threads, under a deadline and behind a
circuit breaker. See :mod:`aceleryctl.exceptions` for what each failure means.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async
from celery import Celery, Signature, Task
from celery.result import AsyncResult, EagerResult

from aceleryctl._clock import Clock
from aceleryctl._logging import DEFAULT_REDACT_KEYS, Redactor
from aceleryctl.breaker import CircuitBreaker
from aceleryctl.dispatch.build import Built, check_timeout
from aceleryctl.dispatch.build import current_celery_app as _current_celery_app
from aceleryctl.dispatch.core import (
    ControllerCore,
    Dispatchable,
    outbox_enabled,
    require_outbox,
)
from aceleryctl.dispatch.engine import DispatchEngine
from aceleryctl.dispatch.listener import DispatchListener
from aceleryctl.dispatch.oncommit import check_deferrable, defer_until_commit
from aceleryctl.dispatch.pool import settle
from aceleryctl.dispatch.probe import run_probe_async
from aceleryctl.exceptions import TaskDispatchError
from aceleryctl.outbox.durable import run_durable
from aceleryctl.outbox.handoff import store_on_commit
from aceleryctl.wires import wire_for
from aceleryctl.wires.connections import TransportPolicy

if TYPE_CHECKING:
    from aceleryctl.sync import SyncCeleryController

__all__ = ["AsyncCeleryController"]

P = ParamSpec("P")
R = TypeVar("R")


class AsyncCeleryController(ControllerCore):
    """Dispatch Celery tasks from async code, with a deadline per call.

    Thread-safety: one instance serves any number of coroutines on any number of
    event loops, and its :attr:`sync` facade serves threads, all sharing one pool
    and one breaker. Make one per broker per process (the default instance,
    :data:`aceleryctl.controller`, is built from Django settings).

    Args:
        app: the Celery app to publish with; default: Celery's current app at
            construction time.
        dispatch_timeout: default deadline of a call in seconds, covering the wait
            for a publishing thread and the publish itself. ``apply_async`` and
            ``send_task`` take a per-call ``dispatch_timeout=`` override.
        max_workers: publishing threads (>= 1). Publishing holds the GIL: more
            threads add event-loop lag, not throughput (docs/benchmarks.md).
        max_pending: calls that may wait for a thread at once (>= 1); beyond that a
            call fails at once with :class:`~aceleryctl.exceptions.DispatchOverloaded`.
        drain_timeout: seconds :meth:`aclose` waits for queued and running publishes.
        breaker: the circuit breaker to share; default: a new
            :class:`~aceleryctl.breaker.CircuitBreaker` with default settings.
        redact_keys: key substrings whose values are masked in failure logs;
            default :data:`aceleryctl.DEFAULT_REDACT_KEYS`.
        max_batch: publishes one thread sends in a single round trip when they
            queue up together (>= 1; Redis only): less CPU each, more loop lag.
        direct_publish: plain task calls take the direct path (Celery's own message,
            built with less work; docs/design.md); ``False``: stock ``apply_async``.
        replica_acks: Redis: after each direct write, ``WAIT`` (within the deadline)
            until this many replicas hold it; else ``DispatchTimeout`` (unknown).
            0 (default): the primary's reply suffices. See docs/brokers-redis.md.
        loop_publish: Redis: coroutines' direct-path calls are written from their
            event loop's thread, no thread hop (:mod:`aceleryctl.dispatch.loop_path`).
        listeners: :class:`~aceleryctl.dispatch.listener.DispatchListener` objects
            told about every settled dispatch, pool and breaker change (metrics,
            traces); see also :meth:`add_listener`.
        clock: monotonic seconds (``time.monotonic``; tests: a ``ManualClock``).
        durable: every dispatch is durable unless a call says ``durable=False``
            (needs the outbox; see docs/durability.md).
        log_exception_chain: failure records carry the whole chain of causes
            (kombu's and redis-py's internal retries included) instead of the
            dispatch's own traceback and a one-line summary of its causes.

    Raises:
        ValueError, TypeError: an argument is out of range or of the wrong type.
    """

    __slots__ = ("_closed", "_sync")

    def __init__(
        self,
        app: Celery | None = None,
        *,
        dispatch_timeout: float = 2.0,
        max_workers: int = 1,
        max_pending: int = 10_000,
        drain_timeout: float = 5.0,
        breaker: CircuitBreaker | None = None,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_batch: int = 16,
        direct_publish: bool = True,
        replica_acks: int = 0,
        loop_publish: bool = False,
        listeners: Iterable[DispatchListener] = (),
        clock: Clock = time.monotonic,
        durable: bool = False,
        log_exception_chain: bool = False,
    ) -> None:
        if app is None:
            app = _current_celery_app()
        if isinstance(redact_keys, str):
            raise TypeError("redact_keys must be an iterable of key substrings, not one str")
        policy = TransportPolicy.for_deadline(check_timeout(dispatch_timeout))
        engine = DispatchEngine(
            app,
            wire_for(app, policy, direct=direct_publish, clock=clock, replica_acks=replica_acks),
            max_workers=max_workers,
            max_pending=max_pending,
            breaker=breaker if breaker is not None else CircuitBreaker(),
            redactor=Redactor.from_keys(redact_keys, exception_chain=log_exception_chain),
            max_batch=max_batch,
            listeners=tuple(listeners),
            clock=clock,
            loop_publish=loop_publish,
            connect_timeout=policy.connect_timeout,
        )
        super().__init__(
            engine, dispatch_timeout=dispatch_timeout, drain_timeout=drain_timeout, durable=durable
        )
        self._closed = False
        self._sync: SyncCeleryController | None = None

    def __repr__(self) -> str:
        return (
            f"<AsyncCeleryController app={self.app.main!r} "
            f"dispatch_timeout={self.dispatch_timeout:g}s "
            f"max_workers={self._engine.pool.max_workers}>"
        )

    @property
    def sync(self) -> SyncCeleryController:
        """The blocking facade: the same methods, sharing this pool, breaker and logging."""
        if self._sync is None:
            from aceleryctl.sync import SyncCeleryController

            self._sync = SyncCeleryController(self)
        return self._sync

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding this controller's broker."""
        return self._engine.breaker

    def add_listener(self, listener: DispatchListener) -> None:
        """Tell ``listener`` about every dispatch settled from now on (and pool and
        breaker changes). Thread-safe; see :mod:`aceleryctl.dispatch.listener`."""
        self._engine.add_listener(listener)

    def remove_listener(self, listener: DispatchListener) -> None:
        """Stop telling ``listener``; a no-op if it was never added."""
        self._engine.remove_listener(listener)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` (or ``sync.close``) has been called."""
        return self._closed

    # -- dispatch ----------------------------------------------------------

    @overload
    async def delay(
        self, task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncResult[R]: ...

    @overload
    async def delay(
        self, task: Signature[Any] | Callable[[], Any], /, *args: Any, **kwargs: Any
    ) -> Any: ...

    async def delay(self, task: Dispatchable, /, *args: Any, **kwargs: Any) -> Any:
        """Send ``task(*args, **kwargs)`` to the broker, like ``task.delay``.

        Returns:
            The task's ``AsyncResult`` (a ``GroupResult`` for a group), built for
            the calling thread.

        Raises:
            TaskDispatchError: a subclass; see :mod:`aceleryctl.exceptions`.
            TypeError: ``task`` is not something that can be dispatched.
        """
        built = self._delay_call(task, args, kwargs)
        if self._durable:
            return await run_durable(self._engine, built)
        return await self._engine.run_async(*built)

    async def apply_async(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send ``task`` with Celery calling options, like ``task.apply_async``.

        Every Celery option (``countdown``, ``eta``, ``expires``, ``queue``,
        ``routing_key``, ``priority``, ``task_id``, ``headers``, ``link``,
        ``link_error``, ``retry``, ``retry_policy``, ``serializer``, ``compression``,
        ``ignore_result``, ...) passes through unchanged. ``dispatch_timeout``
        (seconds) overrides this call's deadline and ``durable`` (``True``: store
        the dispatch in the outbox when the broker does not take it, and return a
        :class:`~aceleryctl.outbox.durable.DeferredResult`) overrides the
        controller's default; neither is sent to Celery.

        Raises:
            TaskDispatchError: a subclass; see :mod:`aceleryctl.exceptions`.
            TypeError, ValueError: bad ``task``, ``args``, ``kwargs``, ``dispatch_timeout``
                or ``durable``.
        """
        durable = self._take_durable(options)
        built = self._apply_async_call("apply_async", task, args, kwargs, options)
        if durable:
            return await run_durable(self._engine, built)
        return await self._engine.run_async(*built)

    async def send_task(
        self,
        name: str,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by its registered name, like ``app.send_task``.

        The task need not be importable here. Options as for :meth:`apply_async`.

        Raises:
            TaskDispatchError: a subclass; see :mod:`aceleryctl.exceptions`.
        """
        durable = self._take_durable(options)
        built = self._send_task_call(name, args, kwargs, options)
        if durable:
            return await run_durable(self._engine, built)  # type: ignore[no-any-return]
        result: AsyncResult[Any] = await self._engine.run_async(*built)
        return result

    async def apply(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[Any]:
        """Run ``task`` here and now, like ``task.apply`` (for tests and debugging).

        The task body runs on asgiref's thread-sensitive thread, where Django runs
        sync code for this request, so it shares the request's database connection
        and transaction. No broker, no deadline, no breaker.

        Returns:
            The ``EagerResult``; a task that raised has ``state == "FAILURE"``.
        """
        run = self._eager(task, args, kwargs, options)
        result: EagerResult[Any] = await sync_to_async(run, thread_sensitive=True)()
        return result

    @overload
    async def safe_execute(
        self,
        task: Dispatchable,
        /,
        *args: Any,
        suppress_exceptions: Literal[False] = ...,
        **kwargs: Any,
    ) -> tuple[Literal[True], Any]: ...

    @overload
    async def safe_execute(
        self, task: Dispatchable, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    async def safe_execute(
        self, task: Dispatchable, /, *args: Any, suppress_exceptions: bool = False, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]:
        """:meth:`delay`, returning ``(True, result)``, as the original controller did.

        With ``suppress_exceptions=True`` a dispatch failure is returned as
        ``(False, error)`` instead of raised (it is logged either way). Programming
        errors (``TypeError`` for a wrong ``task``) are always raised.

        Raises:
            TaskDispatchError: only when ``suppress_exceptions`` is false.
        """
        try:
            return True, await self.delay(task, *args, **kwargs)
        except TaskDispatchError as exc:
            if suppress_exceptions:
                return False, exc
            raise

    async def delay_on_commit(
        self, task: Dispatchable, /, *args: Any, **kwargs: Any
    ) -> AsyncResult[Any]:
        """:meth:`delay` once the surrounding transaction commits; never if it rolls back.

        Returns the ``AsyncResult`` at once (its id is assigned up front), unlike
        Celery's own ``delay_on_commit``, which returns ``None``. With no
        transaction open (autocommit), publishes now, under the deadline. The
        transaction is looked for on the thread-sensitive thread, where Django's
        transactions live in async code. Without the outbox, a publish that fails
        after the commit cannot raise to anyone: it is logged. With the outbox
        (``ACELERYCTL["OUTBOX"]["ENABLED"]``), the dispatch is written to it in
        the transaction and a failed publish is left to the relay; with no
        transaction open, the call is durable.

        Raises:
            TaskDispatchError: only when publishing right away (no transaction).
            TypeError: for a canvas or a callable (their ids are not known up front).
        """
        built = self._delay_call(task, args, kwargs, method="delay_on_commit")
        return await self._on_commit(built, None, self._durable)

    async def apply_async_on_commit(
        self,
        task: Dispatchable,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """:meth:`apply_async` once the transaction on database ``using`` commits.

        See :meth:`delay_on_commit`.
        """
        durable = self._take_durable(options)
        built = self._apply_async_call("apply_async_on_commit", task, args, kwargs, options)
        return await self._on_commit(built, using, durable)

    async def _on_commit(
        self, built: Built, using: str | None, durable: bool = False
    ) -> AsyncResult[Any]:
        dispatch, parent = built
        task_id = check_deferrable(dispatch)
        if outbox_enabled():
            store = sync_to_async(store_on_commit, thread_sensitive=True)
            if await store(self._engine, built, using):
                return self.app.AsyncResult(task_id)
            return await run_durable(self._engine, built)  # type: ignore[no-any-return]
        if durable:
            require_outbox("durable=True")
        deferred = await sync_to_async(defer_until_commit, thread_sensitive=True)(
            self._engine.submit_detached, built, using
        )
        if not deferred:
            result: AsyncResult[Any] = await self._engine.run_async(dispatch, parent)
            return result
        return self.app.AsyncResult(task_id)

    # -- lifecycle ---------------------------------------------------------

    async def aclose(self, timeout: float | None = None) -> bool:
        """Stop accepting dispatches and drain queued and running publishes.

        Waits at most ``timeout`` seconds (default ``drain_timeout``) on a thread of
        its own, never blocking the loop. Queued publishes still waiting then are
        dropped (their callers get ``ControllerClosed``); running ones finish on their
        own threads. Idempotent.

        Returns:
            ``True`` if everything drained in time.
        """
        limit = self._close_limit(timeout)
        self._closed = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def drain() -> None:
            drained = self._engine.close(limit)
            loop.call_soon_threadsafe(settle, done, drained)

        threading.Thread(target=drain, name="aceleryctl-close", daemon=True).start()
        return await done

    def _close_limit(self, timeout: float | None) -> float:
        if timeout is None:
            return self._drain_timeout
        return check_timeout(timeout, name="timeout", zero=True)

    def _close_blocking(self, timeout: float | None) -> bool:
        limit = self._close_limit(timeout)
        self._closed = True
        return self._engine.close(limit)

    async def probe(self, timeout: float | None = None) -> float:
        """Check that the broker answers; return the connect time in seconds.

        Connects on a publishing thread exactly as a publish would (on Redis, a
        connect and a PING) and publishes nothing; the breaker is not consulted.
        Awaits at most ``timeout`` seconds (default: the dispatch deadline).

        Raises:
            TaskDispatchError: a subclass saying why the broker did not answer.
        """
        return await run_probe_async(self._engine, self._probe_timeout(timeout))

    async def __aenter__(self) -> AsyncCeleryController:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
