"""``python -m bench.dispatch --metrics``: what the metrics listeners cost a dispatch.

``await controller.delay`` with no metrics listener, with the Prometheus one (its
own registry; and in ``prometheus_client``'s multiprocess mode, its values in
memory-mapped files, as several server processes run it) and with the
OpenTelemetry one (an SDK meter provider with an
in-memory reader), in one process against one private Redis, from 100 coroutines
(the controller batches their dispatches) and from one (every dispatch its own
publish). Each measured window ends with one collection (a scrape of the
registry, a reader's collect), inside the window, as an exporter would run one.
Rounds rotate the order; figures are medians; the CPU per dispatch of each
listener is printed as a ratio of the plain controller's in the same round at
the same concurrency (the median of the rounds' ratios and their range; the
target: under 1.05), beside a listener that does nothing (what the engine's
event and call cost by themselves). With one coroutine a dispatch's CPU is
mostly thread wake-ups and moves by about 10% from round to round, more than the
listeners cost, so each listener is also timed directly: the thread CPU of
building the event and calling ``dispatch_settled`` on it, per call, with as many
dispatches per publish operation as the controller made in the run, printed as a
share of the plain controller's CPU per dispatch. Nothing
here is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.dispatch.listener import DispatchEvent, DispatchOutcome
from aceleryctl.metrics.gauges import GaugeSampler
from bench._support import LagTicker, cpu_seconds, delay_from, redis_server, shares

VARIANTS = (
    "no metrics",
    "a listener that does nothing",
    "Prometheus",
    "Prometheus, multiprocess",
    "OpenTelemetry",
)


class _NothingListener:
    """The engine's listener machinery alone: the event is built and handed over."""

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Do nothing."""

    def pool_changed(self, change: object) -> None:
        """Do nothing."""

    def breaker_changed(self, change: object) -> None:
        """Do nothing."""


@contextlib.contextmanager
def _multiprocess(variant: str) -> Iterator[None]:
    """``prometheus_client``'s multiprocess mode for one variant: the environment
    variable the listener reads, and the value class the client picks at import
    (set the way the client's own tests switch it), both restored after."""
    if variant != "Prometheus, multiprocess":
        yield
        return
    from prometheus_client import values

    saved = values.ValueClass
    with tempfile.TemporaryDirectory() as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue()
        try:
            yield
        finally:
            values.ValueClass = saved
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


def _listener(variant: str, controller: AsyncCeleryController) -> tuple[Any, Any]:
    """The listener of ``variant`` and a callable that collects its metrics once."""
    sampler = GaugeSampler(controller.statistics)
    if variant == "a listener that does nothing":
        return _NothingListener(), lambda: None
    if variant == "Prometheus, multiprocess":
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        from aceleryctl.metrics.prometheus import PrometheusMetrics

        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]

        def scrape() -> bytes:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)

        return PrometheusMetrics(sampler, registry=CollectorRegistry()), scrape
    if variant == "Prometheus":
        from prometheus_client import CollectorRegistry, generate_latest

        from aceleryctl.metrics.prometheus import PrometheusMetrics

        registry = CollectorRegistry()
        return PrometheusMetrics(sampler, registry=registry), lambda: generate_latest(registry)
    if variant == "OpenTelemetry":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from aceleryctl.metrics.otel import OpenTelemetryMetrics

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        return OpenTelemetryMetrics(sampler, meter_provider=provider), reader.get_metrics_data
    return None, lambda: None


async def _one(app: Celery, variant: str, n: int, callers: int) -> tuple[float, float, float]:
    add = app.tasks["bench.add"]
    controller = AsyncCeleryController(app, dispatch_timeout=10.0, max_pending=n + callers)
    listener, collect = _listener(variant, controller)
    if listener is not None:
        controller.add_listener(listener)
    await controller.delay(add, 0, 0)  # warm: thread, connection, label children
    ticker = LagTicker()
    share = shares(n, callers)
    ticker.start()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await delay_from(controller, add, share)
    collect()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    p99, _ = await ticker.stop()
    await controller.aclose()
    return n / wall, 1e6 * cpu / n, 1000 * p99


