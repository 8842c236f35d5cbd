"""The test settings with the Celery app whose schedule has problems, for running
``manage.py aceleryctl_check_schedule`` in a child process."""

from __future__ import annotations

from tests.settings import *  # noqa: F403

ACELERYCTL = {**ACELERYCTL, "CELERY_APP": "tests.django.schedule_fixture:app"}  # noqa: F405
