"""A task message's body and the Redis envelope, serialized as kombu would, with
less work a call (both run once per message on the direct and loop paths).

* :func:`serialize_body` gives what ``kombu.serialization.dumps(body,
  serializer=name)`` gives (content type, content encoding, payload) and raises
  what it raises (kombu's ``EncodeError`` around the encoder's error), calling
  the registered encoder directly instead of through the registry's look-ups and
  error-wrapping context manager.
* kombu's JSON encoder function (``kombu.utils.json.dumps``) makes a new
  ``JSONEncoder`` for every call, and that encoder a new C encoder; :func:`envelope_json`
  and the ``json`` body reuse one of each, made with the same (default) arguments
  (:func:`aceleryctl.compat.stdlib_json.prebuilt_encode`): the text is the same.

Thread-safe: the shared encoder keeps no state between calls. Runs on any thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.exceptions import EncodeError
from kombu.serialization import dumps as registry_dumps
from kombu.utils.json import JSONEncoder
from kombu.utils.json import dumps as kombu_json_dumps

from aceleryctl.compat.kombu_redis import serializer_codec
from aceleryctl.compat.stdlib_json import prebuilt_encode

__all__ = ["envelope_json", "serialize_body"]

_KOMBU_JSON: JSONEncoder = JSONEncoder()
#: ``kombu.utils.json.dumps(value)``, without making an encoder per call.
envelope_json: Callable[[Any], str] = prebuilt_encode(_KOMBU_JSON) or _KOMBU_JSON.encode


def serialize_body(data: Any, name: str) -> tuple[str, str, Any]:
    """``kombu.serialization.dumps(data, serializer=name)``, for a named serializer.

    Raises:
        kombu.exceptions.EncodeError: the encoder failed (its error is the cause).
        kombu.exceptions.SerializerNotInstalled: no encoder is registered as ``name``.
    """
    codec = serializer_codec(name) if name != "raw" else None
    if codec is None:  # raw, unknown (the registry raises) or laid out otherwise
        return registry_dumps(data, serializer=name)
    content_type, content_encoding, encoder = codec
    if encoder is kombu_json_dumps:
        encoder = envelope_json
    try:
        payload = encoder(data)
    except Exception as exc:
        raise EncodeError(exc) from exc
    return content_type, content_encoding, payload
