"""The Django app: registers system checks, the settings-change receiver and the
Celery signal receivers, nothing else."""

from __future__ import annotations

from django.apps import AppConfig


class AceleryctlConfig(AppConfig):
    """Add ``"aceleryctl"`` to ``INSTALLED_APPS`` to get checks, settings handling,
    live task events and execution-time logging.

    ``ready()`` runs in every process that sets Django up, the Celery worker
    included (the project's Celery module calls ``django.setup()``, or Celery's
    Django fixup does), so the worker's receivers are connected there.
    ``ACELERYCTL["EVENTS_ENABLED"] = False`` leaves the event receivers out; the
    logging and correlation-id receivers are always connected. Projects that run
    Celery without Django call :func:`aceleryctl.signals.connect` themselves.
    """

    name = "aceleryctl"
    verbose_name = "aceleryctl"

    def ready(self) -> None:
        from aceleryctl import (
            checks,  # noqa: F401  (registers the checks)
            signals,
        )
        from aceleryctl.conf import connect_signals

        connect_signals()
        signals.connect()
