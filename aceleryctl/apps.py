"""The Django app: registers system checks and the settings-change receiver, nothing else."""

from __future__ import annotations

from django.apps import AppConfig


class AceleryctlConfig(AppConfig):
    """Add ``"aceleryctl"`` to ``INSTALLED_APPS`` to get checks and settings handling."""

    name = "aceleryctl"
    verbose_name = "aceleryctl"

    def ready(self) -> None:
        from aceleryctl import checks  # noqa: F401  (registers the checks)
        from aceleryctl.conf import connect_signals

        connect_signals()
