"""A proxy that forwards attribute access to an object built (and rebuilt) on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LazyProxy"]


class LazyProxy:
    """Forwards every attribute access to ``factory()``.

    The factory is called on each access, so it must be cheap (the default
    controller's factory returns a cached instance), and the proxy follows the
    instance when it is replaced, as after a change of the ``ACELERYCTL`` setting.
    """

    __slots__ = ("_factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        object.__setattr__(self, "_factory", factory)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the default controller is configured through settings.ACELERYCTL")

    def __repr__(self) -> str:
        return f"<default {self._factory()!r}>"
