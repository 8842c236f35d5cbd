"""A 1 ms ticker that records how long the event loop took to wake it up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["Ticker"]


@dataclass
class Ticker:
    """Sleeps 1 ms in a loop until ``stop`` is set, recording the gaps between
    wake-ups in seconds (a gap well above 1 ms is event-loop lag)."""

    gaps: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self.stop.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            self.gaps.append(now - last)
            last = now
