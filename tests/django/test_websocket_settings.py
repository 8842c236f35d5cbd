"""The websocket keys of ACELERYCTL: validated like the rest, read per connection."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from aceleryctl import conf
from aceleryctl.checks import check_settings


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"WEBSOCKET_ALLOWED_ORIGINS": "https://a.example"}, "WEBSOCKET_ALLOWED_ORIGINS"),
        ({"WEBSOCKET_ALLOWED_ORIGINS": ["a.example"]}, "WEBSOCKET_ALLOWED_ORIGINS"),
        ({"WEBSOCKET_ALLOWED_ORIGINS": ["https://a.example/"]}, "no trailing slash"),
        ({"WEBSOCKET_MAX_FRAME_BYTES": 0}, "WEBSOCKET_MAX_FRAME_BYTES"),
        ({"WEBSOCKET_MAX_SUBSCRIPTIONS": 1.5}, "WEBSOCKET_MAX_SUBSCRIPTIONS"),
        ({"SNAPSHOT_TIMEOUT": -1}, "SNAPSHOT_TIMEOUT"),
    ],
)
def test_each_problem_names_the_key(value: dict[str, Any], fragment: str) -> None:
    with override_settings(ACELERYCTL=value):
        errors = check_settings()
        assert any(fragment in e.msg for e in errors), [e.msg for e in errors]
        with pytest.raises(ImproperlyConfigured, match=fragment):
            conf.load_websocket_settings()


def test_defaults_and_overrides() -> None:
    with override_settings(ACELERYCTL=None, ALLOWED_HOSTS=["app.example"]):
        assert conf.load_websocket_settings() == conf.WebsocketSettings(
            allowed_hosts=("app.example",)
        )
    value = {
        "WEBSOCKET_ALLOWED_ORIGINS": ["HTTPS://App.Example", "*"],
        "WEBSOCKET_MAX_FRAME_BYTES": 1024,
        "WEBSOCKET_MAX_SUBSCRIPTIONS": 3,
        "SNAPSHOT_TIMEOUT": 1,
    }
    with override_settings(ACELERYCTL=value):
        assert check_settings() == []
        loaded = conf.load_websocket_settings()
    assert loaded.allowed_origins == ("https://app.example", "*")
    assert (loaded.max_frame_bytes, loaded.max_subscriptions, loaded.snapshot_timeout) == (
        1024,
        3,
        1.0,
    )


def test_debug_without_allowed_hosts_allows_localhost_like_django() -> None:
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert conf.load_websocket_settings().allowed_hosts == (".localhost", "127.0.0.1", "[::1]")
