"""The demo's own Django app: the ``Report`` model and its migrations."""

from __future__ import annotations

from django.apps import AppConfig


class DemoSiteConfig(AppConfig):
    name = "demo_site"
    verbose_name = "aceleryctl demo"
    default_auto_field = "django.db.models.BigAutoField"
