"""The recovery probe against a real Redis that is killed and restarted, or paused.

The breaker's reset timeout is a minute, so only the probe can end its open state
within the test's bounds: once the broker answers again, the breaker moves to
HALF_OPEN on the probe's word, and the next dispatch succeeds and closes it. While
the broker is away, calls are still refused by the breaker and the probe never
runs on a caller's thread.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from aceleryctl import AsyncCeleryController, CircuitBreaker
from aceleryctl.breaker import BreakerState, StateChange
from aceleryctl.exceptions import CircuitOpenError, TaskDispatchError
from tests._support.redis_server import RedisServer
from tests._support.waiting import wait_until_async
from tests.integration.celery_app import add
from tests.integration.faults.conftest import FaultBroker
from tests.integration.faults.test_faults import isolated_app, new_marker

RESET = 60.0  # seconds: far past every bound below
WAIT = 20.0


class Changes:
    def __init__(self) -> None:
        self.seen: list[StateChange] = []

    def state_changed(self, change: StateChange) -> None:
        self.seen.append(change)


def controller(fault_broker: FaultBroker, redis_server: RedisServer) -> AsyncCeleryController:
    app = isolated_app(f"recovery-{new_marker()}", fault_broker.url(0), redis_server.url(1))
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=RESET, max_reset_timeout=RESET)
    return AsyncCeleryController(app, dispatch_timeout=1.0, breaker=breaker)


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aceleryctl-recovery-probe"]


async def open_it(ctl: AsyncCeleryController) -> None:
    for _ in range(10):
        if ctl.breaker.state is BreakerState.OPEN:
            return
        with pytest.raises(TaskDispatchError):
            await ctl.delay(add, 1, 1)
    assert ctl.breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("fault", ["killed and restarted", "paused and resumed"])
async def test_the_breaker_closes_as_soon_as_the_broker_answers(
    fault_broker: FaultBroker, redis_server: RedisServer, fault: str
) -> None:
    ctl = controller(fault_broker, redis_server)
    changes = Changes()
    ctl.breaker.add_listener(changes)
    try:
        await ctl.delay(add, 1, 1)  # connected and healthy
        if fault.startswith("killed"):
            await asyncio.to_thread(fault_broker.kill)
        else:
            fault_broker.server.pause()
        await open_it(ctl)
        await wait_until_async(
            lambda: ctl.health()["recovery_probe"]["probes"] >= 2, timeout=WAIT, message="probing"
        )
        assert ctl.health()["recovery_probe"]["running"] is True
        with pytest.raises(CircuitOpenError):  # callers are still refused by the breaker
            await ctl.delay(add, 2, 2)
        if fault.startswith("killed"):
            await asyncio.to_thread(fault_broker.restart)
        else:
            fault_broker.server.resume()
        await wait_until_async(
            lambda: ctl.breaker.state is not BreakerState.OPEN,
            timeout=WAIT,
            message="the probe never ended the open state",
        )
        result = await ctl.delay(add, 3, 3)
        assert result.id
        assert ctl.breaker.state is BreakerState.CLOSED
        reasons = [c.reason for c in changes.seen if c.new is BreakerState.HALF_OPEN]
        assert reasons == ["a background probe reached the broker"]
        health = ctl.health()["recovery_probe"]
        assert health["answered"] == 1
        assert health["last_error"]
        await wait_until_async(lambda: not probe_threads(), timeout=WAIT, message="probe thread")
    finally:
        if fault_broker.server.is_alive():
            fault_broker.server.resume()
        else:
            await asyncio.to_thread(fault_broker.restart)
        await ctl.aclose(timeout=5.0)
