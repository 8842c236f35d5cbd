"""The WSGI app waitress serves in the durable suite (``tests.integration.durable.views``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.durable.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
