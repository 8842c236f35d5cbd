"""Django system checks: the ``ACELERYCTL`` setting is validated at start-up.

Run by ``manage.py check`` and before ``runserver``/``migrate``; each message
names the key to change.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from aceleryctl.conf import SETTING_NAME, settings_problems

__all__ = ["check_settings"]


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``aceleryctl.E001``: one error per problem in ``settings.ACELERYCTL``."""
    raw = getattr(settings, SETTING_NAME, None)
    return [
        Error(
            problem,
            hint="See the configuration reference in aceleryctl's docs.",
            id="aceleryctl.E001",
        )
        for problem in settings_problems(raw)
    ]
