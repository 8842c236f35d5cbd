"""``manage.py aceleryctl_check_schedule``: check beat's schedule before beat runs it.

Reads ``beat_schedule`` of the Celery app aceleryctl publishes with and, when
django-celery-beat is installed, its ``PeriodicTask`` rows, then reports:

* ``--check-orphaned-tasks``: entries whose task is not registered (beat would
  send messages no worker runs);
* ``--check-duplicates``: differently named entries sending the same task with the
  same arguments on the same schedule (the work runs twice);
* ``--check-hotspots``: minutes in which more than ``--hotspot-limit`` entries fire.

No ``--check-*`` option runs all three. Malformed entries are always reported.
``--verbose`` lists every entry checked with its next wall-clock run. Exits 1
when anything is an error (orphaned, duplicate, malformed), or with
``--fail-on-warnings`` also for hotspots, so it can run in pre-commit and CI.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aceleryctl.conf import resolve_celery_app
from aceleryctl.schedules.entries import ScheduleEntry, describe_schedule
from aceleryctl.schedules.findings import (
    Finding,
    Level,
    checked_entries,
    duplicates,
    invalid,
    orphaned,
)
from aceleryctl.schedules.hotspots import DEFAULT_LIMIT, firings, hotspots
from aceleryctl.schedules.sources import all_entries, registered_task_names

_CHECKS = ("check_orphaned_tasks", "check_duplicates", "check_hotspots")


class Command(BaseCommand):
    help = "Check Celery beat's schedule: orphaned tasks, duplicate entries, crowded minutes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check-orphaned-tasks", action="store_true", help="entries naming unknown tasks"
        )
        parser.add_argument(
            "--check-duplicates", action="store_true", help="entries that run the same work twice"
        )
        parser.add_argument(
            "--check-hotspots", action="store_true", help="minutes in which many entries fire"
        )
        parser.add_argument(
            "--hotspot-limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"entries allowed in one minute (default {DEFAULT_LIMIT})",
        )
        parser.add_argument(
            "--fail-on-warnings", action="store_true", help="exit 1 on hotspots too"
        )
        parser.add_argument(
            "--verbose", action="store_true", help="list every entry checked, with its next run"
        )
        parser.add_argument(
            "--no-database",
            action="store_true",
            help="ignore django-celery-beat's table even when it is installed",
        )
        parser.add_argument(
            "--database", default=None, help="database alias of django-celery-beat's table"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["hotspot_limit"] < 1:
            raise CommandError(
                f"--hotspot-limit is {options['hotspot_limit']}; use 1 or more entries per minute"
            )
        chosen = {name for name in _CHECKS if options[name]} or set(_CHECKS)
        app = resolve_celery_app()
        entries = all_entries(
            app, database=options["database"], use_database=not options["no_database"]
        )
        running = checked_entries(entries)
        findings: list[Finding] = invalid(running)
        if "check_orphaned_tasks" in chosen:
            findings += orphaned(running, registered_task_names(app))
        if "check_duplicates" in chosen:
            findings += duplicates(running)
        now = datetime.now(app.timezone)
        if "check_hotspots" in chosen:
            findings += hotspots(running, now=now, limit=options["hotspot_limit"])
        if options["verbose"] or options["verbosity"] >= 2:
            self._list(running, now)
        for finding in findings:
            write = self.stderr if finding.level is Level.ERROR else self.stdout
            write.write(str(finding))
        errors = sum(finding.level is Level.ERROR for finding in findings)
        warnings = len(findings) - errors
        skipped = len(entries) - len(running)
        self.stdout.write(
            f"{len(running)} entries checked ({skipped} disabled or shadowed), "
            f"{errors} errors, {warnings} warnings"
        )
        if errors or (warnings and options["fail_on_warnings"]):
            raise CommandError(
                f"the schedule has {errors} errors and {warnings} warnings (see above)"
            )

    def _list(self, running: list[ScheduleEntry], now: datetime) -> None:
        for entry in running:
            upcoming = None
            if entry.schedule is not None:
                upcoming = next(firings(entry.schedule, now, timedelta(days=7)), None)
            when = f", next {upcoming:%a %H:%M}" if upcoming is not None else ""
            self.stdout.write(
                f"{entry.label}: {entry.task} {describe_schedule(entry.schedule)}{when}"
            )
