"""``manage.py aceleryctl_health``: check the broker through aceleryctl's bounded path.

Builds a controller from the settings (in this process), connects to the broker
exactly as a publish would, and prints the configuration, the probe result and
the statistics. Exits 1 when the broker does not answer within the deadline, so
it serves as a readiness probe. With the outbox on it also prints the outbox's
depth, its oldest pending row's age and when a relay last finished a round.
Breaker state is per process: a web process's breaker is seen through its own
``controller.health()`` (a status view).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aceleryctl.conf import build_controller, load_settings
from aceleryctl.exceptions import TaskDispatchError


class Command(BaseCommand):
    help = "Probe the Celery broker through aceleryctl's bounded publish path."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds (default: DISPATCH_TIMEOUT)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        conf = load_settings()
        controller = build_controller(conf)
        report: dict[str, Any] = {"broker": _safe_url(controller.app.conf.broker_url)}
        try:
            report["connect_seconds"] = round(controller.sync.probe(options["timeout"]), 4)
            report["reachable"] = True
        except TaskDispatchError as exc:
            report["reachable"] = False
            report["error"] = f"{type(exc).__name__}: {exc}"
        report.update(controller.health())
        controller.sync.close(0)
        if options["json"]:
            self.stdout.write(json.dumps(report, sort_keys=True))
        else:
            for key in ("broker", "reachable", "connect_seconds", "error", "bounded_transport"):
                if key in report:
                    self.stdout.write(f"{key}: {report[key]}")
            self.stdout.write(
                f"dispatch_timeout: {conf.dispatch_timeout} s, max_workers: {conf.max_workers}"
            )
            outbox = report["outbox"]
            if outbox.get("enabled"):
                self.stdout.write(
                    "outbox: " + ", ".join(f"{k}: {v}" for k, v in outbox.items() if k != "enabled")
                )
        if not report["reachable"]:
            raise CommandError("the broker did not answer: " + report["error"])


def _safe_url(url: object) -> str:
    from aceleryctl._logging import scrub_credentials

    return scrub_credentials(str(url))
