"""The demo's Celery tasks. They run in the worker started by ``demo_site.run``."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from django.utils import timezone

from aceleryctl import report_progress
from aceleryctl.backends import report_progress as report_task_progress
from demo_site.celery_app import app

try:  # Django 6: the task framework is built in; Django 5.2: the django-tasks backport
    from django.tasks import task
except ImportError:  # pragma: no cover - Django 5.2
    from django_tasks import task  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

#: Progress updates per second of ``long_task``.
_TICKS_PER_SECOND = 4


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(bind=True)
def long_task(self: Task[Any, Any], seconds: int) -> dict[str, int]:
    """Work for ``seconds`` seconds, reporting progress (state ``PROGRESS``, and a live
    ``task.progress`` event for the page) with :func:`aceleryctl.report_progress`."""
    total = max(1, seconds * _TICKS_PER_SECOND)
    for done in range(1, total + 1):
        time.sleep(1 / _TICKS_PER_SECOND)
        if done < total:
            report_progress(self, done, total, f"step {done} of {total}")
    return {"current": total, "total": total}


class FlakyError(RuntimeError):
    """What ``flaky`` raises, on purpose."""


@app.task(bind=True, max_retries=2, default_retry_delay=1)
def flaky(self: Task[Any, Any]) -> None:
    """Fail, retry twice (state ``RETRY``), then fail for good (state ``FAILURE``)."""
    attempt = self.request.retries + 1
    exc = FlakyError(f"the flaky task failed on attempt {attempt} (on purpose)")
    raise self.retry(exc=exc)


class UpstreamUnavailable(ConnectionError):
    """What ``unreliable_fetch`` raises on its first attempt, on purpose."""


@app.task(bind=True, max_retries=3, default_retry_delay=1)
def unreliable_fetch(self: Task[Any, Any]) -> dict[str, int]:
    """Fail on the first attempt (a simulated 503 upstream), retry once, then succeed."""
    attempt = self.request.retries + 1
    if attempt < 2:
        exc = UpstreamUnavailable("the upstream API answered 503 Service Unavailable (simulated)")
        raise self.retry(exc=exc)
    report_progress(self, 1, 1, "fetched")
    return {"attempts": attempt, "rows": 42}


@app.task(bind=True)
def process_report(self: Task[Any, Any], report_id: int) -> dict[str, Any]:
    """Fill in a ``Report`` created by the API: a stand-in for real processing."""
    from demo_site.models import Report

    report = Report.objects.get(pk=report_id)
    report.status = Report.Status.PROCESSING
    report.save(update_fields=["status"])
    steps = 4
    for done in range(1, steps + 1):
        time.sleep(0.3)
        report_progress(self, done, steps, f"page {done} of {steps}")
    report.word_count = len(report.title.split())
    report.status = Report.Status.DONE
    report.processed_at = timezone.now()
    report.save(update_fields=["status", "word_count", "processed_at"])
    return {"report_id": report.pk, "word_count": report.word_count}


@app.task(ignore_result=True)
def record_audit(event: str, **details: Any) -> None:
    """A non-critical side task: the API dispatches it with ``safe_execute``."""
    logger.info("audit: %s %s", event, details)


@task
async def count_words(text: str) -> dict[str, int]:
    """A Django ``@task`` (``TASKS`` uses aceleryctl's ``CeleryBackend``), enqueued with
    ``await count_words.aenqueue(text)``: counts the words of ``text`` one line at a
    time, reporting progress, on the worker's event loop."""
    import asyncio

    lines = text.splitlines() or [text]
    counts: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        for word in line.split():
            counts[word.lower()] = counts.get(word.lower(), 0) + 1
        report_task_progress(number, len(lines), f"line {number} of {len(lines)}")
        await asyncio.sleep(0.5)
    return {"words": sum(counts.values()), "distinct": len(counts)}
