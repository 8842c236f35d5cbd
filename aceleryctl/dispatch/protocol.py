"""The controller protocols: what every controller offers, checked by the type checker.

:class:`Controller` is what async code calls: the async controller
(:class:`aceleryctl.AsyncCeleryController`) and the recording one
(:class:`aceleryctl.testing.RecordingController`) both satisfy it.
:class:`SyncController` is its blocking twin, satisfied by the sync facade and
the recording controller's ``sync``. Code that takes "a controller" should
annotate with these, so that tests can hand it a recording controller and the
type checker proves the swap is safe (``tests/typing/api.py`` checks all four).

Two protocols, not one: the same method names return awaitables on one side and
values on the other, which one Python protocol cannot express.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, overload

from celery import Celery
from celery.result import AsyncResult, EagerResult

from aceleryctl.exceptions import TaskDispatchError

__all__ = ["Controller", "SyncController"]


class SyncController(Protocol):
    """The blocking dispatch API (legacy sync views, management commands)."""

    @property
    def app(self) -> Celery: ...

    def delay(self, task: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    def apply_async(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any: ...

    def send_task(
        self,
        name: str,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]: ...

    def apply(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[Any]: ...

    @overload
    def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: Literal[False] = ..., **kwargs: Any
    ) -> tuple[Literal[True], Any]: ...

    @overload
    def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    def delay_on_commit(self, task: Any, /, *args: Any, **kwargs: Any) -> AsyncResult[Any]: ...

    def apply_async_on_commit(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]: ...

    def statistics(self) -> Any: ...

    def health(self) -> dict[str, Any]: ...

    def close(self, timeout: float | None = None) -> bool: ...


class Controller(Protocol):
    """The async dispatch API: every method that talks to a broker is a coroutine."""

    @property
    def app(self) -> Celery: ...

    @property
    def sync(self) -> SyncController: ...

    async def delay(self, task: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    async def apply_async(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any: ...

    async def send_task(
        self,
        name: str,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]: ...

    async def apply(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[Any]: ...

    @overload
    async def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: Literal[False] = ..., **kwargs: Any
    ) -> tuple[Literal[True], Any]: ...

    @overload
    async def safe_execute(
        self, task: Any, /, *args: Any, suppress_exceptions: bool, **kwargs: Any
    ) -> tuple[Literal[True], Any] | tuple[Literal[False], TaskDispatchError]: ...

    async def delay_on_commit(
        self, task: Any, /, *args: Any, **kwargs: Any
    ) -> AsyncResult[Any]: ...

    async def apply_async_on_commit(
        self,
        task: Any,
        /,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]: ...

    def statistics(self) -> Any: ...

    def health(self) -> dict[str, Any]: ...

    async def aclose(self, timeout: float | None = None) -> bool: ...
