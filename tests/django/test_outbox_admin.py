"""The outbox's admin: the stored dispatch shown decoded, "retry now" and "discard"."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin import AdminSite
from django.test import RequestFactory
from django.utils import timezone

from aceleryctl.outbox.admin import OutboxMessageAdmin
from aceleryctl.outbox.models import OutboxMessage

pytestmark = pytest.mark.django_db


def _row(task_id: str, **fields: object) -> OutboxMessage:
    now = timezone.now()
    values: dict[str, object] = {
        "task_id": task_id,
        "task_name": "proj.tasks.t",
        "payload": b'{"v": 1, "args": [1, 2]}',
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "reason": "durable",
        "created_at": now,
        "available_at": now + timedelta(hours=1),
        "state": "dead",
        "attempts": 20,
        "last_error": "BrokerError: down",
    }
    values.update(fields)
    return OutboxMessage.objects.create(**values)


class Recorded(OutboxMessageAdmin):
    """The admin, its user messages recorded instead of sent through the messages app."""

    said: list[str]

    def message_user(self, request: object, message: str, *args: object, **kw: object) -> None:
        self.said.append(message)


@pytest.fixture
def model_admin() -> Recorded:
    admin = Recorded(OutboxMessage, AdminSite())
    admin.said = []
    return admin


def test_the_change_page_shows_the_dispatch_decoded_and_nothing_can_be_added(
    model_admin: Recorded,
) -> None:
    row = _row("a")
    assert '"args": [\n    1,\n    2\n  ]' in model_admin.stored_dispatch(row)
    assert model_admin.stored_dispatch(_row("b", payload=b"\x80")) == "(does not decode)"
    assert model_admin.short_error(row) == "BrokerError: down"
    assert not model_admin.has_add_permission(RequestFactory().get("/"))


def test_retry_now_makes_rows_pending_and_due_and_discard_deletes(model_admin: Recorded) -> None:
    kept, gone = _row("a"), _row("b")
    request = RequestFactory().post("/")
    model_admin.retry_now(request, OutboxMessage.objects.filter(pk=kept.pk))
    kept.refresh_from_db()
    assert kept.state == "pending"
    assert kept.available_at <= timezone.now()
    model_admin.discard(request, OutboxMessage.objects.filter(pk=gone.pk))
    assert list(OutboxMessage.objects.values_list("task_id", flat=True)) == ["a"]
    assert model_admin.said == [
        "1 rows will be published by the next relay round.",
        "1 rows discarded.",
    ]
