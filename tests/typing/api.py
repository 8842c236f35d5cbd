"""Type-checked, never run: the public API as users write it.

``mypy --strict`` checks this file with the package, so a change that breaks the
types users rely on fails CI. It is not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from typing import Any, Literal, assert_type

from celery import Celery, shared_task
from celery.result import AsyncResult, EagerResult

import aceleryctl
from aceleryctl import (
    DEFAULT_REDACT_KEYS,
    AsyncCeleryController,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ControllerStatistics,
    DispatchTimeout,
    TaskDispatchError,
)
from aceleryctl.sync import SyncCeleryController
from aceleryctl.testing import ManualClock, RecordedDispatch, RecordingController, recording

app = Celery("typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def multiply(x: int, y: int) -> int:
    return x * y


async def async_usage() -> None:
    ctl = AsyncCeleryController(
        app,
        dispatch_timeout=1.5,
        max_workers=2,
        breaker=CircuitBreaker(failure_threshold=3, clock=ManualClock()),
        redact_keys=[*DEFAULT_REDACT_KEYS, "pin"],
    )
    result = await ctl.delay(add, 1, 2)
    sent: AsyncResult[Any] = await ctl.send_task("typing.add", (1, 2), countdown=5)
    eager: EagerResult[Any] = await ctl.apply(add, (1, 2))
    ok, value = await ctl.safe_execute(add, 1, 2, suppress_exceptions=True)
    assert_type(ok, bool)
    on_commit: AsyncResult[Any] = await ctl.delay_on_commit(add, 1, 2)
    stats: ControllerStatistics = ctl.statistics()
    assert_type(stats.breaker.state, BreakerState)
    health: dict[str, Any] = ctl.health()
    seconds: float = await ctl.probe()
    try:
        await ctl.apply_async(add, (1, 2), dispatch_timeout=0.5, queue="fast")
    except CircuitOpenError as exc:
        assert_type(exc.retry_after, float)
    except DispatchTimeout as exc:
        assert_type(exc.task_id, str | None)
    except TaskDispatchError:
        pass
    drained: bool = await ctl.aclose()
    default = await aceleryctl.controller.delay(add, 1, 2)
    del result, sent, eager, value, on_commit, health, seconds, drained, default


def sync_usage() -> None:
    from aceleryctl.sync import controller

    facade: SyncCeleryController = controller
    result = facade.delay(add, 1, 2)
    pair = facade.safe_execute(add, 1, 2)
    assert_type(pair[0], Literal[True])
    closed: bool = facade.close(0)
    del result, closed


def testing_usage() -> None:
    with recording(app) as rec:
        assert_type(rec, RecordingController)
        first: RecordedDispatch = rec.outbox[0]
        name: str = first.task_name
        del name


async def protocol_usage() -> None:
    # Every controller satisfies its protocol: code written against Controller /
    # SyncController accepts the real ones and the recording ones alike.
    from aceleryctl import Controller
    from aceleryctl.sync import SyncController

    real = AsyncCeleryController(app)
    recorder = RecordingController(app)
    controllers: list[Controller] = [real, recorder]
    facades: list[SyncController] = [real.sync, recorder.sync, controllers[0].sync]
    # A task whose signature the stubs know (here a shared_task) types the
    # arguments of delay() (ParamSpec); the ignores prove the mistakes are caught.
    typed = await real.delay(multiply, 2, 3)
    assert_type(typed, AsyncResult[int])
    blocking = real.sync.delay(multiply, 2, 3)
    assert_type(blocking, AsyncResult[int])
    await real.delay(multiply, "two", 3)  # type: ignore[arg-type]
    real.sync.delay(multiply, 2)  # type: ignore[arg-type]
    del facades


def listener_usage() -> None:
    from aceleryctl import DispatchEvent, DispatchListener, DispatchOutcome, PoolChange
    from aceleryctl.breaker import StateChange

    class Counting:
        def __init__(self) -> None:
            self.sent = 0

        def dispatch_settled(self, event: DispatchEvent) -> None:
            if event.outcome is DispatchOutcome.SENT:
                self.sent += 1

        def pool_changed(self, change: PoolChange) -> None:
            pass

        def breaker_changed(self, change: StateChange) -> None:
            pass

    counting: DispatchListener = Counting()
    AsyncCeleryController(app, listeners=[counting]).add_listener(Counting())
