"""The websocket route, and check aceleryctl.W003 (a routed consumer without a usable layer)."""

from __future__ import annotations

import sys

import pytest
from django.test import override_settings

from aceleryctl.checks import check_channel_layer
from aceleryctl.consumers import TaskEventsConsumer
from aceleryctl.routing import websocket_urlpatterns

ROUTED = "tests.django.asgi_fixture.routed"
REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def test_the_route_serves_the_consumer() -> None:
    [route] = websocket_urlpatterns
    match = route.resolve("ws/aceleryctl/tasks/")
    assert match is not None
    assert match.func.consumer_class is TaskEventsConsumer
    assert match.url_name == "aceleryctl-task-events"
    assert route.resolve("ws/aceleryctl/tasks/x/") is None


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [
        ({}, "has no 'default' layer"),
        ({"other": REDIS["default"]}, "has no 'default' layer"),
        (IN_MEMORY, "InMemoryChannelLayer"),
    ],
)
def test_w003_when_the_routed_consumer_has_no_usable_layer(
    layers: dict[str, object], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "aceleryctl.routing", raising=False)
    with override_settings(CHANNEL_LAYERS=layers, ASGI_APPLICATION=ROUTED):
        [warning] = check_channel_layer()
    assert warning.id == "aceleryctl.W003"
    assert fragment in warning.msg
    assert "CHANNEL_LAYERS" in (warning.hint or "")


def test_no_w003_with_a_shared_layer() -> None:
    with override_settings(CHANNEL_LAYERS=REDIS, ASGI_APPLICATION=ROUTED):
        assert check_channel_layer() == []


def test_no_w003_when_the_consumer_is_not_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.django.asgi_fixture  # noqa: F401  (imports aceleryctl.routing first)

    monkeypatch.delitem(sys.modules, "aceleryctl.routing", raising=False)
    for path in ("tests.django.asgi_fixture.unrouted", "no.such.module.app", None):
        with override_settings(CHANNEL_LAYERS={}, ASGI_APPLICATION=path):
            assert check_channel_layer() == [], path


def test_importing_the_routes_counts_as_routed() -> None:
    import aceleryctl.routing  # noqa: F401

    with override_settings(CHANNEL_LAYERS={}):
        assert [w.id for w in check_channel_layer()] == ["aceleryctl.W003"]
