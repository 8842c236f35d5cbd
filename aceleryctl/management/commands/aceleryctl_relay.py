"""``manage.py aceleryctl_relay``: publish the outbox's pending dispatches.

Long-running by default (stop it with SIGTERM or Ctrl-C; the round in progress
finishes first); ``--once`` publishes what is due until nothing is, then exits.
Builds its own controller from the settings, so its breaker and pool are its
own, and loads the Celery app's task modules first (the rows name tasks).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from aceleryctl.conf import build_controller, load_settings
from aceleryctl.live.sent import attach_live_events
from aceleryctl.outbox.config import outbox_settings
from aceleryctl.outbox.relay import Relay


class Command(BaseCommand):
    help = "Publish the aceleryctl outbox's pending dispatches (see docs/durability.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="publish what is due, then exit")
        parser.add_argument(
            "--database", default=None, help="the outbox's database alias (default: OUTBOX)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        conf = outbox_settings()
        controller = build_controller(load_settings())
        attach_live_events(controller)  # task.sent of what it publishes, when events are on
        controller.app.loader.import_default_modules()
        relay = Relay(controller, settings=conf, database=options["database"])
        stop = threading.Event()
        if not options["once"]:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            self.stdout.write(f"aceleryctl relay on database {relay.database!r}; Ctrl-C stops")
        try:
            totals = relay.run(stop, until_idle=options["once"])
        finally:
            controller.sync.close()
        self.stdout.write(
            f"relay stopped: {totals['published']} published, "
            f"{totals['dead_lettered']} dead-lettered"
        )
