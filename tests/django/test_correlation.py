"""Correlation ids: the middleware (sync and async), the context variable, the filter,
and reading the header from what Celery's signals hand out."""

from __future__ import annotations

import asyncio
import logging
import types

import pytest
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from aceleryctl.correlation import (
    CORRELATION_HEADER,
    CorrelationIdFilter,
    CorrelationIdMiddleware,
    correlation_id_from,
    current_correlation_id,
    new_correlation_id,
    use_correlation_id,
)


def request(header: str | None = None) -> HttpRequest:
    extra = {} if header is None else {"HTTP_X_CORRELATION_ID": header}
    return RequestFactory().get("/", **extra)  # type: ignore[arg-type]


def test_a_sane_incoming_id_is_used_for_the_request_and_echoed() -> None:
    seen: list[str | None] = []

    def view(req: HttpRequest) -> HttpResponse:
        seen.append(current_correlation_id())
        return HttpResponse("ok")

    middleware = CorrelationIdMiddleware(view)
    assert not iscoroutinefunction(middleware)
    response = middleware(request("abc-123.X_y"))
    assert seen == ["abc-123.X_y"]
    assert response["X-Correlation-ID"] == "abc-123.X_y"
    assert current_correlation_id() is None  # restored after the request


@pytest.mark.parametrize(
    "header", [None, "", "x" * 129, "has space", "semi;colon", "new\nline", "ünï"]
)
def test_a_missing_or_odd_incoming_id_is_replaced(header: str | None) -> None:
    seen: list[str | None] = []

    def view(req: HttpRequest) -> HttpResponse:
        seen.append(current_correlation_id())
        assert req.correlation_id == seen[0]  # type: ignore[attr-defined]
        return HttpResponse("ok")

    response = CorrelationIdMiddleware(view)(request(header))
    assert seen[0] is not None
    assert seen[0] != header
    assert response["X-Correlation-ID"] == seen[0]
    assert len(seen[0]) == 32
    int(seen[0], 16)


def test_the_longest_sane_id_is_kept() -> None:
    longest = "a" * 128
    response = CorrelationIdMiddleware(lambda r: HttpResponse())(request(longest))
    assert response["X-Correlation-ID"] == longest


async def test_the_async_path_keeps_the_id_across_awaits_and_sync_to_async() -> None:
    seen: list[str | None] = []

    async def view(req: HttpRequest) -> HttpResponse:
        seen.append(current_correlation_id())
        await asyncio.sleep(0)
        seen.append(await sync_to_async(current_correlation_id)())
        return HttpResponse("ok")

    middleware = CorrelationIdMiddleware(view)
    assert iscoroutinefunction(middleware)
    response = await middleware(request("async-1"))
    assert seen == ["async-1", "async-1"]
    assert response["X-Correlation-ID"] == "async-1"
    assert current_correlation_id() is None


async def test_concurrent_requests_do_not_see_each_others_id() -> None:
    release = asyncio.Event()
    seen: dict[str, str | None] = {}

    async def view(req: HttpRequest) -> HttpResponse:
        await release.wait()
        seen[req.META["HTTP_X_CORRELATION_ID"]] = current_correlation_id()
        return HttpResponse("ok")

    middleware = CorrelationIdMiddleware(view)
    calls = [asyncio.create_task(middleware(request(f"req-{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*calls)
    assert seen == {f"req-{i}": f"req-{i}" for i in range(20)}


def test_the_id_is_restored_when_the_view_raises() -> None:
    def view(req: HttpRequest) -> HttpResponse:
        raise RuntimeError("view failed")

    with pytest.raises(RuntimeError, match="view failed"):
        CorrelationIdMiddleware(view)(request("boom-1"))
    assert current_correlation_id() is None


def test_use_correlation_id_nests_and_refuses_odd_values() -> None:
    with use_correlation_id("outer") as outer:
        assert outer == current_correlation_id() == "outer"
        with use_correlation_id("not sane!") as inner:
            assert inner is None
            assert current_correlation_id() is None
        assert current_correlation_id() == "outer"
    assert current_correlation_id() is None


def test_new_ids_are_uuid4_hex() -> None:
    ids = {new_correlation_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_filter_adds_the_current_id_or_a_dash() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert CorrelationIdFilter().filter(record)
    assert record.correlation_id == "-"  # type: ignore[attr-defined]
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    with use_correlation_id("log-1"):
        CorrelationIdFilter().filter(record)
    assert record.correlation_id == "log-1"  # type: ignore[attr-defined]
    record.correlation_id = "given"  # type: ignore[attr-defined]
    CorrelationIdFilter().filter(record)
    assert record.correlation_id == "given"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("carrier", "expected"),
    [
        ({CORRELATION_HEADER: "from-headers"}, "from-headers"),
        ({"correlation_id": "celery-owns-this"}, None),
        ({CORRELATION_HEADER: "bad value"}, None),
        ({CORRELATION_HEADER: 5}, None),
        (types.SimpleNamespace(**{CORRELATION_HEADER: "attr"}), "attr"),
        (types.SimpleNamespace(headers={CORRELATION_HEADER: "in-headers"}), "in-headers"),
        (types.SimpleNamespace(request_dict={CORRELATION_HEADER: "in-dict"}), "in-dict"),
        (types.SimpleNamespace(headers=None, request_dict=None), None),
        (None, None),
        (object(), None),
    ],
)
def test_the_id_is_read_from_what_celery_hands_out(carrier: object, expected: str | None) -> None:
    assert correlation_id_from(carrier) == expected


def test_reading_never_raises() -> None:
    class Hostile:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(name)

    assert correlation_id_from(Hostile()) is None
