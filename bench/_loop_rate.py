"""``python -m bench.dispatch --loop-prototype``: what publishing from the event-loop
thread would buy, measured against ``await controller.delay`` in one run.

The prototype (:mod:`bench.httpsite.loop_prototype`, not part of the package: no
deadline, no breaker, no reconnects) builds the direct path's message on the loop
thread and writes every message of one loop turn in one ``write``. Two ways:

* ``loop prototype``: every caller builds its own message at once, so 100 callers
  build 100 messages in one loop turn;
* ``loop prototype, <= K a turn``: callers queue their arguments and at most ``K``
  messages are built per loop turn, the rest in the following turns (the cap the
  design needs to bound the event loop's lag).

Each with ``--callers`` coroutines and with one; figures are medians over
interleaved rounds, printed with their ratio to ``await controller.delay`` of the
same run. Docs untouched (docs/design.md quotes a run).
"""

from __future__ import annotations

import asyncio
import collections
import statistics
from typing import Any

import redis
from celery import Celery

from aceleryctl import AsyncCeleryController
from bench._cli import rotated
from bench._support import Measurement, redis_server
from bench.httpsite.loop_protocol import LpushWriter
from bench.httpsite.loop_prototype import _Publisher, connect_writer

__all__ = ["run"]

#: The cap of the capped mode: messages built per loop turn.
CAP = 32


class _Capped:
    """Queues callers' arguments; builds at most ``CAP`` messages a loop turn."""

    def __init__(self, publisher: _Publisher, writer: LpushWriter) -> None:
        self._publisher = publisher
        self._writer = writer
        self._queued: collections.deque[tuple[int, asyncio.Future[Any]]] = collections.deque()
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    async def publish(self, i: int) -> None:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queued.append((i, future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._build)
        written = await future
        await written

    def _build(self) -> None:
        queued = self._queued
        for _ in range(min(CAP, len(queued))):
            i, future = queued.popleft()
            prepared = self._publisher.build(i, i)
            future.set_result(self._writer.queue(prepared.key, prepared.payload))
        if queued:
            self._loop.call_soon(self._build)
        else:
            self._scheduled = False


def _clear(app: Celery) -> None:
    from bench.dispatch import QUEUE

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        client.delete(QUEUE)
    finally:
        client.close()


def _mode(mode: str, app: Celery, n: int, callers: int) -> Measurement:
    from bench.dispatch import _drive

    add = app.tasks["bench.add"]

    async def main() -> Measurement:
        if mode == "await controller.delay":
            ctl = AsyncCeleryController(app, dispatch_timeout=10.0, max_pending=n + callers)
            try:
                await ctl.delay(add, 0, 0)  # connected, as the prototype is below
                await asyncio.to_thread(_clear, app)  # ... and not counted as landed
                return await _drive(mode, n, callers, lambda i: ctl.delay(add, i, i))
            finally:
                await ctl.aclose()
        publisher = await asyncio.to_thread(_Publisher, app, add)
        publisher.build(0, 0)  # declares the queue once, off the clock
        writer = await connect_writer(app)
        if mode == "loop prototype":

            async def publish(i: int) -> None:
                prepared = publisher.build(i, i)
                await writer.push(prepared.key, prepared.payload)

            return await _drive(mode, n, callers, publish)
        capped = _Capped(publisher, writer)
        return await _drive(mode, n, callers, capped.publish)

    return asyncio.run(main())


MODES = ["await controller.delay", "loop prototype", f"loop prototype, <= {CAP} a turn"]


def run(n: int, callers: int, rounds: int) -> str:
    """Run every mode ``rounds`` times with ``callers`` coroutines and with one;
    return the table (markdown)."""
    from bench.dispatch import QUEUE, make_app

    keys = [(m, c) for c in (callers, 1) for m in MODES]
    results: dict[tuple[str, int], list[Measurement]] = {k: [] for k in keys}
    with redis_server() as (url, _process):
        app = make_app(url)
        client = redis.Redis.from_url(f"{url}/0")
        for round_index in range(rounds):
            for mode, c in rotated(keys, round_index):
                count = n if c > 1 else max(1, n // 5)
                client.delete(QUEUE)
                m = _mode(mode, app, count, c)
                landed = int(client.llen(QUEUE))
                results[(mode, c)].append(
                    Measurement(m.mode, m.n, m.wall, m.cpu, landed, m.lag_p99, m.lag_max)
                )
                print(
                    f"round {round_index + 1} {mode:28s} x{c:<3d} {m.rate:9,.0f}/s "
                    f"{m.cpu_us:6.0f} µs lag p99 {1000 * (m.lag_p99 or 0):6.2f} ms "
                    f"landed {landed}/{count}",
                    flush=True,
                )
        client.close()
    lines = [
        "| mode | callers | enqueues/s | x controller | CPU µs | loop lag p99 ms | landed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in (callers, 1):
        ref = statistics.median(r.rate for r in results[("await controller.delay", c)])
        for mode in MODES:
            runs = results[(mode, c)]
            rate = statistics.median(r.rate for r in runs)
            cpu = statistics.median(r.cpu_us for r in runs)
            lag = statistics.median(1000 * (r.lag_p99 or 0) for r in runs)
            exact = all(r.landed == r.n for r in runs)
            lines.append(
                f"| {mode} | {c} | {rate:,.0f} | {rate / ref:.2f} | {cpu:.0f} | {lag:.2f} | "
                f"{'exact' if exact else 'MISMATCH'} |"
            )
    return "\n".join(lines)
