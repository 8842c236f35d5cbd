"""Bounded exponential backoff: the pauses between two polls of a result backend.

Pure: no clock, no sleeping; the caller sleeps. Used by
:mod:`aceleryctl.awaiting.polling` (backends without pub/sub) and by the Redis
path between a lost subscriber connection and its replacement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

__all__ = ["FIRST_DELAY", "MAX_DELAY", "delays"]

#: The first pause, in seconds.
FIRST_DELAY = 0.05
#: The longest pause, in seconds: a result that arrived is seen at most this late.
MAX_DELAY = 1.0


def delays(
    first: float = FIRST_DELAY, factor: float = 2.0, cap: float = MAX_DELAY
) -> Iterator[float]:
    """Pauses in seconds: ``first``, then each ``factor`` times the last, never over ``cap``.

    Endless (the caller's timeout ends the wait). Raises ``ValueError`` when
    ``first`` or ``cap`` is not a positive finite number, ``first > cap``, or
    ``factor < 1``.
    """
    for name, value in (("first", first), ("cap", cap)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    if first > cap:
        raise ValueError(f"first ({first} s) must not exceed cap ({cap} s)")
    if not factor >= 1:
        raise ValueError(f"factor must be at least 1 (a growing pause), not {factor!r}")
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)
