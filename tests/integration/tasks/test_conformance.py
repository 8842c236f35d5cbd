"""Conformance: the django-tasks backport's backend tests, adapted to a real worker.

The backport (https://github.com/RealOrangeOne/django-tasks, ``tests/tests/``) tests
the ``Task`` API with its dummy backend (``test_tasks.py``) and execution with its
immediate backend (``test_immediate_backend.py``). Each test below checks, on
``CeleryBackend`` with a real prefork worker, the behaviour one (or a group) of
those tests checks; the adaptation is always the same: a result is waited for
(the function runs on a worker, not inside ``enqueue``). Which tests apply, and
why the others do not, is in docs/django-tasks.md ("Conformance").
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from aceleryctl.backends import CeleryBackend
from aceleryctl.compat.django_tasks import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)
from aceleryctl.compat.django_tasks import TaskResultMismatch as Mismatch

from . import functions, site
from .test_backend import finished

pytestmark = pytest.mark.usefixtures("tasks_controller")


# test_tasks.py: test_using_correct_backend, test_get_backend, test_name, test_module_path
def test_the_task_knows_its_backend_name_and_path() -> None:
    assert isinstance(task_backends["default"], CeleryBackend)
    assert isinstance(functions.noop.get_backend(), CeleryBackend)
    assert functions.noop.name == "noop"
    assert functions.noop.module_path == "tests.integration.tasks.functions.noop"


# test_tasks.py / test_immediate_backend.py: test_enqueue_task
def test_enqueue_returns_a_ready_result_then_it_runs() -> None:
    result = functions.noop.enqueue(1, two=2)
    assert result.status == TaskResultStatus.READY
    assert not result.is_finished
    assert result.task is functions.noop
    assert (result.args, result.kwargs) == ([1], {"two": 2})
    with pytest.raises(ValueError, match="not finished"):
        result.return_value  # noqa: B018
    done = finished(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value is None


# test_enqueue_task_async, test_call_async_task (run by the worker)
async def test_aenqueue_and_async_functions() -> None:
    import asyncio

    for fn in (functions.noop, functions.anoop):
        result = await fn.aenqueue(1, two=2)
        assert result.status == TaskResultStatus.READY
        done = await asyncio.to_thread(finished, result.id)
        assert done.status == TaskResultStatus.SUCCESSFUL


# test_enqueue_with_invalid_argument, test_aenqueue_with_invalid_argument
async def test_arguments_that_are_not_json_are_refused() -> None:
    with pytest.raises(TypeError, match="Unsupported type"):
        functions.noop.enqueue(timezone.now())
    with pytest.raises(TypeError, match="Unsupported type"):
        await functions.noop.aenqueue(timezone.now())


# test_using_priority, test_using_queue_name, test_using_run_after,
# test_using_creates_new_instance, test_chained_using
def test_using_makes_new_tasks() -> None:
    when = timezone.now() + timedelta(hours=1)
    variant = functions.noop.using(priority=5).using(queue_name="other").using(run_after=when)
    assert variant is not functions.noop
    assert (variant.priority, variant.queue_name, variant.run_after) == (5, "other", when)
    assert (functions.noop.priority, functions.noop.queue_name) == (0, "default")


# test_naive_datetime, test_invalid_priority, test_unknown_queue_name,
# test_validate_on_enqueue
def test_invalid_settings_are_refused() -> None:
    with pytest.raises(InvalidTask, match="aware datetime"):
        functions.noop.using(run_after=datetime(2030, 1, 1))
    for priority in (-101, 101, 1.5):
        with pytest.raises(InvalidTask, match="priority must be a whole number"):
            functions.noop.using(priority=priority)  # type: ignore[arg-type]
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid"):
        functions.noop.using(queue_name="nowhere")


# test_validate_on_enqueue (a backend whose QUEUES changed since the task was made)
def test_enqueue_validates_against_the_backend() -> None:
    narrow = CeleryBackend("default", {**site.TASKS["default"], "QUEUES": ["other"]})
    with pytest.raises(InvalidTask, match="Queue 'default' is not valid"):
        narrow.enqueue(functions.noop, (), {})


# test_result, test_result_async, test_refresh_result, test_get_result(_async),
# test_meaning_of_life_view, test_get_result_from_different_request
async def test_results_are_read_back_and_refreshed() -> None:
    import asyncio

    result = await functions.meaning_of_life.aenqueue()
    done = await asyncio.to_thread(finished, result.id)
    assert done.return_value == 42
    await result.arefresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42
    again = await asyncio.to_thread(functions.meaning_of_life.get_result, result.id)
    assert (again.id, again.return_value) == (result.id, 42)
    again = await functions.meaning_of_life.aget_result(result.id)
    assert again.status == TaskResultStatus.SUCCESSFUL
    elsewhere = CeleryBackend("default", site.TASKS["default"])
    assert (await elsewhere.aget_result(result.id)).return_value == 42


# test_get_missing_result, test_get_incorrect_result(_async)
async def test_missing_and_mismatched_results() -> None:
    import asyncio

    with pytest.raises(TaskResultDoesNotExist):
        await asyncio.to_thread(functions.noop.get_result, "missing")
    with pytest.raises(TaskResultDoesNotExist):
        await functions.noop.aget_result("missing")
    result = await functions.meaning_of_life.aenqueue()
    await asyncio.to_thread(finished, result.id)
    with pytest.raises(Mismatch, match="Task does not match"):
        await asyncio.to_thread(functions.noop.get_result, result.id)
    with pytest.raises(Mismatch, match="Task does not match"):
        await functions.noop.aget_result(result.id)


# test_catches_exception (ValueError, SystemExit), test_complex_exception,
# test_complex_return_value, test_task_error_* (exception_class)
@pytest.mark.parametrize(
    ("fn", "args", "expected"),
    [
        ("fail", ("boom",), "builtins.ValueError"),
        ("exits", (), "builtins.SystemExit"),
        ("nested_exception", (), "builtins.ValueError"),
        ("returns_a_function", (), "builtins.TypeError"),
    ],
)
def test_failures_are_caught_and_described(fn: str, args: tuple[Any, ...], expected: str) -> None:
    result = getattr(functions, fn).enqueue(*args)
    done = finished(result.id)
    assert done.status == TaskResultStatus.FAILED
    [error] = done.errors
    assert error.exception_class_path == expected
    assert error.exception_class.__name__ == expected.rsplit(".", 1)[1]
    assert error.traceback.startswith("Traceback (most recent call last)")
    with pytest.raises(ValueError, match="Task failed"):
        done.return_value  # noqa: B018


# test_takes_context, test_context (attempt 1), get_task_id
def test_the_context_carries_the_result() -> None:
    result = functions.own_id.enqueue()
    assert finished(result.id).return_value == result.id


# test_enqueue_logs
def test_enqueue_is_logged_by_djangos_receiver(caplog: pytest.LogCaptureFixture) -> None:
    from aceleryctl.compat.django_tasks import FRAMEWORK

    logger = "django.tasks" if FRAMEWORK == "django.tasks" else "django_tasks"
    with caplog.at_level(logging.DEBUG, logger=logger):
        result = functions.noop.enqueue()
    assert f"Task id={result.id} path={functions.noop.module_path} enqueued" in caplog.text


# test_check
def test_the_check_passes() -> None:
    assert functions.noop.get_backend().check() == []
