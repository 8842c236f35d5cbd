"""The standard library's JSON encoder with its C encoder made once, not per call.

``json.JSONEncoder.encode`` makes a new C encoder object (``json.encoder.
c_make_encoder``, undocumented) on every call, from the encoder's settings and a
fresh dict of the containers it is inside of (the circular-reference check):
about 1.3 of the 2.3 µs a task message's body takes. :func:`prebuilt_encode` makes
it once, without that dict, which leaves the object stateless, so any thread may
call it at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as json_encoder
from typing import Any

__all__ = ["prebuilt_encode"]


def prebuilt_encode(encoder: json.JSONEncoder) -> Callable[[Any], str] | None:
    """A function that returns ``encoder.encode(value)`` and raises what it raises,
    with the C encoder made once; ``None`` when that is not the same text: no C
    accelerator (another interpreter), ``indent`` set (``encode`` takes the Python
    encoder then), or a subclass with its own ``encode`` or ``iterencode``.

    Without the circular-reference check, a value that contains itself recurses
    until Python's recursion limit; the ``RecursionError`` sends the call to
    ``encoder.encode``, which raises the standard ``ValueError`` ("Circular
    reference detected"), or the ``RecursionError`` of a value nested that deep.
    So ``encoder.default`` may be called twice for a value that fails. Thread-safe.
    """
    make = getattr(json_encoder, "c_make_encoder", None)
    kind = type(encoder)
    indent: Any = encoder.indent  # None unless set (typeshed leaves None out)
    if (
        make is None
        or indent is not None
        or kind.encode is not json.JSONEncoder.encode
        or kind.iterencode is not json.JSONEncoder.iterencode
    ):
        return None
    # JSONEncoder.iterencode's own choice of string escaper for a one-shot call.
    escape = json_encoder.encode_basestring_ascii if encoder.ensure_ascii else (
        json_encoder.encode_basestring
    )  # fmt: skip
    chunks = make(
        None,
        encoder.default,
        escape,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )

    def encode(value: Any) -> str:
        try:
            return "".join(chunks(value, 0))
        except RecursionError:
            return encoder.encode(value)

    return encode
