"""The child processes of ``python -m bench.outbox`` (one Django process each).

    python -m bench._outbox_child setup
    python -m bench._outbox_child enqueue --n 3000 --callers 100 [--business]
    python -m bench._outbox_child fill --rows 20000
    python -m bench._outbox_child relay [--concurrency 1]

The variant, the database and the broker come from the environment (see
:mod:`bench.outboxsite.settings`). ``enqueue`` prints one ``RESULT {json}`` line;
``relay`` reports through Redis (database 1): it pushes its pid to ``ready``,
waits for ``go:<pid>``, relays, and pushes ``{pid, cpu}`` to ``done``. The parent
counts what reached the broker; children only report what they saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

READY_KEY = "bench-outbox:ready"
DONE_KEY = "bench-outbox:done"
GO_PREFIX = "bench-outbox:go:"
#: Where an ``enqueue`` child run with ``--signal-start`` pushes the
#: ``time.monotonic()`` at which its timed requests begin.
STARTED_KEY = "bench-outbox:started"
#: Rows written per transaction when filling an outbox for the relay benchmark.
FILL_CHUNK = 1000


def _setup_django() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.outboxsite.settings")
    import django

    django.setup()
    from bench.outboxsite.settings import VARIANT

    if VARIANT.endswith("dco"):
        _quiet_structlog()
    return VARIANT


def _quiet_structlog() -> None:
    """django-celery-outbox logs through structlog, whose default prints every event
    (an info line per batch) to stdout. Drop what is below WARNING, as the standard
    library's default does for aceleryctl's relay log."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _cpu(system_only: bool = False) -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime if system_only else usage.ru_utime + usage.ru_stime


def _control() -> Any:
    import redis

    from bench.outboxsite.settings import REDIS_ENV

    return redis.Redis.from_url(f"{os.environ[REDIS_ENV]}/1", socket_timeout=600)


# -- setup ------------------------------------------------------------------------


def setup() -> None:
    """Create every table (the apps' migrations, the business table by syncdb)."""
    _setup_django()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)


# -- enqueue: requests that write and dispatch in one transaction -----------------


def _request(variant: str, business: bool) -> tuple[Callable[[int], None], Any]:
    """The sync body of one request (``fn``) and the controller it uses, if any."""
    from django.db import close_old_connections, transaction

    from bench.outboxsite.models import Order
    from bench.outboxsite.tasks import add, app

    def write(i: int) -> None:
        if business:
            Order.objects.create(number=i, customer=f"customer-{i % 97}", total_cents=i * 7)

    controller = None
    dispatch: Callable[[int], object]
    if variant in ("aceleryctl-outbox", "aceleryctl"):
        from aceleryctl import AsyncCeleryController

        controller = AsyncCeleryController(
            app, dispatch_timeout=10.0, max_pending=1_000_000, drain_timeout=60.0
        )
        on_commit = controller.sync.delay_on_commit

        def dispatch(i: int) -> object:
            return on_commit(add, i, i)

    elif variant == "celery":

        def dispatch(i: int) -> object:
            return add.delay_on_commit(i, i)  # type: ignore[attr-defined]

    elif variant == "dco":

        def dispatch(i: int) -> object:
            return add.delay(i, i)  # OutboxCelery.send_task writes the row

    else:
        raise ValueError(variant)

    def fn(i: int) -> None:
        with transaction.atomic():
            write(i)
            dispatch(i)
        # The end of the request: Django's request_finished does this, and with
        # the pool (CONN_MAX_AGE 0) it gives the connection back.
        close_old_connections()

    return fn, controller


