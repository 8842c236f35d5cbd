"""Storing a progress report in the result backend in one Redis round trip.

``task.update_state(state="PROGRESS", meta=...)`` on Celery's Redis backend costs two
round trips: a ``GET`` of the stored meta (decoded, to skip the write when the task
already succeeded) and a ``MULTI``/``SETEX``/``PUBLISH``/``EXEC`` pipeline, plus a
configuration lookup and the client's per-command bookkeeping. That was most of the
time a progress report blocked its task. :func:`start_progress_write` stores the
same thing with one ``EVALSHA`` of a small Lua script, which Redis runs atomically:

* the stored value is the one ``update_state`` stores: the meta
  ``_get_result_meta`` returns (``status``, ``result``, ``traceback``, ``children``,
  ``date_done``, ``group_id`` and ``parent_id`` when set, the ``result_extended``
  fields when that is on) plus ``task_id``, in the same order, serialized by the
  encoder the backend's serializer (``json``) is registered with; the key is
  ``get_key_for_task``;
* the script reads the key's current value and writes nothing when its ``status``
  is terminal (``SUCCESS``, ``FAILURE`` or ``REVOKED``). Celery skips only
  ``SUCCESS``: a progress report never replaces any terminal state. Check and write
  are atomic, where Celery's ``GET`` then pipeline is not;
* otherwise it runs what Celery's pipeline runs: ``SETEX key <result_expires> value``
  (``SET`` when results do not expire), then ``PUBLISH key value`` (the channel
  ``AsyncResult.get()`` listens on).

The write is sent first and its reply read later (:meth:`ProgressWrite.wait`), so
that the caller can build its event while Redis works.

Only Celery's own ``RedisBackend`` (or ``SentinelBackend``) with none of the methods
involved overridden, the ``json`` serializer, no compression, and a task whose
``update_state`` is Celery's take this path. Everything else, and every case the
script cannot decide (a stored value that is not JSON, or larger than 64 KiB),
tells the caller to fall back to ``update_state``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from celery.app.task import Task
from celery.backends.redis import RedisBackend
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from redis.exceptions import NoScriptError, ResponseError

from aceleryctl.compat.celery_worker import (
    REDIS_RESULT_STORE_METHODS,
    max_stored_value_size,
    result_meta,
)
from aceleryctl.compat.kombu_redis import new_pool_connection, serializer_encoder

__all__ = ["ProgressWrite", "start_progress_write", "store_progress"]

logger = logging.getLogger("aceleryctl.signals")

PROGRESS_STATE: Final = "PROGRESS"

# KEYS[1]: the task's meta key. ARGV[1]: the encoded meta; ARGV[2]: seconds to
# expire (0: never). Returns 1 written, 0 skipped (terminal), -1 undecided.
_SCRIPT: Final = """\
local current = redis.call('GET', KEYS[1])
if current then
  if string.len(current) > 65536 then return -1 end
  local ok, meta = pcall(cjson.decode, current)
  if not ok or type(meta) ~= 'table' then return -1 end
  local status = meta['status']
  if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then return 0 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

_TIME_LIMITS: Final = (SoftTimeLimitExceeded, TimeLimitExceeded)


def _json_encoder(backend: Any) -> Callable[[Any], Any]:
    """What ``backend.encode`` comes down to for the ``json`` serializer without
    compression: the encoder kombu's registry holds for ``json``, called directly
    (the registry's lookup and error wrapping cost more than the encoding). The
    backend's own ``encode`` when the registry is not laid out as expected."""
    encoder: Callable[[Any], Any] | None = serializer_encoder("json")
    return encoder if encoder is not None else backend.encode