class _BatchCounter(_NothingListener):
    """Counts dispatches and the publish operations they came in (outside timing)."""

    def __init__(self) -> None:
        self.dispatches = 0
        self.operations: set[tuple[float | None, float]] = set()

    def dispatch_settled(self, event: DispatchEvent) -> None:
        """Count ``event`` and its operation."""
        self.dispatches += 1
        self.operations.add((event.started_at, event.finished_at))


async def _mean_batch(app: Celery, n: int, callers: int) -> float:
    """Dispatches per publish operation when ``callers`` coroutines dispatch ``n``."""
    add = app.tasks["bench.add"]
    async with AsyncCeleryController(app, dispatch_timeout=10.0, max_pending=n + callers) as ctl:
        counter = _BatchCounter()
        ctl.add_listener(counter)
        await delay_from(ctl, add, shares(n, callers))
    return counter.dispatches / max(len(counter.operations), 1)


def _direct(app: Celery, variant: str, batch: float, count: int = 20_000) -> float:
    """Thread CPU µs per settled dispatch spent building its event and in the
    listener of ``variant`` (0 without one), for dispatches published ``batch``
    to an operation on average (as measured in the run)."""
    controller = AsyncCeleryController(app)
    try:
        listener, _ = _listener(variant, controller)
        if listener is None:
            return 0.0
        settle = listener.dispatch_settled
        sent = DispatchOutcome.SENT
        cpu0 = time.thread_time()
        for i in range(count):
            at = float(int(i / batch))
            settle(
                DispatchEvent(
                    "bench.add", "id", "delay", "task", "bench", "redis", sent, None, None,
                    at, at, at + 0.0005,
                )
            )  # fmt: skip
        return 1e6 * (time.thread_time() - cpu0) / count
    finally:
        controller.sync.close(10.0)


def run(n: int, callers: int, rounds: int) -> str:
    """Run the comparison and return its markdown table (``callers`` coroutines,
    then one coroutine with a tenth of ``n``)."""
    from bench.dispatch import QUEUE, make_app

    levels = ((callers, n), (1, max(n // 10, 100)))
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {
        (v, c): [] for c, _ in levels for v in VARIANTS
    }
    with redis_server() as (url, _process):
        app = make_app(url)
        client = redis.Redis.from_url(f"{url}/0")
        for index in range(rounds):
            order = VARIANTS[index % len(VARIANTS) :] + VARIANTS[: index % len(VARIANTS)]
            for level, count in levels:
                for variant in order:
                    client.delete(QUEUE)
                    with _multiprocess(variant):
                        measured = asyncio.run(_one(app, variant, count, level))
                    landed = int(client.llen(QUEUE))
                    if landed != count + 1:
                        raise SystemExit(f"{variant}: {landed} of {count + 1} messages landed")
                    results[(variant, level)].append(measured)
                    print(
                        f"round {index + 1} {level:3d} {variant:24s} "
                        f"{measured[0]:9,.0f}/s {measured[1]:6.1f} µs"
                    )
        direct: dict[tuple[str, int], float] = {}
        batches = {level: asyncio.run(_mean_batch(app, count, level)) for level, count in levels}
        for variant in VARIANTS:
            for level, _ in levels:
                with _multiprocess(variant):
                    direct[(variant, level)] = _direct(app, variant, batches[level])
        client.delete(QUEUE)
        client.close()
    lines = [
        "| await controller.delay | coroutines | dispatches/s | CPU µs/dispatch | "
        "CPU x no metrics (per-round ratios: median, range) | listener µs, timed directly | "
        "as share of a dispatch | loop lag p99 ms |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for level, _ in levels:
        base_runs = results[("no metrics", level)]
        base_cpu = statistics.median(r[1] for r in base_runs)
        for variant in VARIANTS:
            runs = results[(variant, level)]
            rate = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            lag = statistics.median(r[2] for r in runs)
            ratios = [r[1] / b[1] for r, b in zip(runs, base_runs, strict=True)]
            own = direct[(variant, level)]
            lines.append(
                f"| {variant} | {level} | {rate:,.0f} | {cpu:.1f} | "
                f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"| {own:.1f} | {100 * own / base_cpu:.1f}% | {lag:.2f} |"
            )
    sizes = ", ".join(f"{level} coroutines {batches[level]:.1f}" for level, _ in levels)
    lines.append(f"\nDispatches per publish operation (timed directly as such): {sizes}.")
    return "\n".join(lines)
