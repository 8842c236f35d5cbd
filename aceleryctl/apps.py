"""The Django app: registers system checks, the settings-change receiver, the hook
that loads the worker side when a Celery worker starts, and the web process's
live ``task.sent``; nothing else, and no worker-only module."""

from __future__ import annotations

from django.apps import AppConfig


class AceleryctlConfig(AppConfig):
    """Add ``"aceleryctl"`` to ``INSTALLED_APPS`` to get checks, settings handling,
    live task events and execution-time logging.

    ``ready()`` runs in every process that sets Django up. It imports none of the
    worker side: it connects a small hook to Celery's worker start signals
    (:func:`aceleryctl.signals.connect_when_worker_starts`), which connects the
    receivers in a worker before its first task. ``ACELERYCTL["EVENTS_ENABLED"] =
    False`` leaves the event receivers out; the logging and correlation-id
    receivers are always connected in workers. Projects that run Celery without
    Django call :func:`aceleryctl.signals.connect` themselves.
    """

    name = "aceleryctl"
    verbose_name = "aceleryctl"

    def ready(self) -> None:
        from aceleryctl import (
            checks,  # noqa: F401  (registers the checks)
            signals,
        )
        from aceleryctl.conf import connect_signals, load_settings
        from aceleryctl.live import sent
        from aceleryctl.schedules import check  # noqa: F401  (registers aceleryctl.W006)

        connect_signals()
        signals.connect_when_worker_starts()
        try:
            events = load_settings().events_enabled
        except Exception:  # invalid settings: the system checks name the key
            events = True
        if events:
            sent.install_web()
