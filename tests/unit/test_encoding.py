"""aceleryctl.wires.encoding: the same text and errors as kombu's serializer
registry and its JSON encoder function, for every serializer kombu ships."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest
from kombu import serialization
from kombu.exceptions import EncodeError, SerializerNotInstalled
from kombu.utils.json import dumps as kombu_json_dumps

from aceleryctl.wires.encoding import envelope_json, serialize_body

BODIES: list[Any] = [
    ((1, 2), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}),
    (["a.b", "default", "2026-12-07T09:00:00+00:00", "é", 3.5], {"k": [None, True]}, {}),
    ((), {"when": datetime.datetime(2026, 12, 7, 9, 0, tzinfo=datetime.UTC)}, {}),
    ((uuid.UUID(int=7), decimal.Decimal("1.5"), b"raw bytes"), {}, {}),
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("name", ["json", "pickle", "yaml", "msgpack"])
def test_serialize_body_is_the_registrys_dumps(body: Any, name: str) -> None:
    try:
        expected = serialization.dumps(body, serializer=name)
    except SerializerNotInstalled:
        pytest.skip(f"{name} is not installed here")
    except EncodeError:  # msgpack cannot encode some of these: the same error below
        with pytest.raises(EncodeError):
            serialize_body(body, name)
        return
    assert serialize_body(body, name) == expected


def test_serialize_body_raw_and_unknown_go_through_the_registry() -> None:
    assert serialize_body(b"abc", "raw") == serialization.dumps(b"abc", serializer="raw")
    with pytest.raises(SerializerNotInstalled):
        serialize_body({"a": 1}, "no-such-serializer")


def test_serialize_body_wraps_the_encoders_error_as_kombu_does() -> None:
    unencodable = ((object(),), {}, {})
    with pytest.raises(EncodeError) as registry:
        serialization.dumps(unencodable, serializer="json")
    with pytest.raises(EncodeError) as ours:
        serialize_body(unencodable, "json")
    assert str(ours.value) == str(registry.value)
    assert isinstance(ours.value.__cause__, TypeError)


def test_envelope_json_is_kombus_json_text() -> None:
    envelope = {
        "body": "eyJhIjogMX0=",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "t", "id": "x", "eta": None, "retries": 0},
        "properties": {"priority": 0, "delivery_info": {"exchange": "", "routing_key": "q"}},
        "unicode": "Grüße \u2603",
        "when": datetime.datetime(2026, 12, 7, 9, 0),
    }
    assert envelope_json(envelope) == kombu_json_dumps(envelope)
