"""The run-once guard's decisions: claim a (task id, attempt) when its message arrives,
settle the claim with the message, skip every other copy.

:class:`RunOnceGuard` is the pure core: it talks to a :class:`ClaimStore` (Redis
in a worker, :mod:`aceleryctl.worker.guard_store`; a recording fake in the unit
tests), reads time through injected clocks, and knows nothing of Celery beyond
the :class:`~aceleryctl.compat.celery_consumer.Settle` callbacks it returns.
:mod:`aceleryctl.worker.guard_step` plugs it into the consumer.

One key per run, ``aceleryctl:once:<task id>:<retries>`` (``:<n>`` appended for
the n-th ``Task.replace`` of that id), holding ``"<state> <copy> <worker>"``.
``<copy>`` names the publish the message came from (its Redis delivery tag, ``-``
when the broker cannot tell):

=============================  =====================================================
message                        claim
=============================  =====================================================
received                       ``running`` for ``running_ttl`` seconds (plus the time
                               until its eta), if absent; else the message is acked
                               and skipped, one WARNING
acked                          ``done`` for ``done_ttl``, written before the ack is
                               sent: an acked message never comes back, so any later
                               copy is a duplicate, even the same one whose ack was
                               lost (early ack: when the run starts; ``acks_late``:
                               when it ends)
rejected, not requeued         as acked (the message is gone)
rejected and requeued, or      deleted if still this copy's: the requeued message runs
the strategy raised
never settled (worker killed,  stays ``running`` until it expires; the same copy
warm shutdown)                 coming back takes it over and runs; with no copy known,
                               any redelivered message does
=============================  =====================================================

Failing open: when the store raises (Redis down, a timeout), the message runs
unguarded, one ERROR record says so, and the store is not asked again for
``retry_after`` seconds, so an outage costs the consumer one timeout per interval,
not one per message. A record at WARNING level says when it answers again.

Thread-safety: :meth:`RunOnceGuard.admit` runs on the consumer's thread; the
:class:`Claim` callbacks on whichever thread settles the request. The store must
be thread-safe; the guard's own state is a few attributes under a lock held for
no I/O. Nothing here raises into Celery: every store error is handled as above.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from aceleryctl.compat.celery_consumer import MessageAttempt, Verdict

__all__ = ["CLAIMED", "HELD", "TAKEN_OVER", "Claim", "ClaimStore", "RunOnceGuard", "once_key"]

logger: Final = logging.getLogger("aceleryctl.guard")

#: :meth:`ClaimStore.claim` outcomes.
CLAIMED: Final = 1
TAKEN_OVER: Final = 2
HELD: Final = 0

KEY_PREFIX: Final = "aceleryctl:once:"

#: How a skip record describes the claim that made it a second copy.
_STATES: Final = {"done": "it already ran", "running": "it is running"}


def once_key(attempt: MessageAttempt) -> str:
    """The Redis key of one (task id, attempt): ``aceleryctl:once:<id>:<retries>``,
    with ``:<nesting>`` appended for a task handed on by ``Task.replace``."""
    key = f"{KEY_PREFIX}{attempt.task_id}:{attempt.retries}"
    return f"{key}:{attempt.nesting}" if attempt.nesting else key


class ClaimStore(Protocol):
    """Where claims live. Every method may raise (the guard fails open); each must
    be bounded in time and safe to call from any thread."""

    def claim(
        self, key: str, value: str, ttl: int, copy: str | None, any_copy: bool
    ) -> tuple[int, str]:
        """Set ``key`` to ``value`` for ``ttl`` seconds unless it exists. An existing
        ``running`` claim is replaced all the same when its copy (the value's second
        word) is ``copy``, or whatever its copy with ``any_copy``. Returns
        ``(CLAIMED, "")``, ``(TAKEN_OVER, old value)`` or ``(HELD, value held)``,
        atomically."""

    def finish(self, key: str, value: str, ttl: int) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds, whatever it held."""

    def release(self, key: str, value: str) -> None:
        """Delete ``key`` if it still holds ``value``."""


class Claim:
    """This worker's claim on one (task id, attempt): the
    :class:`~aceleryctl.compat.celery_consumer.Settle` for its message."""

    __slots__ = ("attempt", "copy", "guard", "key", "value")

    def __init__(
        self, guard: RunOnceGuard, attempt: MessageAttempt, key: str, value: str, copy: str
    ) -> None:
        self.guard = guard
        self.attempt = attempt
        self.key = key
        self.value = value
        self.copy = copy

    def acked(self) -> None:
        self.guard.finish(self)

    def rejected(self, requeue: bool) -> None:
        if requeue:
            self.guard.release(self)
        else:
            self.guard.finish(self)

    def abandoned(self) -> None:
        self.guard.release(self)


