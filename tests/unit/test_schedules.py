"""The schedule checks' pure parts: reading entries, orphans, duplicates, hotspots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from aceleryctl.schedules.entries import (
    BEAT_SCHEDULE,
    DATABASE,
    ScheduleEntry,
    beat_schedule_entries,
    describe_schedule,
    schedule_key,
)
from aceleryctl.schedules.findings import Level, checked_entries, duplicates, invalid, orphaned
from aceleryctl.schedules.hotspots import firings, hotspots

MONDAY = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)


@pytest.fixture
def app() -> Celery:
    return Celery("schedules-unit", broker="memory://", set_as_current=False)


def entry(name: str, task: str | None = "t", sched: object = None, **kw: object) -> ScheduleEntry:
    return ScheduleEntry(name, kw.pop("source", BEAT_SCHEDULE), task, sched, **kw)  # type: ignore[arg-type]


def test_numbers_and_timedeltas_become_interval_schedules(app: Celery) -> None:
    app.conf.beat_schedule = {
        "a": {"task": "t", "schedule": 30},
        "b": {"task": "t", "schedule": timedelta(seconds=30), "args": None, "kwargs": None},
    }
    a, b = beat_schedule_entries(app)
    assert schedule_key(a.schedule) == schedule_key(b.schedule) == ("every", 30.0)  # type: ignore[arg-type]
    assert a.problems == b.problems == ()
    assert describe_schedule(a.schedule) == "every 30 s"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("not a dict", "the entry is a str; make it a dict with 'task' and 'schedule'"),
        ({"schedule": 5}, "it names no task; set 'task' to a registered task's name"),
        ({"task": "t"}, "it has no 'schedule'; set one"),
        ({"task": "t", "schedule": "5"}, "its 'schedule' is a str; use seconds, a timedelta"),
        ({"task": "t", "schedule": True}, "its 'schedule' is a bool"),
        ({"task": "t", "schedule": 0}, "its 'schedule' is 0 seconds; use a positive number"),
        ({"task": "t", "schedule": 5, "args": 3}, "'args' is a int; make it a list or a tuple"),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "'kwargs' is a list; make it a dict"),
        ({"task": "t", "schedule": 5, "options": 1}, "'options' is a int; make it a dict"),
    ],
)
def test_malformed_entries_say_what_to_change(app: Celery, spec: object, problem: str) -> None:
    app.conf.beat_schedule = {"x": spec}
    (found,) = beat_schedule_entries(app)
    assert any(p.startswith(problem) for p in found.problems), found.problems
    (finding,) = [f for f in invalid([found]) if problem.split(";")[0] in f.message]
    assert finding.level is Level.ERROR
    assert finding.entries == ("'x' (beat_schedule)",)


def test_a_schedule_that_is_not_a_dict(app: Celery) -> None:
    app.conf.beat_schedule = [("x", {})]
    (found,) = beat_schedule_entries(app)
    assert "beat_schedule is a list" in found.problems[0]


def test_orphans_offer_the_closest_registered_name() -> None:
    found = orphaned(
        [entry("a", "proj.tasks.send_mail"), entry("b", "proj.tasks.sendmail"), entry("c", None)],
        {"proj.tasks.send_mail", "other.task"},
    )
    assert [f.entries for f in found] == [("'b' (beat_schedule)",)]
    assert "did you mean 'proj.tasks.send_mail'?" in found[0].message
    far = orphaned([entry("d", "zzz")], {"proj.tasks.send_mail"})
    assert "did you mean" not in far[0].message


def test_duplicates_need_the_same_task_arguments_and_firings() -> None:
    hourly = schedule(timedelta(hours=1))
    entries = [
        entry("a", "t", hourly, args=(1,)),
        entry("b", "t", schedule(timedelta(seconds=3600)), args=(1,)),
        entry("c", "t", hourly, args=(2,)),
        entry("d", "u", hourly, args=(1,)),
        entry("e", "t", crontab(minute="0"), args=(1,)),
        entry("f", "t", crontab(minute=0, hour="*"), args=(1,)),
        entry("g", "t", hourly, kwargs={"x": 1}),
        entry("h", "t", hourly, kwargs={"x": 1}),
    ]
    found = duplicates(entries)
    assert sorted(f.entries for f in found) == [
        ("'a' (beat_schedule)", "'b' (beat_schedule)"),
        ("'e' (beat_schedule)", "'f' (beat_schedule)"),
        ("'g' (beat_schedule)", "'h' (beat_schedule)"),
    ]


def test_checked_entries_drop_disabled_rows_and_let_beat_schedule_win() -> None:
    kept = checked_entries(
        [
            entry("x", "from-db", source=DATABASE),
            entry("x", "from-settings"),
            entry("y", "off", source=DATABASE, enabled=False),
            entry("z", "db-only", source=DATABASE),
        ]
    )
    assert [(e.name, e.task) for e in kept] == [("x", "from-settings"), ("z", "db-only")]


def test_crontab_firings_follow_days_of_the_week_and_the_zone() -> None:
    weekdays = crontab(minute=30, hour=9, day_of_week="mon-fri")
    times = list(firings(weekdays, MONDAY, timedelta(days=7)))
    assert [t.strftime("%a %H:%M") for t in times] == [
        f"{d} 09:30" for d in ("Mon", "Tue", "Wed", "Thu", "Fri")
    ]
    sunday = list(firings(crontab(minute=0, hour=0, day_of_week=0), MONDAY, timedelta(days=7)))
    assert [t.strftime("%a") for t in sunday] == ["Sun"]
    zoned = crontab(minute=0, hour=9)
    zoned.tz = ZoneInfo("Europe/Paris")  # what a Celery app with that timezone sets
    first = next(firings(zoned, MONDAY, timedelta(days=1)))
    assert first == datetime(2026, 12, 7, 9, 0)  # 09:00 in Paris, however UTC reads it
    assert list(firings(schedule(timedelta(minutes=1)), MONDAY, timedelta(days=1))) == []


def test_hotspots_group_crowded_minutes_and_shared_periods() -> None:
    at_midnight = [entry(f"m{i}", "t", crontab(minute=0, hour=0), args=(i,)) for i in range(4)]
    every_minute = [entry(f"p{i}", "t", schedule(timedelta(seconds=60))) for i in range(4)]
    quiet = [entry("q", "t", crontab(minute=7, hour=0))]
    found = hotspots(at_midnight + every_minute + quiet, now=MONDAY, limit=3)
    assert len(found) == 2
    assert all(f.level is Level.WARNING for f in found)
    minute, period = found
    assert "4 entries fire in the same minute (Mon 00:00, Tue 00:00, Wed 00:00 and 4 more" in (
        minute.message
    )
    assert "'q'" not in minute.message
    assert "4 entries run every 60 s and fire together" in period.message
    assert hotspots(at_midnight + every_minute, now=MONDAY, limit=4) == []
    with pytest.raises(ValueError, match="use 1 or more"):
        hotspots([], now=MONDAY, limit=0)


def test_a_clocked_one_off_counts_in_its_minute() -> None:
    class Clocked(schedule):  # django-celery-beat's clocked: a clocked_time, no period
        def __init__(self, when: datetime) -> None:
            super().__init__(timedelta(days=365))
            self.clocked_time = when

    noon = Clocked(datetime(2026, 12, 8, 12, 0, 30, tzinfo=UTC))
    assert describe_schedule(noon) == "every 3.1536e+07 s"  # an interval subclass reads as one
    plain = type("clocked", (), {"clocked_time": noon.clocked_time, "tz": None})()
    assert list(firings(plain, MONDAY, timedelta(days=7))) == [datetime(2026, 12, 8, 12, 0)]  # type: ignore[arg-type]
    assert schedule_key(plain) == ("clocked", noon.clocked_time)  # type: ignore[arg-type]