class _Writer:
    """The one-round-trip progress write of one backend instance (module docstring).

    It keeps connections of its own, made like those of the backend's pool (same
    class and arguments: server, database, credentials, TLS, timeouts): as many as
    threads have written at the same moment, each reused once its reply is read. A
    command through the client costs about twice the CPU time (the pool's
    bookkeeping, the retry wrapper, instrumentation); every failure here falls back
    to ``update_state``, whose client retries.
    """

    __slots__ = (
        "__weakref__",
        "_idle",
        "_pid",
        "backend",
        "client",
        "encode",
        "extended",
        "max_value",
        "sha",
    )

    def __init__(self, backend: Any) -> None:
        """Load the script into the backend's server (one round trip).

        Raises:
            redis.exceptions.ResponseError: the server refuses scripts.
            redis.exceptions.RedisError: the round trip failed.
        """
        self.backend: Any = backend  # celery's stubs lack the methods used here
        self.client: Any = backend.client
        self.encode = _json_encoder(backend)
        # Read once, as the backend reads its other settings: Celery looks it up on
        # every store, which costs more than the rest of building the meta.
        self.extended = bool(backend.app.conf.find_value_for_key("extended", "result"))
        self.max_value = max_stored_value_size(backend)  # a class constant
        self.sha: str = self.client.script_load(_SCRIPT)
        self._idle: list[Any] = []  # connections of this writer's, not in use
        self._pid = os.getpid()

    def meta(self, request: Any, task_id: str, result: Any) -> dict[str, Any]:
        """The meta Celery stores for ``result`` in state ``PROGRESS``: what
        ``_get_result_meta`` returns, with ``task_id`` added. Built here for the
        plain case, in Celery's key order; with ``result_extended``, by Celery."""
        backend = self.backend
        if self.extended:
            meta: dict[str, Any] = result_meta(backend, result, PROGRESS_STATE, request)
        else:
            meta = {
                "status": PROGRESS_STATE,
                "result": result,
                "traceback": None,
                "children": backend.current_task_children(request),
                "date_done": None,  # set for ready states only
            }
            if request and getattr(request, "group", None):
                meta["group_id"] = request.group
            if request and getattr(request, "parent_id", None):
                meta["parent_id"] = request.parent_id
        meta["task_id"] = task_id
        return meta

    def start(self, request: Any, task_id: str, meta: dict[str, Any]) -> ProgressWrite | None:
        """Send the write of ``meta`` as the ``PROGRESS`` state of ``task_id``.

        Blocks the calling thread only to send (and to connect, the first time).

        Returns:
            the write on its way, or ``None`` for "use ``update_state``" (the value
            is larger than Celery's Redis backend accepts).

        Raises:
            redis.exceptions.RedisError: sending failed.
        """
        backend = self.backend
        value = self.encode(self.meta(request, task_id, backend.encode_result(meta, "PROGRESS")))
        if isinstance(value, str) and len(value) > self.max_value:
            return None
        expires = backend.expires
        ttl = expires if isinstance(expires, int) and expires > 0 else 0
        command = ("EVALSHA", self.sha, 1, backend.get_key_for_task(task_id), value, ttl)
        return ProgressWrite(self, command, self.send(command))

    def send(self, command: tuple[Any, ...]) -> Any:
        """Send ``command`` on an idle connection of this writer's (or a new one),
        which is the caller's until it is passed to :meth:`receive`.

        Raises:
            redis.exceptions.RedisError: sending failed (the connection is dropped).
        """
        pid = os.getpid()
        if self._pid != pid:  # a forked child: the parent's connections are not its own
            self._idle, self._pid = [], pid
        try:
            connection = self._idle.pop()  # atomic: threads never share a connection
        except IndexError:
            connection = new_pool_connection(self.client.connection_pool)
        try:
            connection.send_command(*command)
        except BaseException:
            connection.disconnect()
            raise
        return connection

    def receive(self, connection: Any) -> Any:
        """Read the reply to what :meth:`send` sent on ``connection``, then take the
        connection back. Blocks the calling thread until the reply arrives (bounded
        by the pool's socket timeout).

        Raises:
            redis.exceptions.ResponseError: the server answered with an error.
            redis.exceptions.RedisError: reading failed (the connection is dropped).
        """
        try:
            reply = connection.read_response()
        except ResponseError:  # an error reply: the connection is still in step
            self._idle.append(connection)
            raise
        except BaseException:  # anything else, a time limit included: out of step
            connection.disconnect()
            raise
        self._idle.append(connection)
        return reply


