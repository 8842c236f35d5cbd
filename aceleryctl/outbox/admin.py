"""The Django admin for the outbox: pending and dead-lettered rows, what each holds,
and two actions, "retry now" and "discard".

Registered by :mod:`aceleryctl.admin` (where ``django.contrib.admin`` looks) when
the admin app is installed; importing this module registers nothing. Read-only
but for the actions: a row is the stored form of a dispatch, not edited by hand.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from aceleryctl.outbox.models import OutboxMessage

__all__ = ["OutboxMessageAdmin", "RelayHeartbeatAdmin"]

#: Characters of a row's decoded payload the change page shows, at most.
PAYLOAD_PREVIEW = 4_000


class OutboxMessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Outbox rows: newest first, filtered by state and reason."""

    list_display = (
        "task_name",
        "task_id",
        "state",
        "reason",
        "attempts",
        "available_at",
        "created_at",
        "short_error",
    )
    list_filter = ("state", "reason")
    search_fields = ("task_id", "task_name")
    ordering = ("-created_at",)
    actions = ("retry_now", "discard")
    readonly_fields = (
        "task_id",
        "task_name",
        "state",
        "reason",
        "attempts",
        "created_at",
        "available_at",
        "last_attempt_at",
        "last_error",
        "content_type",
        "content_encoding",
        "stored_dispatch",
    )
    exclude = ("payload",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="last error")
    def short_error(self, row: OutboxMessage) -> str:
        """The last error's first 80 characters."""
        return row.last_error[:80]

    @admin.display(description="dispatch")
    def stored_dispatch(self, row: OutboxMessage) -> str:
        """The stored dispatch, decoded when it is JSON (arguments as stored)."""
        payload = bytes(row.payload) if isinstance(row.payload, memoryview) else row.payload
        if row.content_type != "application/json":
            return f"({len(payload)} bytes of {row.content_type})"
        try:
            text = json.dumps(json.loads(payload), indent=2, sort_keys=True)
        except ValueError:
            return "(does not decode)"
        return text[:PAYLOAD_PREVIEW]

    @admin.action(description="Retry now (pending again, due at once)")
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Make the rows pending and due now; the relay takes them on its next round."""
        count = queryset.update(state=OutboxMessage.State.PENDING, available_at=timezone.now())
        self.message_user(request, f"{count} rows will be published by the next relay round.")

    @admin.action(description="Discard (delete; the tasks never run)")
    def discard(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Delete the rows: their dispatches are given up for good."""
        count, _ = queryset.delete()
        self.message_user(request, f"{count} rows discarded.", level=messages.WARNING)


class RelayHeartbeatAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """When each relay last finished a round."""

    list_display = ("name", "last_round_at", "published", "dead_lettered")
    ordering = ("-last_round_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
