"""The worker side loads in workers only: ``import aceleryctl`` and ``django.setup()``
in a web process import no worker module and register no after-fork hook, exit
handler or log filter that only a worker needs; a worker start signal connects
every receiver.

Each case runs a fresh interpreter, since this test process has imported
everything long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: Records what the imports register, then prints it as JSON.
_PROBE = """
import atexit, json, logging, os, sys

registered = {"fork": [], "atexit": [], "filters": []}

def where(function):
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"

real_fork, real_atexit = os.register_at_fork, atexit.register
real_filter = logging.Filterer.addFilter

def record_fork(**hooks):
    registered["fork"].extend(where(f) for f in hooks.values())
    return real_fork(**hooks)

def record_atexit(function, *args, **kwargs):
    registered["atexit"].append(where(function))
    return real_atexit(function, *args, **kwargs)

def record_filter(self, item):
    registered["filters"].append(type(item).__module__ + "." + type(item).__qualname__)
    return real_filter(self, item)

os.register_at_fork, atexit.register, logging.Filterer.addFilter = (
    record_fork, record_atexit, record_filter
)

import aceleryctl
import django
django.setup()
import aceleryctl.consumers, aceleryctl.correlation, aceleryctl.events, aceleryctl.routing
import aceleryctl.signals, aceleryctl.tokens
from aceleryctl import report_progress
from aceleryctl.signals import report_progress as also
STEP
registered["modules"] = sorted(m for m in sys.modules if m.startswith("aceleryctl"))
registered["connected"] = aceleryctl.signals.is_connected()
from celery import signals
registered["receivers"] = {
    name: sorted(
        where(r() if callable(r) and not hasattr(r, "__name__") else r)
        for _, r in getattr(signals, name).receivers
    )
    for name in ("task_prerun", "task_postrun", "task_received", "task_success",
                 "task_failure", "task_retry", "before_task_publish", "after_task_publish")
}
print(json.dumps(registered))
"""


def probe(step: str = "") -> dict[str, Any]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.replace("STEP", step)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ours(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("aceleryctl")]


def test_a_web_process_loads_nothing_of_the_worker_side() -> None:
    found = probe()
    assert [m for m in found["modules"] if m.startswith("aceleryctl.worker")] == []
    assert found["connected"] == {"events": False, "logging": False}
    # What the web side needs stays: the controller's exit handler, the dispatch
    # ids' after-fork reseed (both dispatch side).
    assert ours(found["atexit"]) == ["aceleryctl.conf.close_default_controller"]
    assert all(hook.startswith("aceleryctl.dispatch.ids.") for hook in ours(found["fork"])), found[
        "fork"
    ]
    assert ours(found["filters"]) == []
    # No worker receiver; the web process's task.sent source is its only publish hook.
    for name, receivers in found["receivers"].items():
        expected = ["aceleryctl.live.sent.on_published"] if name == "after_task_publish" else []
        assert ours(receivers) == expected, name


def test_a_worker_start_connects_every_receiver_once() -> None:
    found = probe(
        "from celery import signals as s\n"
        "s.worker_init.send(sender=None)\n"
        "s.worker_process_init.send(sender=None)\n"
    )
    assert found["connected"] == {"events": True, "logging": True}
    receivers = {name: ours(names) for name, names in found["receivers"].items()}
    assert receivers["task_prerun"] == sorted(
        [
            "aceleryctl.correlation.enter_correlation",
            "aceleryctl.worker.execlog.on_prerun",
            "aceleryctl.worker.receivers.on_prerun",
        ]
    )
    assert receivers["task_postrun"] == sorted(
        ["aceleryctl.correlation.leave_correlation", "aceleryctl.worker.receivers.on_postrun"]
    )
    assert receivers["task_received"] == ["aceleryctl.worker.receivers.on_received"]
    assert receivers["before_task_publish"] == ["aceleryctl.worker.retry.on_before_publish"]
    assert receivers["after_task_publish"] == ["aceleryctl.live.sent.on_published"]
    assert receivers["task_retry"] == sorted(
        ["aceleryctl.worker.execlog.on_retry", "aceleryctl.worker.receivers.on_retry"]
    )


def test_a_project_that_connected_itself_is_left_as_it_is() -> None:
    found = probe(
        "aceleryctl.signals.connect(events=False)\n"
        "from celery import signals as s\n"
        "s.worker_init.send(sender=None)\n"
    )
    assert found["connected"] == {"events": False, "logging": True}
    assert ours(found["receivers"]["task_received"]) == []
