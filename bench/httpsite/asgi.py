"""``uvicorn bench.httpsite.asgi:application``: Django's own ASGI handler, nothing around it."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.httpsite.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
