"""The real controller's on-commit dispatch against a real SQLite transaction.

The broker is kombu's in-memory transport (real message building, no network);
tests/integration repeats this against Redis and a real worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from celery import Celery, group
from django.contrib.auth.models import Group
from django.db import transaction

from aceleryctl import AsyncCeleryController
from tests._support.waiting import wait_until

WAIT = 10.0


def drain(app: Celery) -> list[str]:
    ids = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue("celery")
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            ids.append(message.headers["id"])
            message.ack()
        simple.close()
    return ids


@pytest.fixture
def app() -> Celery:
    app = Celery("commit", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name="commit.touch", shared=False)
    def touch(pk: int) -> int:
        return pk

    drain(app)
    return app


@pytest.fixture
def ctl(app: Celery) -> Iterator[AsyncCeleryController]:
    controller = AsyncCeleryController(app, max_workers=1)
    yield controller
    controller.sync.close()


@pytest.mark.django_db(transaction=True)
def test_sync_commit_publishes_after_commit_only(app: Celery, ctl: AsyncCeleryController) -> None:
    seen: list[str] = []
    with transaction.atomic():
        row = Group.objects.create(name="committed")
        result = ctl.sync.apply_async_on_commit(app.tasks["commit.touch"], (row.pk,))
        assert drain(app) == []  # nothing before the commit
    assert wait_until(lambda: seen.extend(drain(app)) or result.id in seen, timeout=WAIT)
    assert seen == [result.id]


@pytest.mark.django_db(transaction=True)
def test_sync_rollback_never_publishes(app: Celery, ctl: AsyncCeleryController) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        ctl.sync.delay_on_commit(app.tasks["commit.touch"], 1)
        raise RuntimeError("roll back")
    # Prove absence: a later dispatch through the same pool lands, the deferred one never.
    sentinel = ctl.sync.delay(app.tasks["commit.touch"], 2)
    ctl.sync.close()
    assert drain(app) == [sentinel.id]


@pytest.mark.django_db(transaction=True)
def test_autocommit_publishes_at_once(app: Celery, ctl: AsyncCeleryController) -> None:
    result = ctl.sync.delay_on_commit(app.tasks["commit.touch"], 3)
    assert drain(app) == [result.id]


@pytest.mark.django_db(transaction=True)
def test_async_on_commit_follows_the_sync_transaction(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    async def dispatch(pk: int) -> Any:
        return await ctl.delay_on_commit(app.tasks["commit.touch"], pk)

    with transaction.atomic():
        row = Group.objects.create(name="async")
        result = async_to_sync(dispatch)(row.pk)
        assert drain(app) == []
    seen: list[str] = []
    assert wait_until(lambda: seen.extend(drain(app)) or result.id in seen, timeout=WAIT)

    with pytest.raises(RuntimeError), transaction.atomic():
        async_to_sync(dispatch)(99)
        raise RuntimeError("roll back")
    sentinel = ctl.sync.delay(app.tasks["commit.touch"], 4)
    ctl.sync.close()
    assert drain(app) == [sentinel.id]


@pytest.mark.django_db(transaction=True)
async def test_async_autocommit_publishes_under_the_deadline(
    app: Celery, ctl: AsyncCeleryController
) -> None:
    result = await ctl.delay_on_commit(app.tasks["commit.touch"], 5)
    assert drain(app) == [result.id]


def test_canvas_is_refused_for_on_commit(app: Celery, ctl: AsyncCeleryController) -> None:
    with pytest.raises(TypeError, match="on-commit dispatch needs a task"):
        ctl.sync.delay_on_commit(group(app.tasks["commit.touch"].s(1)))
