"""Django system checks, run by ``manage.py check`` and before ``runserver``/``migrate``.

* ``aceleryctl.E001``: a problem in ``settings.ACELERYCTL`` (names the key).
* ``aceleryctl.E002``: the Celery app (``CELERY_APP``) cannot be loaded.
* ``aceleryctl.W001``: the Celery app's broker settings let a publish hang (or, on
  RabbitMQ, go unconfirmed). The controller bounds its own publishes on Redis and
  RabbitMQ, but zero-argument callables and other brokers publish through
  Celery's stock path, bounded only by these.
* ``aceleryctl.W004``: ``ACELERYCTL["BREAKER"]["FORCE"]`` pins the circuit breaker
  open (every dispatch fails at once) or closed (it never trips): an operator's
  tool for maintenance or incidents that must not be forgotten in the settings.
* ``aceleryctl.W002``: the broker is neither Redis nor RabbitMQ (``amqp://``), so
  publishes take Celery's stock path: deadlines still bound every caller, but a
  publishing thread can stay stuck on a silent broker until the broker's own
  timeouts fire. On RabbitMQ, ``W001`` says where a setting leaves publishes
  outside the AMQP wire unconfirmed (``confirm_publish`` turned off) or unbounded.
* ``aceleryctl.W005``: the outbox is on but ``OUTBOX["RELAY"]`` does not say where
  its relay runs: rows whose after-commit publish failed wait for a relay.
* ``aceleryctl.E003``: ``OUTBOX["DATABASE"]`` is not an alias of ``DATABASES``.
* ``aceleryctl.W006`` (in :mod:`aceleryctl.schedules.check`): a beat schedule
  entry names a task that is not registered.
* ``aceleryctl.W003``: the websocket consumer is routed (``ASGI_APPLICATION``
  reaches it, or :mod:`aceleryctl.routing` is imported) but no channel layer can
  bring it the workers' events: ``CHANNEL_LAYERS`` has no ``default`` layer, or
  that layer is the in-memory one, which lives inside a single process.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string

from aceleryctl.compat.channels import ASGI_CHILD_ATTRIBUTES, routed_consumer_class
from aceleryctl.conf import SETTING_NAME, resolve_celery_app, settings_problems

__all__ = [
    "check_outbox",
    "check_celery_bounds",
    "check_channel_layer",
    "check_forced_breaker",
    "check_settings",
]


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
def check_outbox(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``aceleryctl.W005`` and ``aceleryctl.E003``: the outbox's relay and database."""
    raw = getattr(settings, SETTING_NAME, None)
    if settings_problems(raw) or not isinstance(raw, dict):
        return []
    outbox = raw.get("OUTBOX") or {}
    if not outbox.get("ENABLED"):
        return []
    found: list[CheckMessage] = []
    alias = outbox.get("DATABASE", "default")
    if alias not in settings.DATABASES:
        found.append(
            Error(
                f"ACELERYCTL['OUTBOX']['DATABASE'] is {alias!r}, which is not in DATABASES",
                hint="Name the database whose transactions dispatch on commit.",
                id="aceleryctl.E003",
            )
        )
    if "RELAY" not in outbox:
        found.append(
            checks.Warning(
                "the outbox is on but ACELERYCTL['OUTBOX']['RELAY'] does not say where its "
                "relay runs: dispatches the broker did not take wait for a relay",
                hint="Set RELAY to 'command' and run `manage.py aceleryctl_relay`, or to "
                "'in_process' for a relay thread in each web process.",
                id="aceleryctl.W005",
            )
        )
    return found


