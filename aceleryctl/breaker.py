"""A circuit breaker that stops dispatching to a broker that is failing or slow.

The breaker is a pure state machine: it imports nothing from Django or Celery, never
sleeps, starts no threads and no timers, and reads time only through the injected
monotonic ``clock`` (seconds as ``float``). Each guarded call asks for a
:class:`Permit` with :meth:`CircuitBreaker.acquire` and reports back through it::

    permit = breaker.acquire()           # raises CircuitOpenError when refused
    started = clock()
    try:
        publish()
    except BrokerFailure:
        permit.record_failure(clock() - started)
        raise
    except CallerBug:
        permit.release()                 # says nothing about broker health
        raise
    else:
        permit.record_success(clock() - started)

States (see the ``_*State`` classes below for each one's exact rules)::

    CLOSED ──trip rule──▶ OPEN ──reset timeout elapsed──▶ HALF_OPEN ──probes succeed──▶ CLOSED
                           ▲                                  │
                           └────────── a probe fails ─────────┘  (reset timeout * backoff_factor)

    FORCED_OPEN / FORCED_CLOSED: set by an operator; left only by reset() or the other force_*.

Thread-safety: every method may be called from any thread. One ``threading.Lock``
guards the state; it is held only for a few arithmetic steps, never across I/O, the
guarded call, logging or listener calls.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from aceleryctl._clock import Clock
from aceleryctl._window import SlidingWindow
from aceleryctl.exceptions import CircuitOpenError

__all__ = [
    "BreakerListener",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "Permit",
    "StateChange",
]

logger = logging.getLogger("aceleryctl.breaker")


class BreakerState(enum.Enum):
    """Where a :class:`CircuitBreaker` is; the values are stable lowercase strings."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A frozen snapshot of a breaker, taken by :meth:`CircuitBreaker.statistics`.

    The ``window_*`` and rate fields cover the sliding window as it stood when the
    snapshot was taken; ``total_*`` and ``times_opened`` count since the breaker was
    built or last :meth:`~CircuitBreaker.reset`. All durations are seconds.
    """

    name: str
    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float
    """``window_failures / window_calls``, from 0.0 to 1.0; 0.0 when the window is empty."""
    slow_call_rate: float
    """``window_slow_calls / window_calls``, from 0.0 to 1.0; 0.0 when the window is empty."""
    total_successes: int
    total_failures: int
    total_rejections: int
    """Calls refused with :class:`~aceleryctl.exceptions.CircuitOpenError`."""
    times_opened: int
    """Automatic trips to OPEN, re-opens after a failed probe included; forced opens are not."""
    retry_after: float
    """Seconds until a probe would be let through: the time left when OPEN, the reset
    timeout in force when FORCED_OPEN (as :meth:`CircuitBreaker.acquire` reports), else 0.0."""
    current_reset_timeout: float
    """The reset timeout in force, after backoff."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state transition, handed to every :class:`BreakerListener`.

    ``reason`` is a short human-readable explanation (``"5 consecutive failures"``);
    ``at`` is the breaker's clock reading when the transition happened, in seconds.
    """

    breaker: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float


class BreakerListener(Protocol):
    """Told about every state change of the breakers it is added to."""

    def state_changed(self, change: StateChange) -> None:
        """Called once per transition, in transition order, with no breaker lock held.

        It runs on whichever thread caused or first observed a transition, possibly
        after that thread's own call has returned, so it must be quick and must not
        block. An exception it raises is logged and otherwise ignored.
        """


class Permit:
    """Leave to make one guarded call, returned by :meth:`CircuitBreaker.acquire`.

    Report the call's outcome exactly once with :meth:`record_success`,
    :meth:`record_failure` or :meth:`release`. Only the first of these counts; later
    ones are ignored, so an ``except``/``finally`` pair cannot count a call twice. A
    permit issued before a state transition still counts in the ``total_*``
    statistics but can no longer move the state machine: a slow success from the
    closed period cannot close a half-open breaker, and a failure that started before
    the breaker opened cannot re-open it or extend its timeout.

    Permits are cheap; any thread may settle one. Do not construct them yourself.
    """

    __slots__ = ("_breaker", "_done", "_issuer")

    def __init__(self, breaker: CircuitBreaker, issuer: _State) -> None:
        self._breaker = breaker
        self._issuer = issuer
        self._done = False

    def record_success(self, duration: float) -> None:
        """The call succeeded after ``duration`` seconds.

        A success slower than the breaker's ``slow_call_after`` also counts as a slow
        call. May change the breaker's state; see :class:`BreakerListener` for where
        the listeners then run.
        """
        self._breaker._settle(self, _SUCCESS, duration)

    def record_failure(self, duration: float) -> None:
        """The call failed for a reason that says the broker is unwell, after ``duration`` s.

        Use it for connection and broker errors and for a
        :class:`~aceleryctl.exceptions.DispatchTimeout`, never for the caller's own
        mistakes (use :meth:`release`). May change the breaker's state.
        """
        self._breaker._settle(self, _FAILURE, duration)

    def release(self) -> None:
        """Give the permit back without an outcome: nothing is counted.

        For a call that ended without telling anything about the broker (the
        arguments could not be serialized, or it was cancelled before it started).
        A half-open probe slot is freed for someone else.
        """
        self._breaker._settle(self, _RELEASE, 0.0)


_SUCCESS: Final = 0
_FAILURE: Final = 1
_RELEASE: Final = 2


class _State:
    """Base of the per-state rules. Every method runs with the breaker's lock held.

    A new state object is made for each transition, and a :class:`Permit` remembers
    the object that issued it, so "is this permit from the current generation" is an
    identity check.
    """

    __slots__ = ()
    state: BreakerState

    def acquire(self, b: CircuitBreaker) -> Permit:
        return Permit(b, self)

    def poll(self, b: CircuitBreaker, now: float) -> None:
        """Make any transition that is due by ``now`` (only OPEN has one)."""

    def retry_after(self, b: CircuitBreaker, now: float) -> float:
        return 0.0

    def on_success(self, b: CircuitBreaker, now: float) -> None:
        pass

    def on_failure(self, b: CircuitBreaker, now: float) -> None:
        pass

    def on_release(self, b: CircuitBreaker) -> None:
        pass


class _ClosedState(_State):
    """CLOSED: every call is allowed, and every outcome is checked against three rules.

    It trips to OPEN, after whichever outcome first makes one of these true:

    1. ``consecutive_failures >= failure_threshold``;
    2. the window holds at least ``minimum_calls`` calls and its failure rate is at
       least ``failure_rate_threshold``;
    3. the same minimum, and the slow-call rate is at least ``slow_call_rate_threshold``
       (a call slower than ``slow_call_after`` is slow whether it succeeded or failed).
    """

    __slots__ = ()
    state = BreakerState.CLOSED

    def on_success(self, b: CircuitBreaker, now: float) -> None:
        self._check(b, now)

    def on_failure(self, b: CircuitBreaker, now: float) -> None:
        self._check(b, now)

    def _check(self, b: CircuitBreaker, now: float) -> None:
        w = b._window
        if b._consecutive_failures >= b._failure_threshold:
            reason = f"{b._consecutive_failures} consecutive failures"
        elif w.calls < b._minimum_calls:
            return
        elif w.failures / w.calls >= b._failure_rate_threshold:
            reason = f"failure rate {w.failures / w.calls:.0%} {b._span()}"
        elif w.slow / w.calls >= b._slow_call_rate_threshold:
            reason = (
                f"slow-call rate {w.slow / w.calls:.0%} {b._span()}, "
                f"slow meaning over {b._slow_call_after:g} s"
            )
        else:
            return
        b._open(now, reason)


class _OpenState(_State):
    """OPEN: every call is refused until the reset timeout in force has elapsed.

    The refusal carries ``retry_after`` = the seconds left. The first
    :meth:`~CircuitBreaker.acquire` (or ``state`` / ``statistics()`` read) at or after
    the deadline moves the breaker to HALF_OPEN; that ``acquire`` gets the first probe.
    """

    __slots__ = ("deadline",)
    state = BreakerState.OPEN

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def acquire(self, b: CircuitBreaker) -> Permit:
        now = b._clock()
        if now >= self.deadline:
            return b._half_open(now).acquire(b)
        b._total_rejections += 1
        raise CircuitOpenError(b._open_message, retry_after=self.deadline - now)

    def poll(self, b: CircuitBreaker, now: float) -> None:
        if now >= self.deadline:
            b._half_open(now)

    def retry_after(self, b: CircuitBreaker, now: float) -> float:
        return max(0.0, self.deadline - now)


class _HalfOpenState(_State):
    """HALF_OPEN: up to ``half_open_max_calls`` probe permits may be outstanding at once.

    Further calls are refused with ``retry_after = min(slow_call_after, reset_timeout)``,
    the time in which a healthy probe should have finished. ``half_open_max_calls``
    probe successes (slow ones included: the broker answered) close the breaker,
    clearing the window and the backoff. Any probe failure re-opens it, with the reset
    timeout multiplied by ``backoff_factor`` and capped at ``max_reset_timeout``. A
    released probe frees its slot and counts for nothing.
    """

    __slots__ = ("outstanding", "successes")
    state = BreakerState.HALF_OPEN

    def __init__(self) -> None:
        self.outstanding = 0
        self.successes = 0

    def acquire(self, b: CircuitBreaker) -> Permit:
        if self.outstanding >= b._half_open_max_calls:
            b._total_rejections += 1
            raise CircuitOpenError(b._probing_message, retry_after=b._probing_retry_after)
        self.outstanding += 1
        return Permit(b, self)

    def on_success(self, b: CircuitBreaker, now: float) -> None:
        self.outstanding -= 1
        self.successes += 1
        if self.successes >= b._half_open_max_calls:
            n = self.successes
            b._close(now, f"{n} probe{'' if n == 1 else 's'} succeeded")

    def on_failure(self, b: CircuitBreaker, now: float) -> None:
        b._current_reset_timeout = min(
            b._current_reset_timeout * b._backoff_factor, b._max_reset_timeout
        )
        b._open(now, f"probe failed; next probe in {b._current_reset_timeout:g} s")

    def on_release(self, b: CircuitBreaker) -> None:
        self.outstanding -= 1


class _ForcedOpenState(_State):
    """FORCED_OPEN: every call is refused until :meth:`~CircuitBreaker.reset` or
    :meth:`~CircuitBreaker.force_closed`.

    ``retry_after`` is the reset timeout in force: finite, so a caller that sleeps on
    it backs off sensibly instead of forever.
    """

    __slots__ = ()
    state = BreakerState.FORCED_OPEN

    def acquire(self, b: CircuitBreaker) -> Permit:
        b._total_rejections += 1
        raise CircuitOpenError(b._forced_message, retry_after=b._current_reset_timeout)

    def retry_after(self, b: CircuitBreaker, now: float) -> float:
        return b._current_reset_timeout


class _ForcedClosedState(_State):
    """FORCED_CLOSED: every call is allowed; outcomes are counted but never trip it."""

    __slots__ = ()
    state = BreakerState.FORCED_CLOSED


class CircuitBreaker:
    """Refuses calls to a broker that keeps failing or answering slowly, then probes it.

    All durations are seconds (``float``). Every argument is keyword-only and
    validated; see :class:`_ClosedState`, :class:`_OpenState` and
    :class:`_HalfOpenState` for the exact rules they feed.

    Args:
        name: identifies the breaker in logs, statistics and state changes.
        failure_threshold: consecutive failures that trip it (>= 1).
        failure_rate_threshold: window failure rate, in (0, 1], that trips it.
        slow_call_after: a call taking longer than this is slow (> 0; ``math.inf``
            disables slow-call detection).
        slow_call_rate_threshold: window slow-call rate, in (0, 1], that trips it.
        minimum_calls: the rate rules apply only once the window holds this many
            calls (>= 1).
        window_duration: length of the sliding window (> 0, finite); it is kept in
            30 buckets, so memory does not grow with traffic.
        reset_timeout: time spent OPEN before the first probe (> 0, finite).
        max_reset_timeout: cap of the backed-off reset timeout (>= reset_timeout).
        backoff_factor: multiplier of the reset timeout after each failed probe
            (>= 1, finite); it returns to ``reset_timeout`` once the breaker closes.
        half_open_max_calls: probes allowed at once while HALF_OPEN, and successes
            needed to close (>= 1).
        clock: monotonic time source; :class:`~aceleryctl.testing.ManualClock` in tests.
        listeners: :class:`BreakerListener` objects told about every state change.

    Raises:
        ValueError: an argument is out of range; the message names it.

    Every state change is logged once on the ``aceleryctl.breaker`` logger (WARNING
    when it opens, INFO otherwise) with ``extra`` keys ``breaker``, ``old_state``,
    ``new_state`` and ``reason``; refused calls are never logged.
    """

    def __init__(
        self,
        *,
        name: str = "broker",
        failure_threshold: int = 5,
        failure_rate_threshold: float = 0.5,
        slow_call_after: float = 1.0,
        slow_call_rate_threshold: float = 0.8,
        minimum_calls: int = 20,
        window_duration: float = 30.0,
        reset_timeout: float = 5.0,
        max_reset_timeout: float = 60.0,
        backoff_factor: float = 2.0,
        half_open_max_calls: int = 1,
        clock: Clock = time.monotonic,
        listeners: Iterable[BreakerListener] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        _check_int("failure_threshold", failure_threshold)
        _check_number("failure_rate_threshold", failure_rate_threshold, "in (0, 1]", hi=1.0)
        _check_number("slow_call_after", slow_call_after, "> 0 (math.inf disables)", inf=True)
        _check_number("slow_call_rate_threshold", slow_call_rate_threshold, "in (0, 1]", hi=1.0)
        _check_int("minimum_calls", minimum_calls)
        _check_number("window_duration", window_duration, "finite and > 0")
        _check_number("reset_timeout", reset_timeout, "finite and > 0")
        _check_number("max_reset_timeout", max_reset_timeout, "finite and >= reset_timeout")
        if max_reset_timeout < reset_timeout:
            raise ValueError(
                f"max_reset_timeout must be finite and >= reset_timeout ({reset_timeout!r}), "
                f"got {max_reset_timeout!r}"
            )
        _check_number("backoff_factor", backoff_factor, "finite and >= 1", lo=1.0)
        _check_int("half_open_max_calls", half_open_max_calls)
        if not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")

        self._name = name
        self._failure_threshold = failure_threshold
        self._failure_rate_threshold = float(failure_rate_threshold)
        self._slow_call_after = float(slow_call_after)
        self._slow_call_rate_threshold = float(slow_call_rate_threshold)
        self._minimum_calls = minimum_calls
        self._window_duration = float(window_duration)
        self._reset_timeout = float(reset_timeout)
        self._max_reset_timeout = float(max_reset_timeout)
        self._backoff_factor = float(backoff_factor)
        self._half_open_max_calls = half_open_max_calls
        self._probing_retry_after = min(self._slow_call_after, self._reset_timeout)
        self._clock = clock
        self._open_message = f"circuit breaker {name!r} is open; the broker was not called"
        self._probing_message = f"circuit breaker {name!r} is half-open and its probes are busy"
        self._forced_message = f"circuit breaker {name!r} is forced open"

        self._lock = threading.Lock()
        self._listeners: tuple[BreakerListener, ...] = tuple(listeners)
        self._pending: deque[StateChange] = deque()
        self._notifying = False
        # Everything below is guarded by self._lock.
        self._current: _State = _ClosedState()
        self._window = SlidingWindow(self._window_duration, clock())
        self._current_reset_timeout = self._reset_timeout
        self._consecutive_failures = 0
        self._total_successes = self._total_failures = self._total_rejections = 0
        self._times_opened = 0

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    @property
    def state(self) -> BreakerState:
        """The current state; reading it moves an OPEN breaker whose timeout elapsed to
        HALF_OPEN (and calls the listeners on this thread)."""
        with self._lock:
            self._current.poll(self, self._clock())
            state = self._current.state
        self._flush()
        return state

    def acquire(self) -> Permit:
        """Ask to make one guarded call. Never blocks beyond the internal lock.

        Returns:
            a :class:`Permit` to settle once the call ends.

        Raises:
            CircuitOpenError: the call is refused (OPEN before its reset timeout,
                HALF_OPEN with every probe slot taken, or FORCED_OPEN); ``retry_after``
                is explained in each state's rules. ``task_name`` is left ``None``.
        """
        with self._lock:
            permit = self._current.acquire(self)
        if self._pending:
            self._flush()
        return permit

    def statistics(self) -> BreakerStatistics:
        """Return a frozen snapshot; like ``state``, applies a due OPEN -> HALF_OPEN move."""
        with self._lock:
            now = self._clock()
            self._current.poll(self, now)
            w = self._window
            w.advance(now)
            stats = BreakerStatistics(
                name=self._name,
                state=self._current.state,
                consecutive_failures=self._consecutive_failures,
                window_calls=w.calls,
                window_failures=w.failures,
                window_slow_calls=w.slow,
                failure_rate=w.failures / w.calls if w.calls else 0.0,
                slow_call_rate=w.slow / w.calls if w.calls else 0.0,
                total_successes=self._total_successes,
                total_failures=self._total_failures,
                total_rejections=self._total_rejections,
                times_opened=self._times_opened,
                retry_after=self._current.retry_after(self, now),
                current_reset_timeout=self._current_reset_timeout,
            )
        self._flush()
        return stats

    def force_open(self) -> None:
        """Refuse every call until :meth:`reset` or :meth:`force_closed`. No-op if already."""
        self._force(_ForcedOpenState, "forced open")

    def force_closed(self) -> None:
        """Allow every call, never tripping, until :meth:`reset` or :meth:`force_open`."""
        self._force(_ForcedClosedState, "forced closed")

    def reset(self) -> None:
        """Return to CLOSED (leaving any forced state) and clear every counter, the
        window and the backoff, as if the breaker had just been built."""
        with self._lock:
            now = self._clock()
            self._window.clear()
            self._current_reset_timeout = self._reset_timeout
            self._consecutive_failures = 0
            self._total_successes = self._total_failures = self._total_rejections = 0
            self._times_opened = 0
            if self._current.state is not BreakerState.CLOSED:
                self._transition(_ClosedState(), now, "reset")
        self._flush()

    def probe_succeeded(self, reason: str = "a background probe reached the broker") -> bool:
        """End OPEN early: the broker answered a probe made outside any call.

        Moves OPEN to HALF_OPEN at once, as the reset timeout elapsing would: the
        next calls are the trial calls, and their successes close the breaker (their
        failures re-open it, with the backoff). Does nothing in any other state;
        forced states stay as the operator set them. Thread-safe.

        Returns:
            Whether the breaker moved.
        """
        with self._lock:
            if self._current.state is not BreakerState.OPEN:
                return False
            self._transition(_HalfOpenState(), self._clock(), reason)
        self._flush()
        return True

    def add_listener(self, listener: BreakerListener) -> None:
        """Tell ``listener`` about every later state change."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: BreakerListener) -> None:
        """Stop telling ``listener``. Raises ``ValueError`` if it was not added."""
        with self._lock:
            listeners = list(self._listeners)
            listeners.remove(listener)
            self._listeners = tuple(listeners)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._name!r} {self._current.state.value}>"

    # -- internals; the methods below marked "locked" run with self._lock held --------

    def _settle(self, permit: Permit, outcome: int, duration: float) -> None:
        with self._lock:
            if permit._done:
                return
            permit._done = True
            current = self._current
            if outcome == _RELEASE:
                if permit._issuer is current:
                    current.on_release(self)
                return
            failed = outcome == _FAILURE
            if failed:
                self._total_failures += 1
            else:
                self._total_successes += 1
            if permit._issuer is not current:
                return  # a stale generation: counted, but moves nothing
            now = self._clock()
            self._window.record(now, failed, duration > self._slow_call_after)
            self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            if failed:
                current.on_failure(self, now)
            else:
                current.on_success(self, now)
        if self._pending:
            self._flush()

    def _force(self, state_class: type[_State], reason: str) -> None:
        with self._lock:
            if self._current.state is not state_class.state:
                self._transition(state_class(), self._clock(), reason)
        self._flush()

    def _span(self) -> str:  # locked
        return f"over {self._window_duration:g} s ({self._window.calls} calls)"

    def _open(self, now: float, reason: str) -> None:  # locked
        self._times_opened += 1
        self._transition(_OpenState(now + self._current_reset_timeout), now, reason)

    def _half_open(self, now: float) -> _State:  # locked
        state = _HalfOpenState()
        self._transition(state, now, f"reset timeout of {self._current_reset_timeout:g} s elapsed")
        return state

    def _close(self, now: float, reason: str) -> None:  # locked
        self._window.clear()
        self._consecutive_failures = 0
        self._current_reset_timeout = self._reset_timeout
        self._transition(_ClosedState(), now, reason)

    def _transition(self, state: _State, now: float, reason: str) -> None:  # locked
        old = self._current.state
        self._current = state
        self._pending.append(StateChange(self._name, old, state.state, reason, now))

    def _flush(self) -> None:
        """Log and announce queued state changes, in order, with the lock released.

        One thread at a time delivers; a thread that finds delivery under way leaves
        its changes to that thread, which also makes a listener that itself causes a
        transition safe (its change is delivered after the current one).
        """
        with self._lock:
            if self._notifying or not self._pending:
                return
            self._notifying = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._notifying = False
                        return
                    change = self._pending.popleft()
                    listeners = self._listeners
                self._announce(change, listeners)
        except BaseException:
            with self._lock:
                self._notifying = False
            raise

    def _announce(self, change: StateChange, listeners: tuple[BreakerListener, ...]) -> None:
        opened = change.new in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
        logger.log(
            logging.WARNING if opened else logging.INFO,
            "circuit breaker %r: %s -> %s (%s)",
            change.breaker,
            change.old.value,
            change.new.value,
            change.reason,
            extra={
                "breaker": change.breaker,
                "old_state": change.old.value,
                "new_state": change.new.value,
                "reason": change.reason,
            },
        )
        for listener in listeners:
            try:
                listener.state_changed(change)
            except Exception:
                logger.exception(
                    "circuit breaker %r: listener %r raised on %s -> %s",
                    change.breaker,
                    listener,
                    change.old.value,
                    change.new.value,
                    extra={"breaker": change.breaker},
                )


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_number(
    name: str,
    value: float,
    allowed: str,
    *,
    lo: float = 0.0,
    hi: float = math.inf,
    inf: bool = False,
) -> None:
    """Require ``lo < value <= hi`` (``lo <= value`` when ``lo`` is not 0) and finiteness
    unless ``inf``; the message names ``name`` and the ``allowed`` range."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (math.isfinite(value) or (inf and value == math.inf))
        and (value > lo if lo == 0.0 else value >= lo)
        and value <= hi
    )
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
