"""The Celery app of the durable suite's worker: the shared test app
(:mod:`tests.integration.celery_app`), in a process that set Django up with
:mod:`tests.integration.durable.settings` first, as a project's Celery module does.

The ``aceleryctl`` app's ``ready()`` hooks the worker start signals, so the worker
runs what aceleryctl runs in workers; with the outbox on in those settings, that
includes the run-once guard.
"""

from __future__ import annotations

import os

import django
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.durable.settings")
if not apps.ready:
    django.setup()

from tests.integration.celery_app import app

__all__ = ["app"]
