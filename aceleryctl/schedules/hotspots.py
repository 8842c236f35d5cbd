"""Crowded minutes: many entries firing at once make a burst the workers queue up.

Wall-clock schedules (``crontab`` and django-celery-beat's one-off ``clocked``)
are laid out minute by minute over a horizon (a week by default) in each
schedule's own time zone; a minute in which more than ``limit`` entries fire is a
hotspot. Interval schedules are not tied to the clock but to the moment beat
starts, so entries that share a period fire together for as long as beat runs:
more than ``limit`` of them sharing one period are a hotspot too. Solar schedules
are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from celery.schedules import BaseSchedule, crontab, schedule

from aceleryctl.schedules.entries import ScheduleEntry, cron_sets, period_seconds
from aceleryctl.schedules.findings import Finding, Level

__all__ = ["DEFAULT_LIMIT", "firings", "hotspots"]

#: Entries allowed to fire in the same minute before it is reported.
DEFAULT_LIMIT = 5
#: Times shown per hotspot finding before "and N more".
_SHOWN = 3


def firings(sched: BaseSchedule, start: datetime, horizon: timedelta) -> Iterator[datetime]:
    """The minutes in ``[start, start + horizon)`` at which ``sched`` fires, naive,
    in the schedule's time zone (``start`` is read in that zone too); nothing for a
    schedule not tied to the wall clock."""
    if isinstance(sched, crontab):
        yield from _crontab_firings(sched, start, horizon)
        return
    clocked_time = getattr(sched, "clocked_time", None)
    if isinstance(clocked_time, datetime):
        local = _local(clocked_time, sched)
        begin = _local(start, sched)
        if begin <= local < begin + horizon:
            yield local.replace(second=0, microsecond=0)


def _local(moment: datetime, sched: BaseSchedule) -> datetime:
    zone = getattr(sched, "tz", None)
    if moment.tzinfo is not None and zone is not None:
        moment = moment.astimezone(zone)
    return moment.replace(tzinfo=None)


def _crontab_firings(sched: crontab, start: datetime, horizon: timedelta) -> Iterator[datetime]:
    begin = _local(start, sched).replace(second=0, microsecond=0)
    end = begin + horizon
    minute_set, hour_set, weekdays, monthdays, months = cron_sets(sched)
    hours, minutes = sorted(hour_set), sorted(minute_set)
    day = begin.replace(hour=0, minute=0)
    while day < end:
        # Celery counts days of the week from Sunday = 0.
        if day.isoweekday() % 7 in weekdays and day.day in monthdays and day.month in months:
            for hour in hours:
                for minute in minutes:
                    moment = day.replace(hour=hour, minute=minute)
                    if begin <= moment < end:
                        yield moment
        day += timedelta(days=1)


def hotspots(
    entries: Sequence[ScheduleEntry],
    *,
    now: datetime,
    limit: int = DEFAULT_LIMIT,
    horizon: timedelta = timedelta(days=7),
) -> list[Finding]:
    """A warning per set of entries that fire together more than ``limit`` at a time:
    one for each group of crowded minutes with the same entries, one for each
    interval period shared by more than ``limit`` entries.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    if limit < 1:
        raise ValueError(f"the hotspot limit is {limit}; use 1 or more entries per minute")
    by_minute: dict[datetime, list[ScheduleEntry]] = defaultdict(list)
    by_period: dict[float, list[ScheduleEntry]] = defaultdict(list)
    for entry in entries:
        if entry.schedule is None:
            continue
        if isinstance(entry.schedule, schedule):
            by_period[period_seconds(entry.schedule)].append(entry)
            continue
        for moment in firings(entry.schedule, now, horizon):
            by_minute[moment].append(entry)
    crowded: dict[tuple[str, ...], list[datetime]] = defaultdict(list)
    for moment in sorted(by_minute):
        names = by_minute[moment]
        if len(names) > limit:
            crowded[tuple(entry.label for entry in names)].append(moment)
    found = [_minute_finding(labels, moments, limit) for labels, moments in crowded.items()]
    found.extend(
        _period_finding(period, same, limit)
        for period, same in sorted(by_period.items())
        if len(same) > limit
    )
    return found


def _minute_finding(labels: tuple[str, ...], moments: list[datetime], limit: int) -> Finding:
    shown = ", ".join(moment.strftime("%a %H:%M") for moment in moments[:_SHOWN])
    more = f" and {len(moments) - _SHOWN} more times this week" if len(moments) > _SHOWN else ""
    return Finding(
        Level.WARNING,
        "hotspot",
        labels,
        f"{len(labels)} entries fire in the same minute ({shown}{more}; the limit is "
        f"{limit}): {', '.join(labels)}.",
        "spread them over different minutes (for example crontab(minute=7) instead of "
        "minute=0 for some), or raise the limit (--hotspot-limit) if the workers take "
        "the burst.",
    )


def _period_finding(period: float, same: list[ScheduleEntry], limit: int) -> Finding:
    labels = tuple(entry.label for entry in same)
    return Finding(
        Level.WARNING,
        "hotspot",
        labels,
        f"{len(labels)} entries run every {period:g} s and fire together from the moment "
        f"beat starts (the limit is {limit}): {', '.join(labels)}.",
        "give some of them other periods or crontab schedules at different minutes, or "
        "raise the limit (--hotspot-limit) if the workers take the burst.",
    )
