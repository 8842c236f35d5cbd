"""URL routes of the demo."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from demo_site import api, views

router = SimpleRouter()
router.register("api/report-records", api.ReportViewSet, basename="report-record")

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/<uuid:task_id>/", views.task_page, name="task-page"),
    # Async Django views on `aceleryctl.controller`.
    path("api/tasks/long/", views.start_long_task, name="start-long-task"),
    path("api/tasks/flaky/", views.start_flaky_task, name="start-flaky-task"),
    path("api/tasks/django/", views.start_django_task, name="start-django-task"),
    path("api/tasks/retrying/", views.start_retrying_task, name="start-retrying-task"),
    path("api/tasks/<uuid:task_id>/", views.task_state, name="task-state"),
    # The task's row in the outbox, while the broker does not have it.
    path("api/tasks/<uuid:task_id>/outbox/", views.task_outbox, name="task-outbox"),
    path("api/status/", views.dispatch_status, name="dispatch-status"),
    # Demo only: point dispatch at a dead broker (settings.DEMO_FAULT_SWITCH).
    path("api/demo/broker/", views.broker_switch, name="broker-switch"),
    # DRF views on the sync facade, `aceleryctl.sync.controller`.
    path("api/reports/", api.ReportListCreate.as_view(), name="reports"),
    path("api/scheduled-add/", api.schedule_add, name="scheduled-add"),
    # A ModelViewSet whose `reprocess` action queues several tasks (one with a countdown).
    path("", include(router.urls)),
]
