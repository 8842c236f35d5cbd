"""The app holding :class:`~bench.outboxsite.models.Order` (no migrations: the
benchmark creates its table with ``migrate --run-syncdb``)."""

from __future__ import annotations

from django.apps import AppConfig


class OutboxSiteConfig(AppConfig):
    name = "bench.outboxsite"
    label = "outboxsite"
    default_auto_field = "django.db.models.BigAutoField"
