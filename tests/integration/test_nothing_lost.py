"""Every dispatch that returned a result reaches the worker, exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from aceleryctl import AsyncCeleryController

from ._helpers import Records, new_marker
from .celery_app import record

ASYNC_CALLS = 300
THREADS = 4
CALLS_PER_THREAD = 50


async def test_every_returned_id_runs_exactly_once(
    controller: AsyncCeleryController, records: Records
) -> None:
    marker = new_marker()
    thread_ids: list[str] = []
    thread_errors: list[BaseException] = []
    lock = threading.Lock()

    def legacy_caller(n: int) -> None:
        try:
            for i in range(CALLS_PER_THREAD):
                result = controller.sync.delay(record, marker, f"thread-{n}-{i}")
                with lock:
                    thread_ids.append(result.id)
        except BaseException as exc:  # reported by the test below
            thread_errors.append(exc)

    threads = [
        threading.Thread(target=legacy_caller, args=(n,), name=f"legacy-{n}", daemon=True)
        for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    results = await asyncio.gather(
        *(controller.delay(record, marker, f"async-{i}") for i in range(ASYNC_CALLS))
    )
    for thread in threads:
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    assert thread_errors == []

    returned = [result.id for result in results] + thread_ids
    total = ASYNC_CALLS + THREADS * CALLS_PER_THREAD
    assert len(set(returned)) == total
    entries = await records.wait_for_async(marker, count=total, timeout=60)
    ran = Counter(entry["task_id"] for entry in entries)
    missing = set(returned) - set(ran)
    duplicated = {task_id: n for task_id, n in ran.items() if n > 1}
    assert not missing, f"{len(missing)} of {total} returned ids never ran"
    assert not duplicated, f"ran more than once: {duplicated}"
    assert set(ran) == set(returned)
