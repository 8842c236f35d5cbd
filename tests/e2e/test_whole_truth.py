"""The page tells the whole truth: no event dropped, the timeline in the events' own
order, a countdown shown as such, a failure shown as a failure, a stored dispatch
never shown as live.

Against the demo served for real (``conftest.demo``: Redis, a Celery worker,
uvicorn), except one test that feeds the page's own card and aceleryctl's client a
fixed out-of-order stream through a stand-in ``WebSocket``: the races a real
worker produces only sometimes, every time.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from .test_demo_page import TASK_TIMEOUT, card, expect_state, shoot

pytestmark = pytest.mark.timeout(120)

#: Every card: the order keys of its timeline chips (ascending when in order), and
#: whether a stored card ever said "live". Installed once the page has loaded.
WATCH_CARDS = """() => {
  window.liveWhileStored = [];
  new MutationObserver(() => {
    for (const task of document.querySelectorAll("#tasks li.task")) {
      const live = task.querySelector(".live");
      if (task.dataset.state === "STORED" && live && live.dataset.live === "live") {
        window.liveWhileStored.push(task.dataset.taskId);
      }
    }
  }).observe(document.getElementById("tasks"), {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
}"""


def chips(task: Locator) -> list[str]:
    """The timeline's chips, as shown (type and label, no time)."""
    texts = task.locator(".timeline li").evaluate_all(
        "(items) => items.map((li) => li.firstChild.textContent)"
    )
    return [str(text) for text in texts]


def chip_orders(task: Locator) -> list[int]:
    orders = task.locator(".timeline li").evaluate_all(
        "(items) => items.map((li) => Number(li.dataset.order))"
    )
    return [int(order) for order in orders]


def test_the_retry_reason_always_shows_and_the_timeline_is_in_order(
    page: Page, artifacts: Path
) -> None:
    page.goto("/")
    for _ in range(3):
        page.click("#start-retrying")
    tasks = page.locator("#tasks li.task", has=page.locator(".task-name", has_text="Retries"))
    expect(tasks).to_have_count(3)
    for index in range(3):
        task = tasks.nth(index)
        expect_state(task, "SUCCESS")
        # The reason the worker retried for, on every card, every run.
        reason = task.locator(".note.retry")
        assert reason.count() == 1, (chips(task), task.inner_text())
        expect(reason).to_contain_text("UpstreamUnavailable")
        expect(reason).to_contain_text("the upstream API answered 503")
        retried = task.locator(".timeline li[data-type=retried]")
        expect(retried).to_have_count(1)
        expect(retried).not_to_have_attribute("data-inferred", "true")
        orders = chip_orders(task)
        assert orders == sorted(orders), chips(task)
        assert chips(task)[-1] == "succeeded", chips(task)
    shoot(page, artifacts / "retries-in-order.png")


#: Feeds the demo's card, through aceleryctl's client, the events of a task retried
#: twice then failed, in the order several processes can deliver them: the retry's
#: reason after the next attempt's first event, a received after its started, the
#: first run's received after the outcome. Resolves with the card's timeline.
OUT_OF_ORDER = """async () => {
  const { TaskCard, follow } = await import("/static/demo_site/tasks.js");
  const key = (attempt, phase, seq = 0) => attempt * 1e10 + phase * 1e9 + seq;
  const base = { task_id: "t-ooo", task_name: "demo", timestamp: 1, progress: null,
    result: null, error_type: null, error_message: null, retry: null,
    correlation_id: null, eta: null };
  const retried = (n, why) => ({ ...base, type: "task.retried", state: "RETRY",
    order: key(n - 1, 4), error_type: "FlakyError", error_message: why,
    retry: { attempt: n, max_retries: 2, reason: why, eta: null } });
  const e = (type, state, order, extra = {}) => ({ ...base, type, state, order, ...extra });
  const stream = [
    e("task.started", "STARTED", key(0, 2)),
    e("task.received", "RECEIVED", key(1, 1)),
    retried(1, "first failure"),
    e("task.started", "STARTED", key(1, 2)),
    e("task.started", "STARTED", key(2, 2)),
    retried(2, "second failure"),
    e("task.received", "RECEIVED", key(2, 1)),
    e("task.failed", "FAILURE", key(2, 5), { error_type: "FlakyError",
      error_message: "for good" }),
    e("task.received", "RECEIVED", key(0, 1)),
  ];
  class Socket {
    constructor() {
      this.readyState = 0;
      setTimeout(() => { this.readyState = 1; this.onopen(); }, 0);
    }
    send(text) {
      const late = JSON.parse(text).late === true;
      const frames = [{ type: "snapshot", task_id: "t-ooo", event: null },
        ...stream.map((event) => ({ type: "event", event }))];
      frames.forEach((frame, i) => setTimeout(
        () => this.onmessage({ data: JSON.stringify(frame) }), 5 * (i + 1)));
      window.askedForLate = late;
    }
    close() { this.readyState = 3; }
  }
  const card = new TaskCard({ label: "out of order", taskId: "t-ooo" });
  document.getElementById("tasks").prepend(card.root);
  window.WebSocket = Socket;
  const handle = follow(card, { task_id: "t-ooo", token: "x", websocket: "/ws/aceleryctl/tasks/" });
  // Ended: the terminal event, then the client's lateWindow for late events.
  while (!handle.closed) await new Promise((resolve) => setTimeout(resolve, 20));
  return {
    chips: [...card.timeline.children].map((li) => li.firstChild.textContent),
    reasons: [...card.notes.querySelectorAll(".note.retry")].map((n) => n.textContent),
    state: card.root.dataset.state,
    late: window.askedForLate,
  };
}"""


def test_events_that_arrive_out_of_order_are_all_shown_in_their_order(page: Page) -> None:
    page.goto("/")
    outcome = page.evaluate(OUT_OF_ORDER)
    assert outcome["late"] is True  # the client asked the server for late events
    assert outcome["chips"] == [
        "received",
        "started",
        "retried 1",
        "received",
        "started",
        "retried 2",
        "received",
        "started",
        "failed",
    ]
    assert len(outcome["reasons"]) == 2
    assert "first failure" in outcome["reasons"][0]
    assert "second failure" in outcome["reasons"][1]
    assert outcome["state"] == "FAILURE"  # late events never changed the state


def test_a_task_with_a_countdown_says_when_it_is_due(page: Page) -> None:
    page.goto("/")
    page.click("#start-add")
    task = card(page, "add(2, 3) in 3 s")
    # From task.sent's eta: not "waiting for a worker" while a worker holds it.
    expect(task.locator(".task-status")).to_contain_text(
        re.compile(r"scheduled for \d{1,2}:\d{2}:\d{2}"), timeout=10_000
    )
    expect(task).to_have_attribute("data-eta", re.compile(r"^\d{4}-\d\d-\d\dT.*\+00:00$"))
    expect(task.locator(".task-status")).not_to_contain_text("waiting for a worker")
    expect_state(task, "SUCCESS")
    expect(task.locator(".task-status")).to_contain_text("5")
    assert chips(task)[0] == "sent", chips(task)


def test_a_failed_task_is_shown_as_a_failure_not_a_full_bar(page: Page, artifacts: Path) -> None:
    page.goto("/")
    page.click("#start-flaky")
    task = card(page, "Retries, then fails")
    expect_state(task, "FAILURE", timeout=TASK_TIMEOUT)
    expect(task.locator(".percent")).to_have_text("failed")
    assert task.get_attribute("data-progress") != "100"
    width = task.locator(".bar > span").evaluate("(span) => span.style.width")
    assert width != "100%", width
    fill = task.locator(".bar > span").evaluate("(span) => getComputedStyle(span).backgroundColor")
    badge = task.locator(".badge").evaluate("(badge) => getComputedStyle(badge).color")
    assert fill != badge, "the bar is painted in the failure colour"
    expect(task.locator(".note.error")).to_contain_text("FlakyError")
    shoot(page, artifacts / "failure.png")


@pytest.mark.usefixtures("live_broker")
def test_a_stored_or_refused_dispatch_is_never_shown_live(page: Page, artifacts: Path) -> None:
    page.goto("/")
    page.evaluate(WATCH_CARDS)
    page.click('#switch button[data-mode="refusing"]')
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "refusing")
    # Durable: stored in the outbox. The card follows it, and says it is stored.
    page.fill("#seconds", "1")
    page.click("#start-long")
    expect_state(card(page, "Long task · 1 s"), "STORED", timeout=10_000)
    task_id = card(page, "Long task · 1 s").get_attribute("data-task-id")
    stored = page.locator(f'#tasks li.task[data-task-id="{task_id}"]')
    live = stored.locator(".live")
    expect(live).to_have_attribute("data-live", "stored")
    expect(live).to_have_text("stored · not in the broker")
    # task.deferred (from the snapshot: this process remembers the dispatch).
    expect(stored.locator(".timeline li[data-type=deferred]")).to_have_count(1, timeout=10_000)
    expect(live).to_have_attribute("data-live", "stored")
    # Not durable: refused, nothing to follow.
    page.uncheck("#durable")
    page.click("#start-long")
    refused = page.locator("#tasks li.task[data-state=NOT_SENT]").first
    expect(refused.locator(".live")).to_have_attribute("data-live", "off")
    expect(refused.locator(".live")).to_contain_text("not dispatched")
    shoot(page, artifacts / "stored-not-live.png")
    # Back on the live broker the relay publishes the stored one: now it is live.
    page.click('#switch button[data-mode="live"]')
    expect_state(stored, "SUCCESS")
    assert page.evaluate("window.liveWhileStored") == []
