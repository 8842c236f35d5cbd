"""The digest of on-commit dispatches refused by the open breaker: one record per
interval, and nothing left to a timer once the controller has closed."""

from __future__ import annotations

import logging
import threading

import pytest
from celery import Celery

from aceleryctl import AsyncCeleryController
from aceleryctl.dispatch.record import Dispatch, DispatchKind
from aceleryctl.dispatch.refusals import RefusalDigest

WAIT = 10.0


class Clock:
    """Monotonic seconds, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def digests(caplog: pytest.LogCaptureFixture, task: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aceleryctl.controller" and task in getattr(r, "refused_tasks", {})
    ]


def test_close_writes_what_waits_for_the_timer_and_stops_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "aceleryctl.controller")
    digest = RefusalDigest(interval=3600.0, clock=Clock())
    digest.add("refusals.a", lost=True)  # written at once: the first after a quiet spell
    digest.add("refusals.a", lost=False)  # waits for a timer an hour away
    digest.add("refusals.b", lost=True)
    assert len(digests(caplog, "refusals.a")) == 1
    timer = digest._timer
    assert timer is not None
    assert timer.is_alive()

    digest.close()

    _, second = digests(caplog, "refusals.a")
    assert second.refused_tasks == {"refusals.a": 1, "refusals.b": 1}  # type: ignore[attr-defined]
    assert (second.refused_count, second.lost_count) == (2, 1)  # type: ignore[attr-defined]
    timer.join(WAIT)
    assert not timer.is_alive()  # cancelled, not left to write an empty record later


def test_after_close_a_refusal_is_written_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aceleryctl.controller")
    digest = RefusalDigest(interval=3600.0, clock=Clock())
    digest.add("refusals.c", lost=True)
    digest.close()
    digest.add("refusals.c", lost=False)
    assert digest._timer is None
    assert [r.refused_count for r in digests(caplog, "refusals.c")] == [1, 1]  # type: ignore[attr-defined]
    digest.close()  # twice is harmless and writes nothing more
    assert len(digests(caplog, "refusals.c")) == 2


def test_closing_the_controller_writes_the_pending_digest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "aceleryctl.controller")
    app = Celery("refusals", broker="memory://", set_as_current=False)

    @app.task(name="refusals.d", shared=False)
    def d() -> None:
        return None

    ctl = AsyncCeleryController(app, max_workers=1)
    ctl.breaker.force_open()
    for i in range(3):
        dispatch = Dispatch(
            DispatchKind.TASK,
            "refusals.d",
            f"d-{i}",
            (),
            {},
            {"task_id": f"d-{i}"},
            WAIT,
            "delay_on_commit",
            target=d,
        )
        ctl._engine.submit_detached(dispatch)
    assert [r.refused_count for r in digests(caplog, "refusals.d")] == [1]  # type: ignore[attr-defined]
    before = threading.active_count()

    assert ctl.sync.close(WAIT)

    assert [r.refused_count for r in digests(caplog, "refusals.d")] == [1, 2]  # type: ignore[attr-defined]
    assert threading.active_count() <= before
