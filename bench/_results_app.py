"""The Celery app of ``bench.results``: one task that says when it ended.

``celery -A bench._results_app worker`` runs it; the benchmark process imports the
same module. The broker and result backend URLs come from the environment
(``ACELERYCTL_BENCH_BROKER``, ``ACELERYCTL_BENCH_BACKEND``). Must not import Django.
"""

from __future__ import annotations

import os
import time

from celery import Celery

__all__ = ["QUEUE", "app", "stamp"]

QUEUE = "bench-results"

app = Celery("bench_results", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("ACELERYCTL_BENCH_BROKER", "redis://127.0.0.1:1/0"),
    result_backend=os.environ.get("ACELERYCTL_BENCH_BACKEND", "redis://127.0.0.1:1/1"),
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench_results.stamp", shared=False)
def stamp(work: float) -> float:
    """Sleep ``work`` seconds, then return the wall-clock time (``time.time()``) it ended."""
    time.sleep(work)
    return time.time()
