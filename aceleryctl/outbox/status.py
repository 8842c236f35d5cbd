"""What the outbox looks like now, for ``health()``, ``ahealth()`` and
``manage.py aceleryctl_health``: its depth, its oldest pending row's age, and when
a relay last finished a round. Two queries on the outbox's database, on the
calling thread (never call it on an event loop: use ``await controller.ahealth()``).
"""

from __future__ import annotations

from typing import Any

from aceleryctl.outbox.config import outbox_settings

__all__ = ["outbox_status"]


def outbox_status() -> dict[str, Any]:
    """A JSON-ready summary: ``enabled``, and when on, ``database``, ``relay`` (the
    mode), ``pending``, ``dead``, ``oldest_pending_seconds`` and
    ``relay_last_round_seconds`` (ages in seconds, ``None`` when there is none),
    ``in_process_relay`` (running here) and ``error`` when the database failed.

    Raises:
        django.core.exceptions.ImproperlyConfigured: invalid ``OUTBOX`` settings.
    """
    conf = outbox_settings()
    if not conf.enabled:
        return {"enabled": False}
    from django.db.models import Max
    from django.utils import timezone

    from aceleryctl.outbox import store
    from aceleryctl.outbox.inprocess import in_process_relay
    from aceleryctl.outbox.models import RelayHeartbeat

    status: dict[str, Any] = {
        "enabled": True,
        "database": conf.database,
        "relay": conf.relay,
        "in_process_relay": in_process_relay().running,
    }
    now = timezone.now()
    try:
        depth = store.count_pending(conf.database)
        last = (
            RelayHeartbeat.objects.using(conf.database)
            .aggregate(last=Max("last_round_at"))
            .get("last")
        )
    except Exception as exc:
        status["error"] = store.describe_error(exc)
        return status
    oldest = depth["oldest_pending"]
    status.update(
        pending=depth["pending"],
        dead=depth["dead"],
        oldest_pending_seconds=None if oldest is None else round((now - oldest).total_seconds(), 3),
        relay_last_round_seconds=None if last is None else round((now - last).total_seconds(), 3),
    )
    return status