class ProgressWrite:
    """A progress write sent to Redis, its reply not read yet: call :meth:`wait`
    exactly once, on the thread that started it."""

    __slots__ = ("_command", "_connection", "_writer")

    def __init__(self, writer: _Writer, command: tuple[Any, ...], connection: Any) -> None:
        self._writer = writer
        self._command = command
        self._connection = connection

    def wait(self) -> bool:
        """Read the reply. Blocks the calling thread until it arrives (bounded by the
        backend's socket timeout).

        Returns:
            ``True`` when the report was handled: stored, or deliberately not
            stored because the task's stored state is terminal. ``False`` when the
            caller must call ``update_state`` itself (the stored value could not be
            read, or the round trip failed: ``update_state``'s client retries).

        Raises:
            celery.exceptions.SoftTimeLimitExceeded, TimeLimitExceeded: the task's
                time limit struck meanwhile (nothing else is raised).
        """
        writer = self._writer
        try:
            try:
                reply = writer.receive(self._connection)
            except NoScriptError:  # the server restarted, or its scripts were flushed
                writer.sha = writer.client.script_load(_SCRIPT)
                command = (self._command[0], writer.sha, *self._command[2:])
                reply = writer.receive(writer.send(command))
            return int(reply) >= 0
        except _TIME_LIMITS:
            raise
        except Exception:
            logger.debug("aceleryctl's one-round-trip progress write failed", exc_info=True)
            return False


#: Per backend instance: its writer, or ``None`` when it stores through update_state.
_writers: weakref.WeakKeyDictionary[Any, _Writer | None] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


def _eligible(task: Any, backend: Any) -> bool:
    if not isinstance(backend, RedisBackend):
        return False
    if getattr(type(task), "update_state", None) is not Task.update_state:
        return False
    kind = type(backend)
    if any(
        getattr(kind, name, None) is not getattr(RedisBackend, name)
        for name in REDIS_RESULT_STORE_METHODS
    ):
        return False
    serializer = getattr(backend, "serializer", None)
    return serializer == "json" and not getattr(backend, "compression", None)


def _writer_for(task: Any, backend: Any) -> _Writer | None:
    """The writer of ``backend``, made on first use; ``None``: use update_state.

    Raises:
        redis.exceptions.RedisError: loading the script failed for a reason other
            than the server refusing scripts (nothing is cached: the next report
            tries again).
    """
    try:
        return _writers[backend]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: not a backend this module knows
        return None
    with _writers_lock:
        if backend in _writers:
            return _writers[backend]
        writer: _Writer | None = None
        if _eligible(task, backend):
            try:
                writer = _Writer(backend)
            except ResponseError as exc:  # scripting disabled, or not supported
                logger.info(
                    "aceleryctl stores progress through update_state: the result "
                    "backend refused its script (%s)",
                    exc,
                )
        _writers[backend] = writer
        return writer


def start_progress_write(task: Any, task_id: str, meta: dict[str, Any]) -> ProgressWrite | None:
    """Send the write that stores ``meta`` as the ``PROGRESS`` state of ``task_id``,
    as ``task.update_state(task_id=task_id, state="PROGRESS", meta=meta)`` would
    (module docstring); finish it with :meth:`ProgressWrite.wait`.

    Runs on the task's thread; blocks it only to send the command (the first call
    for a backend also loads the script, one round trip).

    Returns:
        the write on its way, or ``None`` when the caller must call
        ``update_state`` itself: a backend or task this path does not reproduce, or
        a failure to send.

    Raises:
        celery.exceptions.SoftTimeLimitExceeded, TimeLimitExceeded: the task's time
            limit struck meanwhile (nothing else is raised).
    """
    try:
        writer = _writer_for(task, task.backend)
        return None if writer is None else writer.start(task.request, task_id, meta)
    except _TIME_LIMITS:
        raise
    except Exception:
        logger.debug("aceleryctl's one-round-trip progress write failed", exc_info=True)
        return None


def store_progress(task: Any, task_id: str, meta: dict[str, Any]) -> bool:
    """:func:`start_progress_write`, then wait for it: ``True`` when the report was
    handled, ``False`` when the caller must call ``update_state`` itself.

    Runs on the task's thread and blocks it for one round trip (bounded by the
    backend's socket timeout).

    Raises:
        celery.exceptions.SoftTimeLimitExceeded, TimeLimitExceeded: the task's time
            limit struck meanwhile (nothing else is raised).
    """
    write = start_progress_write(task, task_id, meta)
    return write is not None and write.wait()
