"""Django system checks, run by ``manage.py check`` and before ``runserver``/``migrate``.

* ``aceleryctl.E001``: a problem in ``settings.ACELERYCTL`` (names the key).
* ``aceleryctl.W001``: the Celery app's broker settings let a publish hang. The
  controller bounds its own publishes on Redis, but zero-argument callables and
  other brokers publish through Celery's stock path, bounded only by these.
* ``aceleryctl.W002``: the broker is not Redis, so publishes take Celery's stock
  path: deadlines still bound every caller, but a publishing thread can stay
  stuck on a silent broker until the broker's own timeouts fire.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks import CheckMessage, Error, register

from aceleryctl.conf import SETTING_NAME, resolve_celery_app, settings_problems

__all__ = ["check_celery_bounds", "check_settings"]


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


@register()
def check_celery_bounds(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``aceleryctl.W001``/``W002``: Celery settings that leave a publish unbounded."""
    if settings_problems(getattr(settings, SETTING_NAME, None)):
        return []  # E001 already says what to fix first
    try:
        app = resolve_celery_app()
    except Exception as exc:  # an import error in the user's Celery module
        return [
            Error(
                f"aceleryctl could not load the Celery app: {type(exc).__name__}: {exc}",
                hint="Check ACELERYCTL['CELERY_APP'] (a dotted path such as 'proj.celery:app').",
                id="aceleryctl.E002",
            )
        ]
    conf = app.conf
    messages: list[CheckMessage] = []
    scheme = str(conf.broker_url or "").split("://", 1)[0].split("+")[0]
    if scheme and scheme not in {"redis", "rediss", "sentinel", "memory", "socket"}:
        messages.append(
            checks.Warning(
                f"the Celery broker is {scheme!r}: aceleryctl bounds publishes on Redis only, "
                "so here they take Celery's stock path",
                hint="Every call still fails within its dispatch deadline, but a publishing "
                "thread can stay stuck until the broker's own timeouts fire; set them.",
                id="aceleryctl.W002",
            )
        )
        return messages
    options = dict(conf.broker_transport_options or {})
    unbounded = [
        key for key in ("socket_timeout", "socket_connect_timeout") if not options.get(key)
    ]
    if unbounded:
        messages.append(
            checks.Warning(
                f"broker_transport_options has no {' or '.join(unbounded)}: a publish outside "
                "aceleryctl's bounded path (a zero-argument callable) can hang on a broker that "
                "accepts connections but never answers",
                hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = "
                "{'socket_timeout': 5, 'socket_connect_timeout': 5} (seconds).",
                id="aceleryctl.W001",
            )
        )
    policy = dict(conf.task_publish_retry_policy or {})
    if conf.task_publish_retry and policy.get("max_retries", 3) is None:
        messages.append(
            checks.Warning(
                "task_publish_retry_policy has max_retries=None: Celery retries a failed "
                "publish forever",
                hint="Set a finite max_retries, or task_publish_retry = False.",
                id="aceleryctl.W001",
            )
        )
    return messages
