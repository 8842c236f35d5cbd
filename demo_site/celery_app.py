"""The demo's Celery app: ``celery -A demo_site.celery_app worker``.

Configured from Django settings (the ``CELERY_`` names in ``demo_site.settings``),
so the web process and the worker read the same ``REDIS_URL``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

app = Celery("demo_site", include=["demo_site.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
