"""aceleryctl.testing: the recording controller behaves like the real one, minus the broker."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from celery import Celery, group
from celery.result import AsyncResult, EagerResult
from django.db import transaction

import aceleryctl
import aceleryctl.sync
from aceleryctl.testing import ManualClock, RecordedDispatch, RecordingController, recording


@pytest.fixture
def app() -> Celery:
    app = Celery("rec", broker="memory://", backend="cache+memory://", set_as_current=False)

    @app.task(name="rec.mul", shared=False)
    def mul(x: int, y: int) -> int:
        return x * y

    return app


async def test_recording_swaps_both_default_facades(app: Celery) -> None:
    mul = app.tasks["rec.mul"]
    with recording(app) as rec:
        result = await aceleryctl.controller.delay(mul, 2, y=3)
        await aceleryctl.controller.apply_async(mul, (1, 2), countdown=5, dispatch_timeout=1)
        await sync_to_async(aceleryctl.sync.controller.send_task)("other.task", [1])
    assert isinstance(result, AsyncResult)
    assert rec.outbox == [
        RecordedDispatch("delay", "rec.mul", result.id, (2,), {"y": 3}, {}),
        RecordedDispatch(
            "apply_async", "rec.mul", rec.outbox[1].task_id, (1, 2), {}, {"countdown": 5}
        ),
        RecordedDispatch("send_task", "other.task", rec.outbox[2].task_id, (1,), {}, {}),
    ]
    assert aceleryctl.controller is not rec  # the proxy is back on the real default
    assert not isinstance(aceleryctl.controller._factory(), RecordingController)  # type: ignore[attr-defined]


def test_eager_mode_runs_the_task(app: Celery) -> None:
    with recording(app, eager=True) as rec:
        result = aceleryctl.sync.controller.delay(app.tasks["rec.mul"], 6, 7)
    assert isinstance(result, EagerResult)
    assert result.get() == 42
    assert [d.task_name for d in rec.outbox] == ["rec.mul"]


async def test_recording_validates_like_the_real_controller(app: Celery) -> None:
    rec = RecordingController(app)
    with pytest.raises(TypeError, match="task must be a Celery task"):
        await rec.delay(3)
    with pytest.raises(TypeError, match="on-commit dispatch needs"):
        await rec.delay_on_commit(group(app.tasks["rec.mul"].s(1, 2)))
    assert rec.outbox == []


@pytest.mark.django_db(transaction=True)
def test_on_commit_is_recorded_at_commit_and_dropped_on_rollback(app: Celery) -> None:
    rec = RecordingController(app)
    mul = app.tasks["rec.mul"]
    with transaction.atomic():
        committed = rec.sync.delay_on_commit(mul, 1, 1)
        assert rec.outbox == []
    assert [d.task_id for d in rec.outbox] == [committed.id]
    assert rec.outbox[0].on_commit
    with pytest.raises(RuntimeError, match="undo"), transaction.atomic():
        rec.sync.delay_on_commit(mul, 2, 2)
        raise RuntimeError("undo")
    assert len(rec.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_async_on_commit_inside_a_sync_atomic_block(app: Celery) -> None:
    rec = RecordingController(app)

    async def dispatch() -> Any:
        return await rec.delay_on_commit(app.tasks["rec.mul"], 3, 3)

    with transaction.atomic():
        result = async_to_sync(dispatch)()
        assert rec.outbox == []
    assert [d.task_id for d in rec.outbox] == [result.id]


def test_manual_clock() -> None:
    clock = ManualClock(10.0)
    assert clock() == 10.0
    clock.advance(2.5)
    assert clock() == 12.5
    with pytest.raises(ValueError, match=r"negative|backwards|>= 0"):
        clock.advance(-1)


async def test_recording_sync_facade_refuses_on_an_event_loop(app: Celery) -> None:
    from aceleryctl.exceptions import AsyncContextError

    rec = RecordingController(app)
    with pytest.raises(AsyncContextError, match=r"await aceleryctl\.controller\.delay"):
        rec.sync.delay(app.tasks["rec.mul"], 1, 2)
    assert rec.outbox == []


@pytest.mark.django_db(transaction=True)
def test_eager_on_commit_runs_the_task_at_commit(app: Celery) -> None:
    ran: list[int] = []

    @app.task(name="rec.note", shared=False)
    def note(x: int) -> int:
        ran.append(x)
        return x

    rec = RecordingController(app, eager=True)
    with transaction.atomic():
        rec.sync.apply_async_on_commit(note, (7,), using="default")
        assert ran == []
    assert ran == [7]
    assert rec.health()["dispatched"] == 1


def test_eager_mode_calls_a_zero_argument_dispatcher(app: Celery) -> None:
    calls: list[str] = []
    rec = RecordingController(app, eager=True)
    assert rec.sync.delay(lambda: calls.append("sent") or "result") == "result"
    assert calls == ["sent"]
    assert rec.outbox[0].task_id is None
