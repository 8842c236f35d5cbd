"""The run-once guard's decisions, against a recording in-memory claim store: keys,
claims, skips, take-overs, settling, eta, and failing open with one record per
outage.

The store fake keeps what a Redis would (key to value and seconds), applies the
claim rule the Lua script applies, and records every call; a manual clock drives
the back-off. The script itself runs against a real Redis in
``tests/integration/run_once/test_store.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from aceleryctl.compat.celery_consumer import MessageAttempt, Verdict
from aceleryctl.worker.guard import CLAIMED, HELD, TAKEN_OVER, Claim, RunOnceGuard, once_key

GUARD_LOGGER = "aceleryctl.guard"


@dataclass
class RecordingStore:
    """An in-memory :class:`~aceleryctl.worker.guard.ClaimStore` that records its calls
    and can be made to fail."""

    values: dict[str, tuple[str, int]] = field(default_factory=dict)
    calls: list[tuple[object, ...]] = field(default_factory=list)
    error: Exception | None = None

    def _maybe_fail(self) -> None:
        if self.error is not None:
            raise self.error

    def claim(
        self, key: str, value: str, ttl: int, copy: str | None, any_copy: bool
    ) -> tuple[int, str]:
        self.calls.append(("claim", key, value, ttl, copy, any_copy))
        self._maybe_fail()
        held = self.values.get(key)
        if held is None:
            self.values[key] = (value, ttl)
            return CLAIMED, ""
        state, held_copy, _ = held[0].split(" ")
        if state == "running" and (any_copy or (copy and held_copy == copy)):
            self.values[key] = (value, ttl)
            return TAKEN_OVER, held[0]
        return HELD, held[0]

    def finish(self, key: str, value: str, ttl: int) -> None:
        self.calls.append(("finish", key, value, ttl))
        self._maybe_fail()
        self.values[key] = (value, ttl)

    def release(self, key: str, value: str) -> None:
        self.calls.append(("release", key, value))
        self._maybe_fail()
        if self.values.get(key, ("",))[0] == value:
            del self.values[key]

    def kinds(self) -> list[object]:
        return [call[0] for call in self.calls]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attempt(
    task_id: str = "t-1", retries: int = 0, nesting: int = 0, eta: float | None = None
) -> MessageAttempt:
    return MessageAttempt("app.add", task_id, retries, nesting, eta)


def guard_on(store: RecordingStore, host: str = "w1@h", clock: Clock | None = None) -> RunOnceGuard:
    return RunOnceGuard(
        store,
        hostname=host,
        done_ttl=86_400,
        running_ttl=3_600,
        retry_after=5.0,
        clock=clock or Clock(),
        wall=lambda: 1_000.0,
    )


def claimed(verdict: Verdict | Claim) -> Claim:
    assert isinstance(verdict, Claim), verdict
    return verdict


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == GUARD_LOGGER and r.levelno == level]


def test_the_key_is_the_task_id_and_attempt() -> None:
    assert once_key(attempt("abc", 0)) == "aceleryctl:once:abc:0"
    assert once_key(attempt("abc", 2)) == "aceleryctl:once:abc:2"
    # Task.replace hands the id on with retries back at 0: another run, another key.
    assert once_key(attempt("abc", 0, nesting=1)) == "aceleryctl:once:abc:0:1"


def test_a_message_is_claimed_running_and_done_when_acked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RecordingStore()
    claim = claimed(guard_on(store, "w1@h").admit(attempt(), "tag-a", False))
    assert store.calls == [
        ("claim", "aceleryctl:once:t-1:0", "running tag-a w1@h", 3_600, "tag-a", False)
    ]
    assert guard_on(store, "w2@h").admit(attempt(), "tag-b", False) is Verdict.DROP
    claim.acked()
    assert store.values["aceleryctl:once:t-1:0"] == ("done tag-a w1@h", 86_400)
    assert guard_on(store, "w2@h").admit(attempt(), "tag-c", False) is Verdict.DROP
    assert records(caplog, logging.WARNING) == [
        "Skipped a second copy of task app.add[t-1] attempt 0: it is running on w1@h",
        "Skipped a second copy of task app.add[t-1] attempt 0: it already ran on w1@h",
    ]


def test_without_a_known_copy_the_claim_says_so() -> None:
    store = RecordingStore()
    claim = claimed(guard_on(store).admit(attempt(), None, False))
    assert store.calls[0][2:] == ("running - w1@h", 3_600, None, False)
    claim.acked()
    assert store.values["aceleryctl:once:t-1:0"] == ("done - w1@h", 86_400)


def test_celery_retries_are_new_attempts() -> None:
    store = RecordingStore()
    guard = guard_on(store)
    for retries in range(3):
        claimed(guard.admit(attempt(retries=retries), f"tag-{retries}", False)).acked()
    assert sorted(store.values) == [f"aceleryctl:once:t-1:{n}" for n in range(3)]


def test_a_requeued_message_gives_its_claim_up() -> None:
    store = RecordingStore()
    claim = claimed(guard_on(store).admit(attempt(), "tag-a", False))
    claim.rejected(requeue=True)
    assert "aceleryctl:once:t-1:0" not in store.values
    assert store.calls[-1] == ("release", "aceleryctl:once:t-1:0", claim.value)
    # The requeued message then runs wherever it lands.
    claimed(guard_on(store, "w2@h").admit(attempt(), "tag-a", True))


def test_a_rejected_message_not_requeued_is_done() -> None:
    store = RecordingStore()
    claimed(guard_on(store).admit(attempt(), "tag-a", False)).rejected(requeue=False)
    assert store.values["aceleryctl:once:t-1:0"][0] == "done tag-a w1@h"


def test_an_abandoned_message_gives_its_claim_up_but_never_another_copys() -> None:
    store = RecordingStore()
    mine = claimed(guard_on(store).admit(attempt(), "tag-a", False))
    store.values[mine.key] = ("running tag-b w2@h", 3_600)  # say, after mine expired
    mine.abandoned()
    assert store.values[mine.key] == ("running tag-b w2@h", 3_600)
    store.values[mine.key] = (mine.value, 3_600)
    mine.abandoned()
    assert mine.key not in store.values


def test_the_same_copy_coming_back_takes_its_claim_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, GUARD_LOGGER)
    store = RecordingStore()
    claimed(guard_on(store, "w1@h").admit(attempt(), "tag-a", False))
    # w1 died (or shut down) before settling; Redis gives the same envelope back.
    again = claimed(guard_on(store, "w2@h").admit(attempt(), "tag-a", True))
    assert store.values[again.key][0] == "running tag-a w2@h"
    assert records(caplog, logging.INFO) == [
        "Running task app.add[t-1] attempt 0: its message came back unacked "
        "(claimed by w1@h, which never settled it)"
    ]
    # Another copy is still skipped, even redelivered: it has its own tag.
    assert guard_on(store, "w3@h").admit(attempt(), "tag-c", True) is Verdict.DROP
    assert store.calls[-1][4:] == ("tag-c", False)


def test_the_same_copy_never_takes_a_settled_claim_over() -> None:
    store = RecordingStore()
    # Marked done before the ack was sent; the worker died before the ack landed, so
    # the broker gives the message back (acks_late: the run ended; early ack: it began).
    claimed(guard_on(store).admit(attempt(), "tag-a", False)).acked()
    assert guard_on(store, "w2@h").admit(attempt(), "tag-a", True) is Verdict.DROP


def test_without_copy_ids_a_redelivered_message_takes_a_running_claim_over() -> None:
    # RabbitMQ: delivery tags say nothing about the publish; redelivered does.
    store = RecordingStore()
    claimed(guard_on(store).admit(attempt(), None, False))
    assert guard_on(store, "w2@h").admit(attempt(), None, False) is Verdict.DROP
    claimed(guard_on(store, "w2@h").admit(attempt(), None, True))
    assert store.calls[-1][4:] == (None, True)


def test_an_eta_message_is_claimed_until_its_eta_and_then_for_its_ttl() -> None:
    store = RecordingStore()
    guard = guard_on(store)
    guard.admit(attempt("later", eta=1_000.0 + 90.2), "tag-a", False)
    guard.admit(attempt("past", eta=1_000.0 - 50), "tag-b", False)
    assert [call[3] for call in store.calls] == [3_600 + 91, 3_600]


def test_a_failing_store_lets_tasks_run_and_is_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, GUARD_LOGGER)
    clock = Clock()
    store = RecordingStore(error=ConnectionError("Error 111 connecting to 127.0.0.1:1"))
    guard = guard_on(store, clock=clock)
    assert guard.admit(attempt("a"), "tag-a", False) is Verdict.RUN
    assert len(store.calls) == 1
    # Resting: the store is not asked again for retry_after seconds.
    assert guard.admit(attempt("b"), "tag-b", False) is Verdict.RUN
    assert len(store.calls) == 1
    clock.now += 5.0
    assert guard.admit(attempt("c"), "tag-c", False) is Verdict.RUN
    assert len(store.calls) == 2
    [error] = records(caplog, logging.ERROR)
    assert "cannot reach its Redis (ConnectionError: Error 111" in error
    assert "tasks run unguarded" in error
    assert "ACELERYCTL['RUN_ONCE']['REDIS_URL']" in error
    # Back again: one record says so, and claims are made again.
    store.error = None
    clock.now += 5.0
    claimed(guard.admit(attempt("d"), "tag-d", False))
    assert records(caplog, logging.WARNING) == [
        "The run-once guard reaches its Redis again: tasks are guarded"
    ]
    assert len(records(caplog, logging.ERROR)) == 1


def test_settling_while_the_store_fails_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    store = RecordingStore()
    guard = guard_on(store)
    first, second, third = (
        claimed(guard.admit(attempt(f"t-{n}"), f"tag-{n}", False)) for n in range(3)
    )
    store.error = TimeoutError("Timeout reading from socket")
    first.acked()
    second.rejected(requeue=True)  # resting: not even tried
    third.abandoned()
    assert store.kinds() == ["claim", "claim", "claim", "finish"]
    assert len(records(caplog, logging.ERROR)) == 1
