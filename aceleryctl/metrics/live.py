"""The live side's figures for metrics: websockets, subscriptions, event drops.

:data:`live_counters` is kept by the websocket consumer on the event loop's
thread (connections accepted and open, closes by code, the subscriptions of each
open connection); exporters read it, and the event emitters' own statistics
(:func:`emitter_totals`), when they collect. The emitters are read only where
the worker side is already loaded: nothing here imports it.
"""

from __future__ import annotations

import sys
import weakref
from collections import Counter
from collections.abc import Sized
from typing import Final

__all__ = ["DROP_REASONS", "LiveCounters", "emitter_totals", "live_counters"]

#: The ``reason`` label of dropped events, each a field of the emitter's statistics.
DROP_REASONS: Final = ("dropped_full", "timed_out", "failed", "dropped_no_layer", "dropped_closed")


class LiveCounters:
    """Websocket counts of one process. Updated on the event loop's thread, read from
    any thread (single integer reads and a dictionary copy)."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted_total = 0
        self.closes: Counter[int] = Counter()
        self._subscriptions: weakref.WeakSet[Sized] = weakref.WeakSet()

    def accepted(self, subscriptions: Sized) -> None:
        """A websocket was accepted; ``subscriptions`` is its live subscription set."""
        self.open += 1
        self.accepted_total += 1
        self._subscriptions.add(subscriptions)

    def gone(self) -> None:
        """An accepted websocket ended."""
        self.open = max(self.open - 1, 0)

    def closed(self, code: int) -> None:
        """The server closed (or refused) a websocket with ``code``."""
        self.closes[code] += 1

    def subscriptions(self) -> int:
        """Tasks followed now, over every open websocket."""
        return sum(len(s) for s in list(self._subscriptions))


live_counters: Final = LiveCounters()


def emitter_totals() -> dict[str, int]:
    """Events sent and dropped (by reason) by this process's event emitters; zeros
    where the worker side is not loaded."""
    totals = dict.fromkeys(("sent", *DROP_REASONS), 0)
    emitter = sys.modules.get("aceleryctl.worker.emitter")
    if emitter is None:
        return totals
    for stats in emitter.live_statistics():
        for key in totals:
            totals[key] += int(getattr(stats, key))
    return totals