@register()
def check_forced_breaker(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``aceleryctl.W004``: the breaker is forced by settings."""
    raw = getattr(settings, SETTING_NAME, None)
    if settings_problems(raw) or not isinstance(raw, dict):
        return []
    breaker = raw.get("BREAKER")
    force = breaker.get("FORCE") if isinstance(breaker, dict) else None
    if force is None:
        return []
    effect = (
        "every dispatch is refused at once with CircuitOpenError"
        if force == "open"
        else "the breaker never opens, whatever the broker does"
    )
    return [
        checks.Warning(
            f"ACELERYCTL['BREAKER']['FORCE'] is {force!r}: {effect}",
            hint="Remove the FORCE key when the maintenance or incident is over.",
            id="aceleryctl.W004",
        )
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
    if scheme in _AMQP_SCHEMES:
        return _amqp_bounds(conf)
    if scheme and scheme not in {"redis", "rediss", "sentinel", "memory", "socket"}:
        messages.append(
            checks.Warning(
                f"the Celery broker is {scheme!r}: aceleryctl bounds publishes on Redis and "
                "RabbitMQ (amqp://) only, so here they take Celery's stock path",
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


#: Broker URL schemes of kombu's py-amqp transport (the AMQP wire's).
_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def _amqp_bounds(conf: Any) -> list[CheckMessage]:
    """``W001`` for RabbitMQ: what leaves publishes outside the AMQP wire (a
    zero-argument callable's own ``delay()``) unbounded or unconfirmed. The wire
    itself bounds and confirms every publish whatever these say."""
    messages: list[CheckMessage] = []
    options = dict(conf.broker_transport_options or {})
    if options.get("confirm_publish") is False:
        messages.append(
            checks.Warning(
                "broker_transport_options sets confirm_publish=False: publishes outside "
                "aceleryctl's AMQP wire (zero-argument callables, plain delay() calls) return "
                "before RabbitMQ has stored the message, and a message lost on the way is "
                "never reported",
                hint="Remove confirm_publish, or set it to True (with a confirm_timeout).",
                id="aceleryctl.W001",
            )
        )
    unbounded = [key for key in ("read_timeout", "write_timeout") if not options.get(key)]
    if unbounded or not conf.broker_connection_timeout:
        missing = [*unbounded] + ([] if conf.broker_connection_timeout else ["a connect timeout"])
        messages.append(
            checks.Warning(
                f"the RabbitMQ settings have no {' or '.join(missing)}: a publish outside "
                "aceleryctl's AMQP wire (a zero-argument callable) can hang on a broker that "
                "accepts connections but never answers",
                hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'read_timeout': 5, "
                "'write_timeout': 5} and CELERY_BROKER_CONNECTION_TIMEOUT (seconds).",
                id="aceleryctl.W001",
            )
        )
    return messages


def _routes_consumer(app: object) -> bool:
    """Whether an ASGI app (routers, middleware, closures) reaches the consumer."""
    from aceleryctl.consumers import TaskEventsConsumer

    pending: list[object] = [app]
    seen: set[int] = set()
    while pending and len(seen) < 500:  # bounded: routing trees are small
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        consumer = routed_consumer_class(node)
        if isinstance(consumer, type) and issubclass(consumer, TaskEventsConsumer):
            return True
        if isinstance(node, dict):
            pending.extend(node.values())
            continue
        if isinstance(node, list | tuple):
            pending.extend(node)
            continue
        for attr in ASGI_CHILD_ATTRIBUTES:
            child = getattr(node, attr, None)
            if child is not None:
                pending.append(child)
        for cell in getattr(node, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                pending.append(cell.cell_contents)
    return False


def _consumer_routed() -> bool:
    if "aceleryctl.routing" in sys.modules:
        return True
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        return False
    try:
        application = import_string(path)
    except Exception:  # the project's ASGI module is not ours to diagnose here
        return False
    return _routes_consumer(application)


@register()
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``aceleryctl.W003``: the consumer is routed but no layer can carry worker events."""
    if not _consumer_routed():
        return []
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    default = layers.get("default") if isinstance(layers, dict) else None
    hint = (
        "Set CHANNEL_LAYERS = {'default': {'BACKEND': 'channels_redis.core.RedisChannelLayer', "
        "'CONFIG': {'hosts': ['redis://...']}}}, the same in the web and worker processes."
    )
    if not default:
        return [
            checks.Warning(
                "the aceleryctl websocket consumer is routed but CHANNEL_LAYERS has no "
                "'default' layer: every websocket handshake will be refused (close 1011)",
                hint=hint,
                id="aceleryctl.W003",
            )
        ]
    backend = str(default.get("BACKEND", "")) if isinstance(default, dict) else ""
    if backend.endswith("InMemoryChannelLayer"):
        return [
            checks.Warning(
                "the 'default' channel layer is InMemoryChannelLayer: it lives inside one "
                "process, so task events published by Celery workers never reach browsers",
                hint=hint,
                id="aceleryctl.W003",
            )
        ]
    return []
