"""The Celery app and task of the HTTP benchmark (``bench.httpsite``).

Stock Celery settings apart from the broker URL and the queue: in particular no
``socket_timeout``, so a stock ``delay()`` against a paused Redis waits as long
as the pause lasts, as it does in a project that did not set one.
"""

from __future__ import annotations

import os

from celery import Celery

BROKER_ENV = "ACELERYCTL_BENCH_HTTP_BROKER"
QUEUE = "bench-http"

app = Celery("aceleryctl_bench_http", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0"),
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.http.add", shared=False)
def add(x: int, y: int) -> int:
    return x + y
