"""The Celery app of the running variant and its one task, ``bench.add``.

django-celery-outbox's variant uses its ``OutboxCelery`` app (whose
``send_task`` writes the outbox row); the others a plain ``Celery`` app. The
task's class is Celery's ``DjangoTask`` (what Celery's Django fixup gives every
task in a Django project), which has ``delay_on_commit``; it keeps Celery's stock
``apply_async``, so aceleryctl's direct path takes it.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.contrib.django.task import DjangoTask

from bench.outboxsite.settings import REDIS_ENV, VARIANT

QUEUE = "bench-outbox"


def make_app(variant: str) -> Celery:
    """The Celery app for ``variant`` (see :mod:`bench.outboxsite.settings`)."""
    url = os.environ.get(REDIS_ENV, "redis://127.0.0.1:1")
    cls: type[Celery] = Celery
    if variant.endswith("dco"):
        from django_celery_outbox import OutboxCelery

        cls = OutboxCelery
    made = cls("aceleryctl_bench_outbox", set_as_current=False)
    made.conf.update(
        broker_url=f"{url}/0",
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 5},
    )

    @made.task(name="bench.add", shared=False, base=DjangoTask)
    def add(x: int, y: int) -> int:
        return x + y

    return made


app = make_app(VARIANT)
add = app.tasks["bench.add"]
