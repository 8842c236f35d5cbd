"""Celery apps with beat schedules for the schedule checks (memory broker, no network).

``app``'s schedule has one of each problem the checks find: an orphaned entry, a
duplicated pair, a crowded minute and a malformed entry; ``clean`` has none.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from celery.schedules import crontab

app = Celery("schedule-fixture", broker="memory://", set_as_current=False)
clean = Celery("schedule-clean", broker="memory://", set_as_current=False)


@app.task(name="reports.nightly", shared=False)
def nightly() -> None:
    """A task the schedule names correctly."""


@app.task(name="reports.cleanup", shared=False)
def cleanup(days: int = 30) -> int:
    """Another registered task."""
    return days


@clean.task(name="reports.nightly", shared=False)
def clean_nightly() -> None:
    """The clean app's only task."""


app.conf.beat_schedule = {
    "nightly-report": {"task": "reports.nightly", "schedule": crontab(minute=0, hour=2)},
    "old-report": {"task": "reports.nightlly", "schedule": crontab(minute=30, hour=3)},
    "cleanup": {"task": "reports.cleanup", "schedule": timedelta(hours=1), "args": (7,)},
    "cleanup-again": {"task": "reports.cleanup", "schedule": 3600, "args": [7]},
    "cleanup-other-days": {"task": "reports.cleanup", "schedule": 3600, "args": [30]},
    "no-schedule": {"task": "reports.nightly"},
    **{
        f"midnight-{i}": {
            "task": "reports.cleanup",
            "schedule": crontab(minute=0, hour=0),
            "args": [i],
        }
        for i in range(6)
    },
}
clean.conf.beat_schedule = {
    "nightly-report": {"task": "reports.nightly", "schedule": crontab(minute=0, hour=2)},
}
