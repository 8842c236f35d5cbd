"""Log a problem the first time each kind of it happens in a process, and wrap
signal receivers so that they never raise: the package's one "log once per kind".

Used by the worker side (receivers, execution-time log, progress, emitter), the
correlation receivers and the web side's live ``task.sent`` listener. Works on any
thread; the set of kinds seen is per process and per :class:`OnceLog`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

__all__ = ["OnceLog", "guard", "internal", "once"]

F = TypeVar("F", bound=Callable[..., Any])


class OnceLog:
    """Remembers which kinds of problem were logged, and logs each kind once.

    Thread-safety: every method may be called from any thread. It takes no lock
    (so a forked child can never inherit a held one): two threads reporting a new
    kind at the same instant may both log it, which is harmless.

    Args:
        logger: where the records go.
    """

    __slots__ = ("_seen", "logger")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._seen: set[str] = set()

    def first(self, kind: str) -> bool:
        """``True`` the first time ``kind`` is seen (and remembers it), else ``False``."""
        if kind in self._seen:
            return False
        self._seen.add(kind)
        return True

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` at WARNING the first time ``kind`` happens."""
        if self.first(kind):
            self.logger.warning(message, *args)

    def exception(self, kind: str, message: str, *args: object) -> None:
        """Log at ERROR with the exception being handled, the first time ``kind`` happens."""
        if self.first(kind):
            self.logger.exception(message, *args)

    def forget(self, kinds: Iterable[str]) -> bool:
        """Forget ``kinds`` (they will be logged again); ``True`` if any was known."""
        known = self._seen.intersection(kinds)
        self._seen.difference_update(known)
        return bool(known)

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self) -> frozenset[str]:
        """The kinds logged so far."""
        return frozenset(self._seen)


#: aceleryctl's own trouble in a worker or around live events (never task
#: outcomes, never dispatch failures) is logged here.
internal: Final = OnceLog(logging.getLogger("aceleryctl.emitter"))


def once(kind: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING on ``aceleryctl.emitter`` the first time ``kind`` happens."""
    internal.warning(kind, message, *args)


def guard(kind: str) -> Callable[[F], F]:
    """Decorate a signal receiver so that it never raises: the first exception of
    each ``kind`` is logged with its traceback on ``aceleryctl.emitter``, later ones
    are dropped. The receiver runs on whatever thread sends the signal."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def receiver(*args: Any, **kwargs: Any) -> None:
            try:
                function(*args, **kwargs)
            except Exception:
                internal.exception(kind, "aceleryctl's %s receiver failed", kind)

        return receiver  # type: ignore[return-value]

    return decorate
