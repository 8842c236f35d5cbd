"""``uvicorn bench.outboxsite.asgi:application``: Django's own ASGI handler, nothing
around it (``python -m bench.http_outbox`` sets the variant's environment)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.outboxsite.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
