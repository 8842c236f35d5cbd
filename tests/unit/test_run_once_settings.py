"""``ACELERYCTL["RUN_ONCE"]``: defaults, the outbox default, and a message naming the key
to change for each invalid value (also through ``settings_problems``, which the
system checks show)."""

from __future__ import annotations

from typing import Any

import pytest

from aceleryctl._run_once_settings import RunOnceSettings, read_run_once, run_once_problems
from aceleryctl._settings import settings_problems


def test_absent_means_off_with_the_default_ttls() -> None:
    assert read_run_once(None) == RunOnceSettings(False, None, 86_400, 3_600)
    assert read_run_once({}) == RunOnceSettings()
    assert read_run_once({"RUN_ONCE": {}}) == RunOnceSettings()


@pytest.mark.parametrize(
    ("outbox", "enabled", "expected"),
    [
        (None, None, False),
        ({"ENABLED": True}, None, True),
        ({"ENABLED": False}, None, False),
        ({"ENABLED": True}, False, False),  # explicitly off beats the outbox
        (None, True, True),  # usable without the outbox
        ("not a dict", None, False),  # the outbox's own check reports that
    ],
)
def test_enabled_none_follows_the_outbox(outbox: Any, enabled: Any, expected: bool) -> None:
    raw: dict[str, Any] = {"RUN_ONCE": {"ENABLED": enabled}}
    if outbox is not None:
        raw["OUTBOX"] = outbox
    assert read_run_once(raw).enabled is expected


def test_every_key_is_read() -> None:
    raw = {
        "RUN_ONCE": {
            "ENABLED": True,
            "REDIS_URL": "rediss://:pw@cache:6380/4",
            "DONE_TTL": 7 * 86_400,
            "RUNNING_TTL": 600,
        }
    }
    assert read_run_once(raw) == RunOnceSettings(True, "rediss://:pw@cache:6380/4", 604_800, 600)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ([], "ACELERYCTL['RUN_ONCE'] must be a dict, got list"),
        ({"ENABLE": True}, "ACELERYCTL['RUN_ONCE'] has an unknown key 'ENABLE'; the keys are"),
        ({"ENABLED": "yes"}, "ACELERYCTL['RUN_ONCE']['ENABLED'] must be True, False or None"),
        ({"REDIS_URL": "localhost:6379"}, "['REDIS_URL'] must be None (the Celery app's Redis)"),
        ({"REDIS_URL": 6379}, "rediss://, unix://, got a value of type int"),
        ({"REDIS_URL": "http://u:pw@h/0"}, "got a URL with the scheme 'http'"),
        ({"DONE_TTL": 0}, "['DONE_TTL'] must be a whole number of seconds >= 1, got 0"),
        ({"RUNNING_TTL": 1.5}, "['RUNNING_TTL'] must be a whole number of seconds >= 1"),
        ({"RUNNING_TTL": True}, "['RUNNING_TTL'] must be a whole number of seconds >= 1"),
        (
            {"DONE_TTL": 60, "RUNNING_TTL": 3_600},
            "['DONE_TTL'] (60 s) is shorter than ACELERYCTL['RUN_ONCE']['RUNNING_TTL'] "
            "(3600 s): a finished task would be forgotten before a running one; raise DONE_TTL",
        ),
    ],
)
def test_each_problem_names_the_key_to_change(section: Any, fragment: str) -> None:
    raw = {"RUN_ONCE": section}
    [problem] = run_once_problems(raw)
    assert fragment in problem
    assert problem in settings_problems(raw)
    with pytest.raises(ValueError, match="RUN_ONCE"):
        read_run_once(raw)


def test_a_url_in_a_problem_is_never_quoted() -> None:
    [problem] = run_once_problems({"RUN_ONCE": {"REDIS_URL": "http://user:hunter2@cache:6379"}})
    assert "hunter2" not in problem
    assert "got a URL with the scheme 'http'" in problem


def test_several_problems_are_all_reported() -> None:
    raw = {"RUN_ONCE": {"ENABLED": 1, "DONE_TTL": -1, "RUNNING_TTL": "1h"}}
    assert len(run_once_problems(raw)) == 3
    with pytest.raises(ValueError, match=r"ENABLED.*DONE_TTL.*RUNNING_TTL"):
        read_run_once(raw)


def test_run_once_is_a_known_key_of_the_setting() -> None:
    assert settings_problems({"RUN_ONCE": {"ENABLED": False}}) == []
