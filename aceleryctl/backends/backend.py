"""``CeleryBackend``: a Django Tasks backend that enqueues through aceleryctl's controller.

::

    TASKS = {
        "default": {
            "BACKEND": "aceleryctl.backends.CeleryBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"CELERY_OPTIONS": {"expires": 3600}},
        }
    }

``enqueue`` publishes with the controller's sync facade and ``aenqueue`` with the
async controller itself (no ``sync_to_async``): the same deadline, circuit breaker,
batching, logging and errors (:mod:`aceleryctl.exceptions`) as ``controller.delay``.
Every function runs on workers through one Celery task (:mod:`.runner`). See
docs/django-tasks.md for what maps to what.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from django.core import checks
from django.utils import timezone

from aceleryctl.backends import registry
from aceleryctl.backends.options import (
    CeleryTask,
    celery_priority,
    check_celery_options,
    message_options,
)
from aceleryctl.backends.records import RUNNER_NAME, message_args
from aceleryctl.backends.results import task_result_from_meta
from aceleryctl.backends.shared import state_for
from aceleryctl.compat.django_tasks import (
    AnyTaskResult,
    BaseTaskBackend,
    InvalidTask,
    new_ready_result,
    send_from_loop,
    task_enqueued,
)
from aceleryctl.dispatch.ids import new_task_id

if TYPE_CHECKING:
    from aceleryctl.dispatch.controller import AsyncCeleryController

__all__ = ["CeleryBackend"]

#: The keys of a backend's OPTIONS.
OPTION_KEYS = frozenset({"CONTROLLER", "QUEUE_MAP", "CELERY_OPTIONS", "ON_COMMIT"})
DEFAULT_QUEUE = "default"


#: Tasks whose validation and plan are kept, at most (then forgotten, and redone).
_MAX_TASKS = 10_000


class _Plan(NamedTuple):
    """What every enqueue of one task shares (see ``CeleryBackend._plan``)."""

    task: Any
    app: Any
    runner: Any
    path: str
    options: dict[str, Any]  # the Celery options but task_id; never mutated


def _config_error(alias: str, message: str) -> InvalidTask:
    from django.core.exceptions import ImproperlyConfigured

    return ImproperlyConfigured(f"TASKS[{alias!r}]: {message}")  # type: ignore[return-value]


class CeleryBackend(BaseTaskBackend):
    """Run Django tasks on Celery workers, enqueued through aceleryctl's controller.

    OPTIONS (all optional):

    * ``CONTROLLER``: the :class:`~aceleryctl.AsyncCeleryController` to publish
      with, or its import path (``"proj.dispatch:controller"``); default: the
      default controller, :data:`aceleryctl.controller`.
    * ``QUEUE_MAP``: Django queue name -> Celery queue name. Unmapped names are
      Celery queues of the same name, but ``"default"``, which is Celery's default
      routing (``task_default_queue`` and ``task_routes``).
    * ``CELERY_OPTIONS``: ``countdown``, ``expires``, ``soft_time_limit``,
      ``time_limit`` (seconds) for every task; a task's own ``@task(...)`` wins.
    * ``ON_COMMIT``: ``True`` publishes once the current transaction commits, like
      ``controller.apply_async_on_commit`` (the result comes back at once).

    Thread-safety: one instance per alias and thread (Django's handler); any
    number of threads and coroutines may enqueue at once.

    Raises:
        django.core.exceptions.ImproperlyConfigured: an OPTIONS key or value, or
            QUEUES, is wrong; the message names it.
    """

    task_class = CeleryTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        if not isinstance(options, Mapping):
            raise _config_error(alias, f"OPTIONS must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - OPTION_KEYS)
        if unknown:
            raise _config_error(
                alias, f"unknown OPTIONS key {unknown[0]!r}; valid: {sorted(OPTION_KEYS)}"
            )
        for queue in self.queues:
            if not isinstance(queue, str) or not queue:
                raise _config_error(alias, f"QUEUES must be non-empty strings, got {queue!r}")
        queue_map = options.get("QUEUE_MAP") or {}
        if not isinstance(queue_map, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in queue_map.items()
        ):
            raise _config_error(alias, "QUEUE_MAP must map Django queue names to Celery queues")
        self._queue_map: dict[str, str | None] = {DEFAULT_QUEUE: None, **queue_map}
        try:
            self._defaults = check_celery_options(
                options.get("CELERY_OPTIONS") or {},
                f"TASKS[{alias!r}]['OPTIONS']['CELERY_OPTIONS']",
            )
        except (TypeError, ValueError) as exc:
            raise _config_error(alias, str(exc)) from exc
        on_commit = options.get("ON_COMMIT", False)
        if not isinstance(on_commit, bool):
            raise _config_error(alias, f"ON_COMMIT must be True or False, got {on_commit!r}")
        self._on_commit = on_commit
        self._controller_option = options.get("CONTROLLER")
        # Shared with every other instance of this configuration in the process
        # (Django makes one per request's context: see .shared).
        state = state_for(alias, params)
        self._recent = state.recent
        self._plans: dict[int, _Plan] = state.plans
        self._valid: set[Any] = state.valid
        from aceleryctl.backends import runner  # registers the Celery task on every app

        del runner

    # -- the controller and the runner task --------------------------------

    def controller(self) -> AsyncCeleryController:
        """The controller this backend publishes with (see ``OPTIONS["CONTROLLER"]``)."""
        option = self._controller_option
        if option is None:
            from aceleryctl.conf import default_controller

            return default_controller()
        if isinstance(option, str):
            from django.utils.module_loading import import_string

            option = import_string(option.replace(":", "."))
            self._controller_option = option
        return option  # type: ignore[no-any-return]

    def _plan(self, task: Any) -> _Plan:
        # What every enqueue of ``task`` through ``app`` shares: the runner, the
        # function's path and the Celery options but ``task_id`` (a Task is frozen,
        # so they cannot change). Kept by the task's identity, with the task itself
        # (its id cannot be reused while it is held); equal tasks (``using()``
        # copies) are validated once.
        valid = self._valid
        if task not in valid:  # checked again here, as Django's own backends do
            self.validate_task(task)
            if len(valid) > _MAX_TASKS:
                valid.clear()
            valid.add(task)
        app = self.controller().app
        redis = str(app.conf.broker_url or "").startswith(("redis", "rediss"))
        max_priority = int(app.conf.task_queue_max_priority or 0)
        queue = self._queue_map.get(task.queue_name, task.queue_name)
        priority = celery_priority(task.priority, redis, max_priority)
        plan = _Plan(
            task,
            app,
            app.tasks[RUNNER_NAME],
            task.module_path,
            message_options(task, self._defaults, queue, priority),
        )
        plans = self._plans
        if len(plans) > _MAX_TASKS:
            plans.clear()
        plans[id(task)] = plan
        return plan

    # -- validation --------------------------------------------------------

    def validate_task(self, task: Any) -> None:
        """Django's checks (module-level function, priority, queue, ``run_after``),
        then register the function as one this backend's workers may run.

        Raises:
            InvalidTask: (``InvalidTaskError`` in the backport) what to change.
        """
        super().validate_task(task)
        registry.register(task)

    # -- enqueue -------------------------------------------------------------

    def _prepare(
        self, task: Any, args: Any, kwargs: Any
    ) -> tuple[AnyTaskResult, _Plan, tuple[Any, ...], AsyncCeleryController]:
        # The result, and the message: the runner with the function's path and
        # arguments (see records); its options are the plan's and the result's id.
        # A task not seen yet is validated before the controller is looked up.
        plan = self._plans.get(id(task))
        if plan is None or plan.task is not task:
            plan = self._plan(task)
        controller = self.controller()
        if plan.app is not controller.app:
            plan = self._plan(task)
        now = timezone.now()
        result = new_ready_result(task, new_task_id(), now, args, kwargs, self.alias)
        return result, plan, message_args(plan.path, self.alias, result.args, now), controller

    def _enqueued(self, result: AnyTaskResult) -> AnyTaskResult:
        self._recent.add(result)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> AnyTaskResult:
        """Publish ``task(*args, **kwargs)`` through the controller's sync facade.

        Blocks at most the controller's deadline. Sends ``task_enqueued``.

        Raises:
            TaskDispatchError: a subclass; see :mod:`aceleryctl.exceptions` (nothing
                was sent, or the outcome is unknown).
            TypeError, ValueError: the arguments are not JSON values.
            AsyncContextError: on an event loop's thread: ``await aenqueue`` there.
        """
        result, plan, call, controller = self._prepare(task, args, kwargs)
        sync = controller.sync
        publish = sync.apply_async_on_commit if self._on_commit else sync.apply_async
        publish(plan.runner, call, result.kwargs, task_id=result.id, **plan.options)
        return self._enqueued(result)

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> AnyTaskResult:
        """Publish ``task(*args, **kwargs)`` with the async controller, on this loop.

        Concurrent calls share the controller's batches. Sends ``task_enqueued``.

        Raises:
            TaskDispatchError: a subclass; see :mod:`aceleryctl.exceptions`.
            TypeError, ValueError: the arguments are not JSON values.
        """
        result, plan, call, controller = self._prepare(task, args, kwargs)
        options = dict(plan.options, task_id=result.id)
        if self._on_commit:
            await controller.apply_async_on_commit(plan.runner, call, result.kwargs, **options)
        else:
            # The controller's AsyncResult would go unread: the real controller makes
            # none then; a stand-in (RecordingController) takes its public call.
            unread = getattr(controller, "_apply_async_unread", None)
            if unread is not None:
                await unread(plan.runner, call, result.kwargs, options)
            else:
                await controller.apply_async(plan.runner, call, result.kwargs, **options)
        self._recent.add(result)
        # Not Signal.send: async receivers would raise here (async_to_sync on the loop).
        pending = send_from_loop(task_enqueued, type(self), task_result=result)
        if pending is not None:
            await pending
        return result

    # -- results -----------------------------------------------------------

    def get_result(self, result_id: str) -> AnyTaskResult:
        """The task's result as its Celery meta says now. Blocks on one result-backend read.

        Raises:
            TaskResultDoesNotExist: see :func:`~aceleryctl.backends.results.task_result_from_meta`.
        """
        app = self.controller().app
        meta = app.backend.get_task_meta(result_id)
        return task_result_from_meta(result_id, meta, self.alias, self._recent)

    async def aget_result(self, result_id: str) -> AnyTaskResult:
        """:meth:`get_result` without a thread: the meta is read on this loop
        (:func:`aceleryctl.awaiting.meta.aread_meta`).

        Raises:
            TaskResultDoesNotExist: as :meth:`get_result`.
        """
        from aceleryctl.awaiting.meta import aread_meta

        meta = await aread_meta(self.controller().app, result_id)
        return task_result_from_meta(result_id, meta, self.alias, self._recent)

    # -- checks ----------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Warn when Celery's ``result_extended`` is off (results of tasks enqueued by
        other processes then lack their arguments until the function finishes), or
        when the controller's app cannot be read (``W102``; enqueue would raise)."""
        try:
            app = self.controller().app
        except Exception as exc:  # a warning: an error would stop every manage.py command
            return [
                checks.Warning(
                    f"TASKS[{self.alias!r}]: the controller's Celery app cannot be read: {exc}",
                    hint="set ACELERYCTL['CELERY_APP'], or OPTIONS['CONTROLLER'] to a controller",
                    id="aceleryctl.W102",
                )
            ]
        if not app.conf.result_extended:
            return [
                checks.Warning(
                    f"TASKS[{self.alias!r}]: Celery's result_extended is off",
                    hint=(
                        "set result_extended=True on the Celery app: get_result() of a task "
                        "this process did not enqueue then knows its arguments while it runs"
                    ),
                    id="aceleryctl.W101",
                )
            ]
        return []