async def _enqueue(
    variant: str, business: bool, n: int, callers: int, signal_start: bool
) -> dict[str, Any]:
    from asgiref.sync import ThreadSensitiveContext, sync_to_async

    from bench._support import LagTicker

    fn, controller = _request(variant, business)
    call = sync_to_async(fn, thread_sensitive=True)

    async def caller(first: int, count: int) -> None:
        # One ThreadSensitiveContext per caller, as Django's ASGI handler opens one
        # per request: its sync code runs on a thread of its own.
        async with ThreadSensitiveContext():
            for i in range(first, first + count):
                await call(i)

    # Warm-up, untimed: one request per caller (pool, broker connections, imports).
    await asyncio.gather(*(caller(c, 1) for c in range(callers)))
    warmup = callers
    share = [n // callers + (1 if c < n % callers else 0) for c in range(callers)]
    firsts = [warmup + sum(share[:c]) for c in range(callers)]
    ticker = LagTicker()
    if signal_start:
        _control().rpush(STARTED_KEY, repr(time.monotonic()))
    ticker.start()
    cpu0, sys0, t0 = _cpu(), _cpu(system_only=True), time.perf_counter()
    await asyncio.gather(*(caller(firsts[c], share[c]) for c in range(callers)))
    wall = time.perf_counter() - t0
    lag_p99, lag_max = await ticker.stop()
    if controller is not None:
        # Settled: every after-commit publish done and, with the outbox, every row
        # deleted (the row writer's batched DELETEs).
        drained = await controller.aclose(60.0)
        if variant == "aceleryctl-outbox":
            from aceleryctl.outbox.rows import row_writer

            drained = await asyncio.to_thread(row_writer().flush, 60.0) and drained
    else:
        drained = True
    settled = time.perf_counter() - t0
    cpu, cpu_sys = _cpu() - cpu0, _cpu(system_only=True) - sys0
    counts = await sync_to_async(_table_counts, thread_sensitive=True)(variant)
    return {
        "n": n,
        "warmup": warmup,
        "wall": wall,
        "settled": settled,
        "drained": drained,
        "cpu": cpu,
        "cpu_sys": cpu_sys,
        "lag_p99": lag_p99,
        "lag_max": lag_max,
        **counts,
    }


def _table_counts(variant: str) -> dict[str, int]:
    from django.db import close_old_connections

    from aceleryctl.outbox.models import OutboxMessage
    from bench.outboxsite.models import Order

    counts = {
        "orders": Order.objects.count(),
        "outbox_rows": OutboxMessage.objects.count(),
    }
    if variant == "dco":
        from django_celery_outbox.models import CeleryOutbox

        counts["dco_rows"] = CeleryOutbox.objects.count()
    close_old_connections()
    return counts


def enqueue(n: int, callers: int, business: bool, signal_start: bool) -> None:
    variant = _setup_django()
    result = asyncio.run(_enqueue(variant, business, n, callers, signal_start))
    print("RESULT " + json.dumps(result), flush=True)


# -- fill: pending rows for the relay benchmark ------------------------------------


def fill(rows: int) -> None:
    """Write ``rows`` pending rows to the variant's outbox, through its write path:
    django-celery-outbox's ``OutboxCelery.send_task`` inside transactions, and
    aceleryctl's row encoding (what ``delay_on_commit`` stores), due at once."""
    variant = _setup_django()
    from django.db import transaction

    from bench.outboxsite.tasks import add, app

    if variant == "dco":
        for start in range(0, rows, FILL_CHUNK):
            with transaction.atomic():
                for i in range(start, min(rows, start + FILL_CHUNK)):
                    add.delay(i, i)
        return
    from django.utils import timezone

    from aceleryctl.dispatch.build import build_apply_async
    from aceleryctl.outbox import store
    from aceleryctl.outbox.models import OutboxMessage

    for start in range(0, rows, FILL_CHUNK):
        now = timezone.now()
        batch = [
            store.encode(
                build_apply_async(app, "delay_on_commit", add, (i, i), {}, {}, 10.0)[0],
                app,
                reason=OutboxMessage.Reason.ON_COMMIT,
                now=now,
                available_at=now,
            )
            for i in range(start, min(rows, start + FILL_CHUNK))
        ]
        store.insert(batch, "default")


# -- relay: publish pending rows until the parent has them all ---------------------


def relay(concurrency: int, idle_time: float) -> None:
    variant = _setup_django()
    from django.db import connection

    from bench.outboxsite.tasks import app

    control = _control()
    pid = os.getpid()
    connection.ensure_connection()
    run: Callable[[], object]
    if variant == "aceleryctl-relay":
        from aceleryctl import AsyncCeleryController
        from aceleryctl.outbox.config import outbox_settings
        from aceleryctl.outbox.relay import Relay

        controller = AsyncCeleryController(app, dispatch_timeout=10.0, max_pending=100_000)
        controller.sync.probe()
        relay_ = Relay(controller, settings=outbox_settings(), name=f"bench:{pid}")

        def run() -> object:
            # until_idle: the relay stops after a round that finds nothing due.
            return relay_.run(threading.Event(), until_idle=True)

    elif variant == "dco":
        from django_celery_outbox.relay import Relay as DcoRelay
        from django_celery_outbox.relay import RelayConfig

        from bench.outboxsite.settings import RELAY_BATCH

        with app.producer_pool.acquire(block=True, timeout=10) as producer:
            producer.connection.ensure_connection(max_retries=3)
        config = RelayConfig.init(
            batch_size=RELAY_BATCH, publish_concurrency=concurrency, idle_time=idle_time
        )
        dco = DcoRelay(app, config)

        def run() -> object:
            # Runs until SIGTERM (sent by the parent once the broker has every row),
            # then drains what is still pending and returns.
            dco.start()
            return None

    else:
        raise ValueError(variant)
    control.rpush(READY_KEY, pid)
    if control.blpop([f"{GO_PREFIX}{pid}"], timeout=300) is None:
        print("no go within 300 s", file=sys.stderr)
        sys.exit(2)
    cpu0 = _cpu()
    run()
    control.rpush(DONE_KEY, json.dumps({"pid": pid, "cpu": _cpu() - cpu0}))
    connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    p_enqueue = sub.add_parser("enqueue")
    p_enqueue.add_argument("--n", type=int, required=True)
    p_enqueue.add_argument("--callers", type=int, required=True)
    p_enqueue.add_argument("--business", action="store_true")
    p_enqueue.add_argument("--signal-start", action="store_true")
    p_fill = sub.add_parser("fill")
    p_fill.add_argument("--rows", type=int, required=True)
    p_relay = sub.add_parser("relay")
    p_relay.add_argument("--concurrency", type=int, default=1)
    p_relay.add_argument("--idle-time", type=float, default=1.0, help="django-celery-outbox's")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup()
    elif args.command == "enqueue":
        enqueue(args.n, args.callers, args.business, args.signal_start)
    elif args.command == "fill":
        fill(args.rows)
    else:
        relay(args.concurrency, args.idle_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
