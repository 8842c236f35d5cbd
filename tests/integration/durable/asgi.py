"""The ASGI app uvicorn serves in the durable suite (``tests.integration.durable.views``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.durable.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()
