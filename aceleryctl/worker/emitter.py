"""Publish task events to a channel layer without ever blocking or failing the caller.

An :class:`Emitter` owns one daemon thread running its own asyncio event loop. Any
thread hands it a :class:`~aceleryctl.events.TaskEvent` with :meth:`Emitter.emit`,
which appends to a bounded in-memory queue and returns in about a microsecond; the
emitter thread sends each event with ``layer.group_send(group_name(task_id),
event.to_layer_message())`` under a timeout. When the queue is full the *oldest*
event is dropped (the newest, often a terminal event, matters most); drops, send
failures and timeouts are counted (:meth:`Emitter.statistics`) and logged once
per kind, not once per event, at logger ``aceleryctl.emitter``. This module is
the queue, the thread and its loop, and fork safety; what one send or job does
on that loop is :class:`~aceleryctl.worker.delivery.Delivery`'s.

Why a long-lived loop of our own: channels_redis keeps its Redis connections per
event loop. Calling ``async_to_sync(layer.group_send)`` from a worker makes a new
loop per call and leaves connections bound to closed loops behind ("Event loop is
closed", channels_redis #332, celery-progress #106). Here one loop lives as long as
its process, and the layer is only ever used on it.

Fork safety: a prefork pool forks its children from a process whose emitter may
be running. The child inherits neither the thread nor a usable loop or lock, so an
emitter re-creates its state in the child (``os.register_at_fork``, and a process
id check on every :meth:`~Emitter.emit`) and starts a new thread on first use.
Events still queued in the parent at fork time are sent by the parent only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from aceleryctl.events import TaskEvent
from aceleryctl.worker.delivery import Delivery, EmitterStatistics, GroupSender, Job
from aceleryctl.worker.delivery import LayerFactory as LayerFactory

__all__ = [
    "Emitter",
    "EmitterStatistics",
    "GroupSender",
    "live_statistics",
]

logger: Final = logging.getLogger("aceleryctl.emitter")


#: Runs on the emitter thread when a timer is due; returns an event to send, or None.
TimerCallback = Callable[[], TaskEvent | None]

_live: weakref.WeakSet[Emitter] = weakref.WeakSet()
#: Threads and loops inherited through fork: unusable, but kept referenced so that
#: their finalizers never run in the child (they would warn about a running loop).
_abandoned: list[object] = []


class Emitter:
    """A bounded, non-blocking publisher of task events (see the module docstring).

    Thread-safety: :meth:`emit`, :meth:`schedule`, :meth:`flush`, :meth:`close`
    and :meth:`statistics` may be called from any thread, and from forked children.

    Args:
        layer_factory: returns the layer to send with (see :data:`LayerFactory`).
        max_queue: events that may wait to be sent (>= 1); beyond that the oldest
            is dropped.
        send_timeout: seconds one ``group_send`` may take before it is abandoned
            (the event is dropped and counted in ``timed_out``).
        name: the emitter thread's name.

    Raises:
        ValueError: ``max_queue`` < 1 or ``send_timeout`` not a positive number.
    """

    def __init__(
        self,
        layer_factory: LayerFactory,
        *,
        max_queue: int = 1_000,
        send_timeout: float = 1.0,
        name: str = "aceleryctl-events",
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
        if not isinstance(send_timeout, int | float) or not 0 < send_timeout < float("inf"):
            raise ValueError(
                f"send_timeout must be a positive number of seconds, got {send_timeout!r}"
            )
        self._factory = layer_factory
        self._max_queue = max_queue
        self._send_timeout = float(send_timeout)
        self._name = name
        self._reset_state()
        _live.add(self)

    # -- process-local state ---------------------------------------------------------------

    def _reset_state(self) -> None:
        """Fresh state for this process (at construction and in a forked child)."""
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[TaskEvent] = deque()
        self._timers: deque[tuple[float, TimerCallback]] = deque()
        self._jobs: deque[Job] = deque()
        self._pending = 0  # events accepted and neither sent nor dropped yet
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle = False
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "accepted",
                "sent",
                "failed",
                "timed_out",
                "dropped_full",
                "dropped_no_layer",
                "dropped_invalid",
                "dropped_closed",
            ),
            0,
        )
        self._burst = 0  # events dropped for a full queue since it was last empty
        self._delivery = Delivery(self._factory, self._send_timeout, self._count)

    def _after_fork(self) -> None:
        _abandoned.extend(x for x in (self._thread, self._loop) if x is not None)
        self._reset_state()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    # -- producer side (any thread) --------------------------------------------------------

    def emit(self, event: TaskEvent) -> bool:
        """Queue ``event`` for sending and return at once; never raises for a full
        queue or a broken layer.

        Runs on the caller's thread and blocks only on a short internal lock. The
        first call in a process starts the emitter thread.

        Returns:
            ``False`` if the emitter is closed (the event is dropped), else ``True``
            (a full queue drops its oldest event instead).
        """
        self._check_pid()
        with self._cond:
            if self._closed:
                self._counts["dropped_closed"] += 1
                return False
            first_drop = self._append_locked(event)
            wake = self._take_wake_locked()
        if first_drop:
            logger.warning(
                "aceleryctl event queue is full (%d events): dropping the oldest; "
                "the channel layer is slower than the tasks emitting events",
                self._max_queue,
            )
        if wake:
            self._wake()
        return True

    def schedule(self, due: float, callback: TimerCallback) -> None:
        """Run ``callback`` on the emitter thread at ``due`` (``time.monotonic()``
        seconds) and send the event it returns, if any. A callback that raises is
        logged once and ignored. Never blocks; does nothing once closed."""
        self._check_pid()
        with self._cond:
            if self._closed:
                return
            self._timers.append((due, callback))
            self._ensure_thread_locked()
            wake = self._take_wake_locked()
        if wake:
            self._wake()

    def run_soon(self, job: Job) -> bool:
        """Run ``await job(layer)`` on the emitter's loop, after the events queued
        before it, and return at once. For senders that batch (the web side's
        ``task.sent``): the job does its own sends, under its own timeouts; one that
        raises is logged once per exception type. Runs on the caller's thread and
        blocks only on a short internal lock; never raises.

        Returns:
            ``False`` if the emitter is closed (the job will not run), else ``True``.
        """
        self._check_pid()
        with self._cond:
            if self._closed:
                return False
            self._jobs.append(job)
            self._pending += 1
            self._ensure_thread_locked()
            wake = self._take_wake_locked()
        if wake:
            self._wake()
        return True

    @property
    def send_timeout(self) -> float:
        """Seconds one ``group_send`` may take."""
        return self._send_timeout

    def _append_locked(self, event: TaskEvent) -> bool:
        self._ensure_thread_locked()
        first_drop = False
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._pending -= 1
            self._counts["dropped_full"] += 1
            first_drop = self._burst == 0
            self._burst += 1
        self._queue.append(event)
        self._pending += 1
        self._counts["accepted"] += 1
        return first_drop

    def _take_wake_locked(self) -> bool:
        wake, self._idle = self._idle, False
        return wake

    def _ensure_thread_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if self._thread is not None:  # died unexpectedly; its loop is gone
            self._idle = False
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread = thread
        thread.start()

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None:
            return
        try:
            loop.call_soon_threadsafe(wakeup.set)
        except RuntimeError:  # the loop closed under us: restart on the next event
            with self._cond:
                self._idle = False
                if not self._closed:
                    self._ensure_thread_locked()

    def flush(self, timeout: float) -> bool:
        """Block the calling thread until every event emitted (and every job handed
        to :meth:`run_soon`) so far has been sent, run or dropped, for at most
        ``timeout`` seconds. Returns ``True`` if it was.

        Timers scheduled with :meth:`schedule` and not yet due are not waited for.
        """
        self._check_pid()
        with self._cond:
            return self._cond.wait_for(lambda: self._pending <= 0, timeout)

    def close(self, timeout: float = 2.0) -> bool:
        """Send what is queued (for at most ``timeout`` seconds), then stop the thread,
        close the loop (which closes the layer's connections on it) and refuse
        further events. Idempotent. Blocks the calling thread up to ``timeout``
        seconds; never call it on the emitter thread.

        Returns:
            ``True`` if everything queued was sent and the thread has stopped.
        """
        self._check_pid()
        deadline = time.monotonic() + max(timeout, 0.0)
        drained = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._timers.clear()
            self._pending -= len(self._jobs)
            self._jobs.clear()
            thread = self._thread
            wake = self._take_wake_locked()
        if wake:
            self._wake()
        if thread is None or thread is threading.current_thread():
            return drained
        thread.join(max(deadline - time.monotonic(), 0.05))
        return drained and not thread.is_alive()

    def statistics(self) -> EmitterStatistics:
        """A consistent snapshot of this process's counts."""
        self._check_pid()
        with self._cond:
            return EmitterStatistics(pid=self._pid, queued=len(self._queue), **self._counts)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (in this process)."""
        return self._closed

    # -- the emitter thread ----------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:  # never let the thread die silently
            logger.exception("aceleryctl event emitter thread stopped")
        finally:
            with self._cond:
                self._idle = False
                self._wakeup = None
            # Closing the loop lets channels_redis close its connections on it.
            with contextlib.suppress(Exception):
                loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        wakeup = asyncio.Event()
        with self._cond:
            self._loop, self._wakeup = loop, wakeup
        while True:
            ended_burst = 0
            with self._cond:
                timers = list(self._timers)
                self._timers.clear()
                jobs = list(self._jobs)
                self._jobs.clear()
                if self._closed and self._queue:
                    self._counts["dropped_closed"] += len(self._queue)
                    self._pending -= len(self._queue)
                    self._queue.clear()
                    self._cond.notify_all()
                event = self._queue.popleft() if self._queue else None
                if event is None and not timers and not jobs:
                    if self._closed:
                        return
                    ended_burst, self._burst = self._burst, 0
                    wakeup.clear()
                    self._idle = True
            for due, callback in timers:
                loop.call_later(max(due - time.monotonic(), 0.0), self._fire, callback)
            for job in jobs:
                await self._run_job(job)
            if event is not None:
                await self._delivery.send(event)
                with self._cond:
                    self._pending -= 1
                    if self._pending <= 0:
                        self._cond.notify_all()
                continue
            if timers or jobs:
                continue
            if ended_burst:
                logger.warning(
                    "aceleryctl dropped %d events while the event queue was full", ended_burst
                )
            await wakeup.wait()

    def _fire(self, callback: TimerCallback) -> None:
        """A timer is due (emitter thread): queue the event its callback returns."""
        try:
            event = callback()
        except Exception as exc:
            self._delivery.problem(f"timer:{type(exc).__name__}", "an event timer raised %r", exc)
            return
        if event is None:
            return
        with self._cond:
            if self._closed:
                self._counts["dropped_closed"] += 1
                return
            self._append_locked(event)
            self._idle = False
            wakeup = self._wakeup
        if wakeup is not None:
            wakeup.set()

    async def _run_job(self, job: Job) -> None:
        try:
            await self._delivery.run_job(job)
        finally:
            with self._cond:
                self._pending -= 1
                if self._pending <= 0:
                    self._cond.notify_all()

    def _count(self, key: str) -> None:
        with self._cond:
            self._counts[key] += 1


def _after_fork_in_child() -> None:
    for emitter in list(_live):
        emitter._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def live_statistics() -> list[EmitterStatistics]:
    """The statistics of every emitter alive in this process (metrics read them)."""
    return [emitter.statistics() for emitter in list(_live)]
