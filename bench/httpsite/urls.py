from __future__ import annotations

from django.urls import path

from bench.httpsite import views

urlpatterns = [
    path("trivial", views.trivial),
    path("s2a", views.s2a),
    path("s2a-free", views.s2a_free),
    path("sync", views.sync_delay),
    path("controller", views.ctl),
    path("controller-loop", views.ctl_loop),
    path("controller-noop", views.ctl_noop),
    path("loop-prototype", views.loop_prototype),
    path("loop-minimal", views.loop_minimal),
    path("sync-facade", views.sync_facade),
]
