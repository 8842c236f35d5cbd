"""Where ``django.contrib.admin`` looks for the app's admin: the outbox's
(:mod:`aceleryctl.outbox.admin`), registered when the admin app is installed."""

from django.apps import apps

if apps.is_installed("django.contrib.admin"):
    from django.contrib import admin

    from aceleryctl.outbox.admin import OutboxMessageAdmin, RelayHeartbeatAdmin
    from aceleryctl.outbox.models import OutboxMessage, RelayHeartbeat

    admin.site.register(OutboxMessage, OutboxMessageAdmin)
    admin.site.register(RelayHeartbeat, RelayHeartbeatAdmin)
