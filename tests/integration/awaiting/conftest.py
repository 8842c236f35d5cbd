"""Fixtures for the awaiting tests: each test's loop closes its Redis endpoints.

The session's redis-server and workers come from ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import pytest

from aceleryctl.awaiting import aclose_endpoints


@pytest.fixture(autouse=True)
async def closed_endpoints() -> AsyncIterator[None]:
    """Close the ``redis.asyncio`` connections the test's loop opened, after the test."""
    yield
    await aclose_endpoints()
    gc.collect()
