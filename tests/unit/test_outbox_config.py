"""``ACELERYCTL["OUTBOX"]``: every bad value named with the key to change, the
defaults, and the backoff between a row's attempts (seconds)."""

from __future__ import annotations

import pytest

from aceleryctl._settings import settings_problems
from aceleryctl.outbox.config import OutboxSettings, outbox_problems


def test_absent_means_off_and_the_defaults_are_documented_values() -> None:
    assert outbox_problems(None) == []
    conf = OutboxSettings()
    assert (conf.enabled, conf.durable_by_default, conf.database, conf.relay) == (
        False,
        False,
        "default",
        "command",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1], "ACELERYCTL['OUTBOX'] must be a dict, got list"),
        ({"ENABLE": True}, "unknown key 'ENABLE'; the keys are ENABLED, DURABLE_BY_DEFAULT"),
        ({"ENABLED": "yes"}, "['ENABLED'] must be True or False, got 'yes'"),
        ({"BATCH_SIZE": 0}, "['BATCH_SIZE'] must be a whole number >= 1, got 0"),
        ({"MAX_ATTEMPTS": True}, "['MAX_ATTEMPTS'] must be a whole number >= 1, got True"),
        ({"POLL_INTERVAL": -1}, "['POLL_INTERVAL'] must be a finite number of seconds"),
        ({"HANDOFF_GRACE": float("inf")}, "['HANDOFF_GRACE'] must be a finite number"),
        ({"DATABASE": ""}, "['DATABASE'] must be a database alias from DATABASES"),
        ({"RELAY": "thread"}, "['RELAY'] must be 'command' or 'in_process', got 'thread'"),
        (
            {"RETRY_BACKOFF": 10, "RETRY_BACKOFF_MAX": 5},
            "['RETRY_BACKOFF'] must not exceed 'RETRY_BACKOFF_MAX'",
        ),
    ],
)
def test_each_bad_value_names_its_key(raw: object, expected: str) -> None:
    [problem] = outbox_problems(raw)
    assert expected in problem
    assert expected in " ".join(settings_problems({"OUTBOX": raw}))


def test_backoff_doubles_per_attempt_up_to_its_cap() -> None:
    conf = OutboxSettings(retry_backoff=0.5, retry_backoff_max=3.0)
    assert [conf.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert conf.backoff(10_000) == 3.0  # no overflow
