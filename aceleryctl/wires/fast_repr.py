"""``argsrepr`` without ``saferepr``'s cost, where a plain ``repr`` provably gives the same text.

Celery puts ``saferepr(args)`` and ``saferepr(kwargs)`` in every message's
headers; its depth-limited walk costs more than the rest of the header. For the
flat argument lists most calls have, :func:`fast_repr` returns ``repr()``'s text,
which a property test (``tests/unit/test_direct.py``) proves equal to
``saferepr``'s; anything else gets ``None`` and the caller uses ``saferepr``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["fast_repr"]

_SCALARS: Final = (int, float, type(None))


def fast_repr(value: tuple[Any, ...] | dict[str, Any], limit: int) -> str | None:
    """``repr(value)`` when it provably equals Celery's ``saferepr(value, limit)``.

    True for flat tuples and dicts of ints, floats, ``None`` and short printable
    ASCII strings without quotes or backslashes, whose repr fits ``limit``
    characters; ``None`` otherwise (the caller then uses ``saferepr``, which
    escapes other characters its own way). Runs on any thread.
    """
    if not value and type(value) in (tuple, dict):  # no call
        text = "()" if type(value) is tuple else "{}"
        return text if len(text) < limit // 2 else None
    if isinstance(value, tuple):
        items: Any = value
    elif type(value) is dict:
        if not all(type(k) is str for k in value):
            return None
        items = (*value, *value.values())  # the keys are plain text too
    else:
        return None
    for item in items:
        kind = type(item)
        if kind is str:
            # Quotes and backslashes: saferepr quotes and escapes them unlike repr.
            if not (
                len(item) < 64
                and item.isascii()
                and item.isprintable()
                and "'" not in item
                and "\\" not in item
            ):
                return None
        elif kind not in _SCALARS:
            return None
    text = repr(value)
    return text if len(text) < limit // 2 else None
