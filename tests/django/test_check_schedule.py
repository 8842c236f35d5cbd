"""``manage.py aceleryctl_check_schedule`` and the system check ``aceleryctl.W006``
against a project whose beat schedule has orphaned, duplicate, crowded and malformed
entries (tests/django/schedule_fixture.py), and, where django-celery-beat installs,
rows of its table."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from aceleryctl.schedules.check import check_orphaned_schedule_entries

ROOT = Path(__file__).resolve().parents[2]
BAD = {"CELERY_APP": "tests.django.schedule_fixture:app", "LOG_FILE": None}
CLEAN = {"CELERY_APP": "tests.django.schedule_fixture:clean", "LOG_FILE": None}


def run(*args: str) -> tuple[str, str, CommandError | None]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("aceleryctl_check_schedule", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


@override_settings(ACELERYCTL=BAD)
def test_every_problem_is_named_with_its_entry_and_fix() -> None:
    out, err, failed = run("--no-database")
    assert failed is not None
    assert "errors" in str(failed)
    # Orphaned, with the close registered name offered.
    assert "'old-report' (beat_schedule) sends the task 'reports.nightlly'" in err
    assert "did you mean 'reports.nightly'?" in err
    assert "Fix: point the entry at a registered task" in err
    # The duplicate pair (a timedelta and seconds, a tuple and a list: the same work);
    # the entry with other arguments is not part of it.
    duplicate = next(line for line in err.splitlines() if "[duplicate]" in line)
    assert "'cleanup' (beat_schedule), 'cleanup-again' (beat_schedule)" in duplicate
    assert "cleanup-other-days" not in duplicate
    assert "runs 2 times each time" in duplicate
    # The malformed entry.
    assert "'no-schedule' (beat_schedule) cannot run: it has no 'schedule'" in err
    # Six entries at midnight, the limit 5: a warning on stdout, every day of the week.
    hotspot = next(line for line in out.splitlines() if "[hotspot]" in line)
    assert hotspot.startswith("WARNING")
    assert "6 entries fire in the same minute" in hotspot
    assert "and 4 more times this week" in hotspot
    assert all(f"'midnight-{i}'" in hotspot for i in range(6))
    assert "12 entries checked (0 disabled or shadowed), 3 errors, 1 warnings" in out


@override_settings(ACELERYCTL=BAD)
def test_the_options_choose_the_checks() -> None:
    _, err, failed = run("--no-database", "--check-hotspots")
    assert failed is not None  # the malformed entry is always an error
    assert "[orphaned]" not in err
    assert "[duplicate]" not in err
    out, err, failed = run("--no-database", "--check-duplicates", "--hotspot-limit", "6")
    assert "[duplicate]" in err
    assert "[orphaned]" not in err
    assert "[hotspot]" not in out
    out, _, _ = run("--no-database", "--check-hotspots", "--hotspot-limit", "6")
    assert "[hotspot]" not in out


@override_settings(ACELERYCTL=CLEAN)
def test_a_clean_schedule_passes_and_verbose_lists_it() -> None:
    out, err, failed = run("--no-database", "--verbose")
    assert failed is None
    assert err == ""
    assert "'nightly-report' (beat_schedule): reports.nightly crontab 0 2 * * *, next " in out
    assert "1 entries checked (0 disabled or shadowed), 0 errors, 0 warnings" in out


@override_settings(ACELERYCTL=CLEAN)
def test_warnings_fail_only_when_asked() -> None:
    assert run("--no-database", "--hotspot-limit", "1")[2] is None
    with override_settings(ACELERYCTL=BAD):
        _, _, failed = run("--no-database", "--check-hotspots", "--fail-on-warnings")
    assert failed is not None
    _, _, failed = run("--hotspot-limit", "0")
    assert failed is not None
    assert "use 1 or more" in str(failed)


def test_the_command_exits_non_zero_for_ci() -> None:
    """As pre-commit and CI run it: a child process, its exit status."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.schedule_settings"}
    done = subprocess.run(
        [sys.executable, "-m", "django", "aceleryctl_check_schedule", "--no-database"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "[orphaned]" in done.stderr
    assert "3 errors" in done.stderr


@override_settings(ACELERYCTL=BAD)
def test_the_system_check_warns_of_orphans_only() -> None:
    messages = check_orphaned_schedule_entries()
    assert [m.id for m in messages] == ["aceleryctl.W006"]
    assert "'old-report' (beat_schedule) sends the task 'reports.nightlly'" in messages[0].msg
    assert messages[0].hint.startswith("Point the entry at a registered task")


@override_settings(ACELERYCTL=CLEAN)
def test_the_system_check_is_quiet_on_a_clean_schedule() -> None:
    assert check_orphaned_schedule_entries() == []


@override_settings(ACELERYCTL={"CELERY_APP": "tests.nowhere:app"})
def test_the_system_check_leaves_an_unloadable_app_to_e002() -> None:
    assert check_orphaned_schedule_entries() == []


# -- django-celery-beat's table (where it installs: Django 5.2 here) ----------------


@pytest.fixture
def periodic_tasks(db: None) -> object:
    beat = pytest.importorskip("django_celery_beat.models")
    every_hour, _ = beat.IntervalSchedule.objects.get_or_create(every=1, period="hours")
    at_two, _ = beat.CrontabSchedule.objects.get_or_create(minute="0", hour="2")
    beat.PeriodicTask.objects.create(name="db-gone", task="reports.removed", interval=every_hour)
    beat.PeriodicTask.objects.create(
        name="db-cleanup", task="reports.cleanup", interval=every_hour, args="[7]"
    )
    beat.PeriodicTask.objects.create(
        name="db-disabled", task="reports.removed", interval=every_hour, enabled=False
    )
    # Same name as a beat_schedule entry: the scheduler overwrites it with that entry.
    beat.PeriodicTask.objects.create(name="nightly-report", task="reports.removed", crontab=at_two)
    beat.PeriodicTask.objects.create(
        name="db-bad-args", task="reports.nightly", crontab=at_two, args="{not json"
    )
    return beat


@override_settings(ACELERYCTL=BAD)
def test_rows_of_django_celery_beat_are_checked_with_beat_schedule(periodic_tasks: object) -> None:
    out, err, failed = run()
    assert failed is not None
    assert "'db-gone' (database) sends the task 'reports.removed'" in err
    assert "db-disabled" not in err + out
    assert "'nightly-report' (database)" not in err  # shadowed by beat_schedule's entry
    duplicate = next(line for line in err.splitlines() if "[duplicate]" in line)
    assert "'cleanup-again' (beat_schedule), 'db-cleanup' (database)" in duplicate
    assert "runs 3 times each time" in duplicate
    assert "'db-bad-args' (database) cannot run: its args are not JSON" in err
    assert "15 entries checked (2 disabled or shadowed)" in out
    # Without the table: beat_schedule alone.
    out, _, _ = run("--no-database")
    assert "12 entries checked" in out


@override_settings(ACELERYCTL=CLEAN)
def test_the_system_check_reads_the_table_only_with_databases(periodic_tasks: object) -> None:
    assert check_orphaned_schedule_entries() == []
    messages = check_orphaned_schedule_entries(databases=["default"])
    assert any("'db-gone' (database)" in m.msg for m in messages)
