"""A Celery app for settings tests (memory transport, no network)."""

from celery import Celery

app = Celery("settings-fixture", broker="memory://", set_as_current=False)
