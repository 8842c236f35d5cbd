"""Batched reads of stored metas: the ``GET``\\ s of one loop turn as one ``MGET``.

A thousand waits starting together each read their task's stored meta once
(to close the race with a task that finished before the subscription). Sent
one by one through a connection pool, they would open as many connections as
were in flight; :class:`BatchedReads` collects the keys asked for during one
loop turn and sends them as ``MGET`` commands of at most :data:`MAX_KEYS` keys,
at most :data:`MAX_IN_FLIGHT` at a time, so a loop needs only a few
connections whatever the number of waits.

Runs on the loop's thread; not thread-safe.
"""

from __future__ import annotations

import asyncio

import redis.asyncio

__all__ = ["MAX_IN_FLIGHT", "MAX_KEYS", "BatchedReads"]

#: Keys per ``MGET``.
MAX_KEYS = 500
#: ``MGET`` commands in flight at once (and so connections used for reading).
MAX_IN_FLIGHT = 4


class BatchedReads:
    """``GET`` many keys through few ``MGET`` commands on ``client``."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._waiting: dict[bytes | str, list[asyncio.Future[bytes | str | None]]] = {}
        self._sender: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def get(self, key: bytes | str) -> bytes | str | None:
        """The value stored at ``key`` (``None`` if none), read in this turn's ``MGET``.

        Raises the client's ``RedisError`` when the ``MGET`` carrying it fails.
        Cancelling the caller abandons its answer, not the others'.
        """
        future: asyncio.Future[bytes | str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return await future

    async def aclose(self) -> None:
        """Cancel the reads in flight; their callers get ``CancelledError``."""
        tasks = [t for t in (self._sender, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for futures in self._waiting.values():
            for future in futures:
                future.cancel()
        self._waiting.clear()

    async def _send(self) -> None:
        await asyncio.sleep(0)  # let this loop turn's other readers ask too
        while self._waiting:
            keys = list(self._waiting)[:MAX_KEYS]
            batch = {key: self._waiting.pop(key) for key in keys}
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._mget(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _mget(
        self, batch: dict[bytes | str, list[asyncio.Future[bytes | str | None]]]
    ) -> None:
        try:
            values = await self._client.mget(list(batch))
        except BaseException as exc:
            for futures in batch.values():
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._slots.release()
        for futures, value in zip(batch.values(), values, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(value)
