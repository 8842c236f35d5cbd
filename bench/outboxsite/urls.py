"""The URLs of :mod:`bench.outboxsite.views` (``python -m bench.http_outbox``)."""

from __future__ import annotations

from django.urls import path

from bench.outboxsite import views

urlpatterns = [
    path("trivial", views.trivial),
    path("write", views.write_only),
    path("controller", views.controller_on_commit),
    path("celery", views.celery_on_commit),
]
