"""A module no worker may import: importing it leaves a mark in the records database.

The forged-path test names a function here in a message; the worker must reject
the message without importing this module.
"""

from __future__ import annotations

import os

import redis

RECORDS_ENV = "ACELERYCTL_TASKS_RECORDS_URL"

_url = os.environ.get(RECORDS_ENV)
if _url:
    with redis.Redis.from_url(_url) as _client:
        _client.rpush("canary:imported", str(os.getpid()))


def explode(*args: object) -> None:
    """Would leave a mark if ever called."""
    if _url:
        with redis.Redis.from_url(_url) as client:
            client.rpush("canary:called", str(os.getpid()))
