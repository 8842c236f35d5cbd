"""The ASGI application: ``uvicorn demo_site.asgi:application --lifespan on``.

``with_lifespan`` answers the server's lifespan messages, so aceleryctl's default
controller drains its in-flight publishes when the server shuts down.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from aceleryctl.asgi import with_lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

application = with_lifespan(get_asgi_application())
