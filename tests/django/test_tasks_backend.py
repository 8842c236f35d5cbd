"""The Django Tasks backend without a broker: its OPTIONS, the Celery options of
``@task``, the priority mapping, what a dispatch carries, on-commit enqueue and the
meta-to-result mapping (a recording controller stands in for the real one)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from aceleryctl.backends import CeleryBackend, CeleryTask
from aceleryctl.backends.options import celery_priority
from aceleryctl.backends.records import RUNNER_NAME, TaskFunctionError, record_of
from aceleryctl.backends.results import RecentEnqueues, task_result_from_meta
from aceleryctl.compat.django_tasks import TaskResultDoesNotExist, TaskResultStatus
from aceleryctl.exceptions import AsyncContextError
from aceleryctl.testing import RecordingController
from tests.integration.tasks import functions


def backend(**options: Any) -> CeleryBackend:
    return CeleryBackend("default", {"QUEUES": ["default", "other"], "OPTIONS": options})


@pytest.fixture
def recorder() -> RecordingController:
    app = Celery(
        "tasks-unit",
        broker="redis://127.0.0.1:1/0",
        backend="cache+memory://",
        set_as_current=False,
    )
    return RecordingController(app)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"NOPE": 1}, "unknown OPTIONS key 'NOPE'"),
        ({"QUEUE_MAP": {"a": ""}}, "QUEUE_MAP must map"),
        ({"CELERY_OPTIONS": {"eta": 1}}, "got the option 'eta'"),
        ({"CELERY_OPTIONS": {"expires": -1}}, "expires must be a finite number"),
        ({"ON_COMMIT": "yes"}, "ON_COMMIT must be True or False"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=match):
        backend(**options)


def test_task_options_are_checked_and_kept_by_using() -> None:
    with pytest.raises(TypeError, match=r"got the option 'retry_backoff'.*takes countdown"):
        CeleryTask(func=functions.add.func, retry_backoff=True)
    with pytest.raises(ValueError, match="time_limit must be a finite number"):
        CeleryTask(func=functions.add.func, time_limit=0)
    with pytest.raises(TypeError, match="expires must be a number of seconds"):
        CeleryTask(func=functions.add.func, expires="soon")
    variant = functions.limited.using(priority=10)
    assert variant.celery_options() == functions.limited.celery_options()
    assert variant.priority == 10


def test_priority_maps_onto_the_brokers_range() -> None:
    assert [celery_priority(p, True, 0) for p in (100, 50, 0, -50, -100)] == [0, 2, 4, 7, 9]
    assert [celery_priority(p, False, 9) for p in (-100, 0, 100)] == [0, 4, 9]
    assert celery_priority(100, False, 0) is None


def test_enqueue_publishes_the_runner_with_the_mapped_options(
    recorder: RecordingController,
) -> None:
    be = backend(CONTROLLER=recorder, QUEUE_MAP={"other": "celery-other"})
    run_after = timezone.now() + timedelta(minutes=5)
    task = functions.limited.using(queue_name="other", priority=100, run_after=run_after)
    result = be.enqueue(task, (), {})
    [sent] = recorder.outbox
    assert sent.task_name == RUNNER_NAME
    assert sent.task_id == result.id
    assert sent.args[:2] == (functions.limited.module_path, "default")
    assert len(sent.args) == 3  # and enqueued_at; no arguments
    assert sent.options["queue"] == "celery-other"
    assert sent.options["priority"] == 0
    assert sent.options["eta"] == run_after
    assert sent.options["time_limit"] == 30.0
    assert result.status == TaskResultStatus.READY
    plain = be.enqueue(functions.add, (1, 2), {})
    assert "queue" not in recorder.outbox[1].options  # "default": Celery's own routing
    assert be.get_result(plain.id).status == TaskResultStatus.READY  # PENDING, known here


def test_aenqueue_on_a_stand_in_controller_takes_its_public_call(
    recorder: RecordingController,
) -> None:
    # The real controller is spared the AsyncResult nobody reads (a private call);
    # a stand-in without that call gets the public apply_async with the same options.
    be = backend(CONTROLLER=recorder, QUEUE_MAP={"other": "celery-other"})
    task = functions.add.using(queue_name="other", priority=100)
    result = asyncio.run(be.aenqueue(task, (1, 2), {}))
    [sent] = recorder.outbox
    assert (sent.task_name, sent.task_id) == (RUNNER_NAME, result.id)
    assert sent.args[:2] == (functions.add.module_path, "default")
    assert sent.args[3:] == (1, 2)
    assert sent.options["queue"] == "celery-other"
    assert result.status == TaskResultStatus.READY


def test_instances_of_one_configuration_share_what_outlives_a_request(
    recorder: RecordingController,
) -> None:
    # Django keeps backends in a context-local: a request that looks the backend up
    # first makes its own instance, and a later request another. A PENDING id is
    # known only to the process that enqueued it, so every instance of the same
    # configuration must know it.
    first, second = backend(CONTROLLER=recorder), backend(CONTROLLER=recorder)
    assert first is not second
    result = first.enqueue(functions.add, (1, 2), {})
    assert second.get_result(result.id).status == TaskResultStatus.READY
    other = backend(CONTROLLER=RecordingController(recorder.app))  # another controller
    with pytest.raises(TaskResultDoesNotExist):
        other.get_result(result.id)


async def test_backends_made_in_two_request_contexts_share_pending_results(
    recorder: RecordingController,
) -> None:
    # As in an ASGI server: each request runs in its own task (its own contextvars
    # context), and Django makes a backend per context.
    from django.test import override_settings

    settings = {"default": {"BACKEND": "aceleryctl.backends.CeleryBackend",
                            "OPTIONS": {"CONTROLLER": recorder}}}  # fmt: skip
    with override_settings(TASKS=settings):
        from aceleryctl.compat.django_tasks import task_backends

        async def request(body: Any) -> Any:
            return await asyncio.create_task(body())

        async def enqueue() -> Any:
            return (task_backends["default"], await functions.add.aenqueue(1, 2))

        async def poll(result_id: str) -> Any:
            return task_backends["default"], await functions.add.aget_result(result_id)

        made, result = await request(enqueue)
        polled, seen = await request(lambda: poll(result.id))
        assert polled is not made  # Django's own behaviour: one per context
        assert seen.status == TaskResultStatus.READY


def test_enqueue_refuses_a_running_loop(recorder: RecordingController) -> None:
    be = backend(CONTROLLER=recorder)

    async def call() -> None:
        be.enqueue(functions.add, (1, 2), {})

    with pytest.raises(AsyncContextError, match=r"aceleryctl\.controller\.apply_async"):
        asyncio.run(call())


def test_arguments_must_be_json(recorder: RecordingController) -> None:
    with pytest.raises(TypeError, match="Unsupported type"):
        backend(CONTROLLER=recorder).enqueue(functions.add, (object(), 1), {})
    assert recorder.outbox == []


@pytest.mark.django_db(transaction=True)
def test_on_commit_publishes_at_the_commit_only(recorder: RecordingController) -> None:
    be = backend(CONTROLLER=recorder, ON_COMMIT=True)
    with transaction.atomic():
        committed = be.enqueue(functions.add, (1, 1), {})
        assert recorder.outbox == []
    assert [d.task_id for d in recorder.outbox] == [committed.id]
    assert recorder.outbox[0].on_commit
    with pytest.raises(RuntimeError), transaction.atomic():
        be.enqueue(functions.add, (2, 2), {})
        raise RuntimeError("roll back")
    assert len(recorder.outbox) == 1


def test_a_stored_failure_maps_to_failed_with_the_original_error() -> None:
    record = {
        "django_task": functions.fail.module_path,
        "backend": "default",
        "args": ["x"],
        "kwargs": {},
        "enqueued_at": "2026-01-01T00:00:00+00:00",
        "started_at": "2026-01-01T00:00:01+00:00",
        "finished_at": "2026-01-01T00:00:02+00:00",
        "worker_ids": ["w1", "w2"],
        "errors": [["builtins.ValueError", "Traceback ...\nValueError: x\n"]],
    }
    as_stored = {"exc_type": "TaskFunctionError", "exc_message": [record], "exc_module": "x"}
    for stored in (TaskFunctionError(record), as_stored):
        assert record_of(stored) == record
        meta = {"status": "FAILURE", "result": stored, "traceback": "celery's"}
        result = task_result_from_meta("id1", meta, "default", RecentEnqueues())
        assert result.status == TaskResultStatus.FAILED
        assert result.attempts == 2
        assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
        assert result.finished_at is not None
    assert str(TaskFunctionError(record)).endswith("raised ValueError: x")


def test_recent_enqueues_forget_the_oldest_beyond_their_size() -> None:
    recent = RecentEnqueues(size=3)
    made = [SimpleNamespace(id=f"id{i}") for i in range(5)]
    for result in made:
        recent.add(result)  # type: ignore[arg-type]
    assert [recent.get(f"id{i}") for i in range(5)] == [None, None, *made[2:]]
    recent.add(made[3])  # again: still remembered once
    assert recent.get("id2") is made[2]
    one = RecentEnqueues(size=0)  # a size below 1 keeps the last one
    for result in made[:2]:
        one.add(result)  # type: ignore[arg-type]
    assert (one.get("id0"), one.get("id1")) == (None, made[1])


def test_a_revoked_task_is_failed_and_an_unregistered_path_unknown() -> None:
    meta = {
        "status": "REVOKED",
        "result": {"exc_type": "TaskRevokedError", "exc_module": "celery.exceptions"},
        "args": [functions.add.module_path, "default", None, 1, 2],
        "kwargs": {},
    }
    result = task_result_from_meta("id2", meta, "default", RecentEnqueues())
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class_path == "celery.exceptions.TaskRevokedError"
    assert result.args == [1, 2]
    meta["args"] = ["os.system", "default", None, "ls"]
    with pytest.raises(TaskResultDoesNotExist, match="not a @task function registered"):
        task_result_from_meta("id3", meta, "default", RecentEnqueues())


def test_check_warns_without_result_extended(recorder: RecordingController) -> None:
    recorder.app.conf.result_extended = False
    assert [m.id for m in backend(CONTROLLER=recorder).check()] == ["aceleryctl.W101"]
    recorder.app.conf.result_extended = True
    assert backend(CONTROLLER=recorder).check() == []
    broken = backend(CONTROLLER="tests.integration.tasks.site.no_such_controller")
    assert [(m.id, m.level) for m in broken.check()] == [("aceleryctl.W102", 30)]