class RunOnceGuard:
    """Runs each (task id, attempt) once across copies of its message.

    Args:
        store: where claims live.
        hostname: this worker's name, written into its claims.
        done_ttl: seconds a finished run is remembered.
        running_ttl: seconds a claim on a running one lasts if never settled.
        retry_after: seconds the store is left alone after it failed.
        clock: monotonic seconds (for ``retry_after``).
        wall: POSIX seconds (to compare with a message's eta).
    """

    def __init__(
        self,
        store: ClaimStore,
        *,
        hostname: str,
        done_ttl: int,
        running_ttl: int,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hostname = hostname.replace(" ", "_")
        self.done_ttl = done_ttl
        self.running_ttl = running_ttl
        self.retry_after = retry_after
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._down_until: float | None = None

    # -- receipt (the consumer's thread) ---------------------------------------------

    def admit(
        self, attempt: MessageAttempt, copy: str | None, redelivered: bool
    ) -> Verdict | Claim:
        """Claim ``attempt`` for this message, or say it must be skipped.

        ``copy`` identifies the publish this message came from (``None`` when the
        broker cannot tell, see :func:`aceleryctl.compat.kombu_redis.message_copy`).
        A running claim is taken over by the same copy coming back, or, when copies
        cannot be told apart, by any redelivered message. Returns a :class:`Claim`
        (run it), :data:`Verdict.DROP` (another copy holds it: logged) or
        :data:`Verdict.RUN` (the store is failing: run unguarded).
        """
        if self._resting():
            return Verdict.RUN
        key = once_key(attempt)
        mark = (copy or "-").replace(" ", "_")
        value = f"running {mark} {self.hostname}"
        try:
            outcome, held = self.store.claim(
                key,
                value,
                self.running_ttl + self._until_due(attempt),
                mark if copy else None,
                redelivered and not copy,
            )
        except Exception as exc:
            self._failed(exc)
            return Verdict.RUN
        self._answered()
        if outcome == HELD:
            held_state, _, rest = held.partition(" ")
            logger.warning(
                "Skipped a second copy of task %s[%s] attempt %d: %s on %s",
                attempt.task_name,
                attempt.task_id,
                attempt.retries,
                _STATES.get(held_state, "another copy holds it"),
                rest.partition(" ")[2] or "?",
            )
            return Verdict.DROP
        if outcome == TAKEN_OVER:
            logger.info(
                "Running task %s[%s] attempt %d: its message came back unacked "
                "(claimed by %s, which never settled it)",
                attempt.task_name,
                attempt.task_id,
                attempt.retries,
                held.rpartition(" ")[2] or "?",
            )
        return Claim(self, attempt, key, value, mark)

    def _until_due(self, attempt: MessageAttempt) -> int:
        if attempt.eta is None:
            return 0
        return max(0, math.ceil(attempt.eta - self._wall()))

    # -- settling (any thread) -------------------------------------------------------

    def finish(self, claim: Claim) -> None:
        """Mark ``claim``'s run done for ``done_ttl`` seconds."""
        if self._resting():
            return
        try:
            self.store.finish(claim.key, f"done {claim.copy} {self.hostname}", self.done_ttl)
        except Exception as exc:
            self._failed(exc)
        else:
            self._answered()

    def release(self, claim: Claim) -> None:
        """Give ``claim`` up (its run did not finish), if it is still this one."""
        if self._resting():
            return
        try:
            self.store.release(claim.key, claim.value)
        except Exception as exc:
            self._failed(exc)
        else:
            self._answered()

    # -- failing open ----------------------------------------------------------------

    def _resting(self) -> bool:
        until = self._down_until
        return until is not None and self._clock() < until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + self.retry_after
        if first:
            logger.error(
                "The run-once guard cannot reach its Redis (%s: %s): tasks run unguarded, "
                "so a second copy of a task may run too, until it answers again (tried "
                "every %.0f s). Check ACELERYCTL['RUN_ONCE']['REDIS_URL'] or the Celery "
                "app's Redis.",
                type(exc).__name__,
                exc,
                self.retry_after,
            )

    def _answered(self) -> None:
        if self._down_until is None:
            return
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            logger.warning("The run-once guard reaches its Redis again: tasks are guarded")
