"""DRF views on the sync facade, as a project moving from the original controller has them.

The only change from the original controller is the import line::

    from aceleryctl.sync import controller

The demo calls :func:`demo_site.faults.active_sync_controller` instead, so that the
page's dead-broker switch reaches these views too; while the switch is off it
returns exactly ``aceleryctl.sync.controller``.

Django runs these sync views on a worker thread (never the event loop's thread), so
the blocking facade is the right one here. Like the async views, they answer with a
subscription token, so a task started here shows up live on the page.

With the outbox on (``demo_site.settings``), ``delay_on_commit`` writes the dispatch
to the outbox table inside the report's transaction and publishes it right after the
commit; if that publish fails, the row stays and the relay publishes it later. The
view answers before the publish ends, so it cannot say which happened: the page asks
``GET /api/tasks/<id>/outbox/`` (``views.task_outbox``).
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpResponseBase
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from aceleryctl import TaskDispatchError
from demo_site.faults import active_sync_controller
from demo_site.live import session_key
from demo_site.models import Report
from demo_site.tasks import add, process_report, record_audit
from demo_site.views import accepted_body, deferred_fields, dispatch_error_response

__all__ = ["ReportListCreate", "ReportViewSet", "schedule_add"]


class ReportSerializer(serializers.ModelSerializer):
    class Meta:
        model = Report
        fields = ["id", "title", "status", "task_id", "word_count", "created_at", "processed_at"]
        read_only_fields = ["status", "task_id", "word_count", "created_at", "processed_at"]


class ReportListCreate(APIView):
    """``GET``: the latest reports. ``POST {"title": ...}``: create one and process it."""

    def get(self, request: Request) -> Response:
        reports = Report.objects.all()[:20]
        return Response(ReportSerializer(reports, many=True).data)

    def post(self, request: Request) -> Response:
        serializer = ReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = session_key(request._request)
        controller = active_sync_controller()
        with transaction.atomic():
            report = serializer.save()
            # Published only once the transaction commits (never if it rolls back),
            # yet the task id is known now, so the record can keep it.
            result = controller.delay_on_commit(process_report, report.pk)
            report.task_id = result.id
            report.save(update_fields=["task_id"])
        # Non-critical: a failure is logged and reported, never raised.
        audit_sent, _ = controller.safe_execute(
            record_audit, "report.created", suppress_exceptions=True, report_id=report.pk
        )
        body = accepted_body(
            result.id,
            process_report.name,
            key,
            report=ReportSerializer(report).data,
            audit_sent=audit_sent,
        )
        return Response(body, status=status.HTTP_202_ACCEPTED)


class ReportViewSet(viewsets.ModelViewSet[Report]):
    """Reports as a REST resource; ``POST .../<id>/reprocess/`` queues several tasks.

    The custom action is the shape the original controller's examples have: one
    task now, a follow-up with a countdown, both through the sync facade, both
    answered with their ids and tokens so the page can follow them live.
    """

    queryset = Report.objects.order_by("-id")
    serializer_class = ReportSerializer

    @action(detail=True, methods=["post"])
    def reprocess(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        report = self.get_object()
        key = session_key(request._request)
        controller = active_sync_controller()
        try:
            processing = controller.delay(process_report, report.pk)
            audit = controller.apply_async(
                record_audit,
                args=("report.reprocessed",),
                kwargs={"report_id": report.pk},
                countdown=2,
            )
        except TaskDispatchError as exc:
            return dispatch_error_response(exc)
        report.task_id = processing.id
        report.save(update_fields=["task_id"])
        tasks = [
            accepted_body(processing.id, process_report.name, key),
            accepted_body(audit.id, record_audit.name, key, countdown=2),
        ]
        return Response({"report": report.pk, "tasks": tasks}, status=status.HTTP_202_ACCEPTED)


class ScheduleAddSerializer(serializers.Serializer):
    x = serializers.IntegerField()
    y = serializers.IntegerField()
    countdown = serializers.IntegerField(min_value=0, max_value=300, default=3)
    durable = serializers.BooleanField(default=True)


@api_view(["POST"])
def schedule_add(request: Request) -> HttpResponseBase:
    """``POST {"x": 2, "y": 3, "countdown": 3, "durable": true}``: ``add(x, y)``,
    started ``countdown`` s later.

    Celery calling options pass straight through ``apply_async``; ``durable`` is
    aceleryctl's (stored in the outbox when the broker does not take it).
    """
    serializer = ScheduleAddSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    key = session_key(request._request)
    controller = active_sync_controller()
    try:
        result = controller.apply_async(
            add,
            args=(data["x"], data["y"]),
            countdown=data["countdown"],
            queue=controller.app.conf.task_default_queue,
            durable=data["durable"],
        )
    except TaskDispatchError as exc:
        return dispatch_error_response(exc)
    body = accepted_body(
        result.id,
        add.name,
        key,
        countdown=data["countdown"],
        durable=data["durable"],
        **deferred_fields(result),
    )
    return Response(body, status=status.HTTP_202_ACCEPTED)
