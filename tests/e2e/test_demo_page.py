"""A person uses the demo page: starts tasks and watches them live from the worker.

Every test runs against the demo served for real (``conftest.demo``): Redis, a
Celery worker and uvicorn, with the page's websocket subscriptions going through
aceleryctl's consumer and JavaScript client.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, expect

from .conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, Demo

#: Milliseconds a task may take to reach a state the test waits for.
TASK_TIMEOUT = 25_000

pytestmark = pytest.mark.timeout(90)


def card(page: Page, label: str) -> Locator:
    """The newest task card whose title is ``label``."""
    return page.locator("#tasks li.task", has=page.locator(".task-name", has_text=label)).first


def expect_state(task: Locator, state: str, timeout: int = TASK_TIMEOUT) -> None:
    expect(task).to_have_attribute("data-state", state, timeout=timeout)


#: With this set to a folder (``docs/img``), each screenshot is also written there:
#: how the "Try the demo" page's pictures are made.
DOC_SCREENSHOTS = os.environ.get("ACELERYCTL_DOC_SCREENSHOTS")


def shoot(page: Page, path: Path) -> None:
    """A full-page screenshot, animations stopped, for people to look at (and, with
    ``ACELERYCTL_DOC_SCREENSHOTS``, for the docs, at the viewport's size)."""
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    if DOC_SCREENSHOTS:
        name = path.name if path.name.startswith("demo-") else f"demo-{path.name}"
        target = Path(DOC_SCREENSHOTS) / name
        page.screenshot(path=str(target), full_page=False, animations="disabled")


def post_json(page: Page, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST as the page's own scripts do (same cookies, Django's CSRF header)."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    response = page.request.post(
        path,
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "X-CSRFToken": cookies["csrftoken"]},
    )
    assert response.status == 202, f"{path}: HTTP {response.status}: {response.text()}"
    answer: dict[str, Any] = response.json()
    return answer


def test_long_task_progress_advances_and_the_result_arrives(page: Page) -> None:
    page.goto("/")
    page.fill("#seconds", "4")
    page.click("#start-long")
    task = card(page, "Long task · 4 s")
    expect(task.locator(".live")).to_have_attribute("data-live", "live", timeout=10_000)
    expect_state(task, "PROGRESS")
    first = int(task.get_attribute("data-progress") or "0")
    # The bar moves on while the task still runs: progress events from the worker.
    page.wait_for_function(
        "([el, seen]) => el.dataset.state === 'PROGRESS' && Number(el.dataset.progress) > seen",
        arg=[task.element_handle(), first],
        timeout=10_000,
    )
    expect(task.locator(".task-status")).to_contain_text(re.compile(r"step \d+ of 16"))
    expect_state(task, "SUCCESS")
    expect(task.locator(".badge")).to_have_text("SUCCESS")
    expect(task).to_have_attribute("data-progress", "100")
    expect(task.locator(".task-status")).to_contain_text('{"current":16,"total":16}')
    expect(task.locator(".timeline li[data-type=succeeded]")).to_be_visible()
    expect(task.locator(".live")).to_have_attribute("data-live", "done")


def test_a_failing_task_shows_its_retries_and_its_error(page: Page) -> None:
    page.goto("/")
    page.click("#start-flaky")
    task = card(page, "Retries, then fails")
    expect_state(task, "FAILURE")
    error = task.locator(".note.error")
    expect(error).to_contain_text("FlakyError")
    expect(error).to_contain_text("the flaky task failed on attempt 3 (on purpose)")
    # Two retries before the failure: retried 1 and retried 2 in the timeline.
    expect(task.locator(".timeline li[data-type=retried]")).to_have_count(2)
    expect(task.locator(".badge")).to_have_text("FAILURE")


def test_a_django_task_enqueued_with_aenqueue_is_followed_live(page: Page) -> None:
    page.goto("/")
    page.click("#start-django")
    task = card(page, "Django task · count_words")
    expect_state(task, "SUCCESS")
    expect(task.locator(".timeline li[data-type=progress]").first).to_be_visible()
    expect(task.locator(".task-status")).to_contain_text('"words":9')


def test_several_tasks_at_once_and_the_finished_page(page: Page, artifacts: Path) -> None:
    page.goto("/")
    page.fill("#seconds", "3")
    page.click("#start-long")
    page.click("#start-retrying")
    page.click("#start-flaky")
    page.click("#start-report")
    page.click("#start-add")
    tasks = page.locator("#tasks li.task")
    expect(tasks).to_have_count(5)
    # Several followed at the same time, each on its own websocket.
    expect(page.locator("#count-active")).not_to_have_text("0")
    expect_state(card(page, "Long task · 3 s"), "SUCCESS")
    retrying = card(page, "Retries, then succeeds")
    expect_state(retrying, "SUCCESS")
    expect(retrying.locator(".timeline li[data-type=retried]")).to_have_count(1)
    expect(retrying.locator(".task-status")).to_contain_text('"attempts":2')
    expect_state(card(page, "Retries, then fails"), "FAILURE")
    expect_state(card(page, "Create a report"), "SUCCESS")
    expect_state(card(page, "add(2, 3) in 3 s"), "SUCCESS")
    expect(card(page, "add(2, 3) in 3 s").locator(".task-status")).to_contain_text("5")
    expect(page.locator("#count-active")).to_have_text("0")
    expect(page.locator("#count-done")).to_have_text("5")
    # The status panel reads controller.health() every second.
    expect(page.locator("#breaker")).to_have_attribute("data-state", "closed")
    expect(page.locator("#m-dispatched")).to_have_text(re.compile(r"^[1-9][0-9]*$"))
    shoot(page, artifacts / "demo-finished.png")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    expect(page.locator("#start-long")).to_be_in_viewport()
    shoot(page, artifacts / "demo-finished-narrow.png")


def test_a_task_started_from_the_drf_endpoint_shows_up_live(page: Page) -> None:
    page.goto("/")  # a session: the token is bound to it
    started = post_json(page, "/api/reports/", {"title": "started from DRF"})
    assert started["task"] == "demo_site.tasks.process_report"
    assert started["audit_sent"] is True
    page.goto(f"{started['page_url']}#token={started['token']}")
    task = page.locator("#tasks li.task").first
    expect(task).to_have_attribute("data-task-id", started["task_id"])
    expect_state(task, "SUCCESS")
    expect(task.locator(".task-status")).to_contain_text('"word_count":3')
    expect(task.locator(".timeline li[data-type=progress]")).to_be_visible()
    expect(page.locator("#refusal")).to_be_hidden()

    # And from the page's own DRF button.
    page.goto("/")
    page.click("#start-report")
    report = card(page, "Create a report")
    expect(report.locator(".via")).to_have_text("DRF")
    expect_state(report, "SUCCESS")


def test_a_viewset_action_queues_several_tasks_that_show_up_live(page: Page) -> None:
    page.goto("/")  # a session: the tokens are bound to it
    created = post_json(page, "/api/reports/", {"title": "to be reprocessed"})
    report_id = created["report"]["id"]
    queued = post_json(page, f"/api/report-records/{report_id}/reprocess/", {})
    assert queued["report"] == report_id
    names = [t["task"] for t in queued["tasks"]]
    assert names == ["demo_site.tasks.process_report", "demo_site.tasks.record_audit"]
    assert queued["tasks"][1]["countdown"] == 2
    for started in queued["tasks"]:
        page.goto(f"{started['page_url']}#token={started['token']}")
        task = page.locator("#tasks li.task").first
        expect(task).to_have_attribute("data-task-id", started["task_id"])
        expect_state(task, "SUCCESS")


def test_a_forged_token_is_refused(page: Page, artifacts: Path) -> None:
    page.goto("/")
    started = post_json(page, "/api/tasks/long/", {"seconds": 1})
    genuine = started["token"]
    forged = genuine[:-4] + ("AAAA" if not genuine.endswith("AAAA") else "BBBB")
    page.goto(f"{started['page_url']}#token={forged}")
    refusal = page.locator("#refusal")
    expect(refusal).to_be_visible(timeout=10_000)
    expect(refusal).to_contain_text("Subscription refused (4403)")
    expect(refusal).to_contain_text("the subscription token is not valid")
    task = page.locator("#tasks li.task").first
    expect_state(task, "REFUSED")
    expect(task.locator(".timeline li")).to_have_count(0)
    shoot(page, artifacts / "forged-token.png")

    # The genuine token, in the same session, is accepted. (Through another page:
    # a new fragment alone would not load the page again.)
    page.goto("/")
    page.goto(f"{started['page_url']}#token={genuine}")
    expect_state(page.locator("#tasks li.task").first, "SUCCESS")


def test_a_token_from_another_session_is_refused(page: Page, browser: Browser, demo: Demo) -> None:
    page.goto("/")
    started = post_json(page, "/api/tasks/long/", {"seconds": 1})
    other = browser.new_context(base_url=demo.base_url)
    try:
        stranger = other.new_page()
        stranger.goto("/")
        stranger.goto(f"{started['page_url']}#token={started['token']}")
        expect(stranger.locator("#refusal")).to_contain_text(
            "the subscription token was issued to another session", timeout=10_000
        )
    finally:
        other.close()


@pytest.mark.usefixtures("live_broker")
def test_the_dead_broker_switch_fails_fast_and_recovers(page: Page, artifacts: Path) -> None:
    page.goto("/")
    expect(page.locator("#breaker")).to_have_attribute("data-state", "closed")
    # Not durable: each dispatch error comes back to the page (durable=True would store
    # the dispatches in the outbox instead; see the next test).
    page.uncheck("#durable")
    page.click('#switch button[data-mode="refusing"]')
    expect(page.locator('#switch button[data-mode="refusing"]')).to_have_attribute(
        "aria-checked", "true"
    )
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "refusing")
    page.fill("#seconds", "2")
    # A refused connection: BrokerError, nothing sent. Three of them open the breaker.
    for count in range(1, 4):
        page.click("#start-long")
        expect(page.locator("#tasks li.task[data-state=NOT_SENT]")).to_have_count(count)
    newest = page.locator("#tasks li.task").first
    expect(newest.locator(".note.error strong")).to_have_text("BrokerError")
    expect(page.locator("#breaker")).to_have_attribute("data-state", "open", timeout=5_000)
    expect(page.locator("#breaker-extra")).to_contain_text("probe in")
    # Now refused by the open breaker in microseconds, with a retry_after.
    page.click("#start-long")
    expect(page.locator("#tasks li.task[data-state=NOT_SENT]")).to_have_count(4)
    expect(newest.locator(".note.error strong")).to_have_text("CircuitOpenError")
    expect(newest.locator(".note.error")).to_contain_text(re.compile(r"Retry in \d+(\.\d)? s"))
    expect(page.locator("#m-rejected_open")).not_to_have_text("0")
    shoot(page, artifacts / "dead-broker.png")

    # A broker that accepts and never answers: the 1 s deadline, outcome unknown.
    page.click('#switch button[data-mode="silent"]')
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "silent")
    page.click("#start-long")
    expect(newest).to_have_attribute("data-state", "UNKNOWN", timeout=10_000)
    expect(newest.locator(".note.unknown strong")).to_have_text("DispatchTimeout")
    shoot(page, artifacts / "silent-broker.png")

    # Back on the live broker, dispatch works again at once.
    page.click('#switch button[data-mode="live"]')
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "live")
    expect(page.locator("#breaker")).to_have_attribute("data-state", "closed", timeout=5_000)
    page.click("#start-long")
    expect_state(newest, "SUCCESS")
    shoot(page, artifacts / "recovered.png")


def report_status(page: Page, task_id: str) -> str:
    """The ``status`` of the report whose processing task is ``task_id`` (DRF list)."""
    response = page.request.get("/api/reports/")
    assert response.ok, f"/api/reports/: HTTP {response.status}"
    reports: list[dict[str, Any]] = response.json()
    return next(str(r["status"]) for r in reports if r["task_id"] == task_id)


@pytest.mark.usefixtures("live_broker")
def test_dispatches_stored_while_the_broker_is_dead_run_once_it_is_back(
    page: Page, artifacts: Path
) -> None:
    page.goto("/")
    outbox_pending = page.locator("#o-pending")
    expect(outbox_pending).to_have_text("0")  # the panel has read ahealth()["outbox"]
    expect(page.locator("#o-relay")).to_have_text(re.compile(r"^\d+\.\d s ago$"))
    page.click('#switch button[data-mode="refusing"]')
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "refusing")

    # The report's processing is written to the outbox in the report's transaction;
    # its after-commit publish fails, so the row stays and the card says so.
    page.click("#start-report")
    report = card(page, "Create a report")
    expect_state(report, "STORED", timeout=10_000)
    expect(report.locator(".task-status")).to_have_text("stored, waiting for the broker")
    expect(report.locator(".note.stored")).to_contain_text("BrokerError")
    report_id = report.get_attribute("data-task-id") or ""
    assert report_status(page, report_id) == "queued"

    # A durable dispatch from an async view: stored instead of an error.
    expect(page.locator("#durable")).to_be_checked()
    page.fill("#seconds", "1")
    page.click("#start-long")
    long_task = card(page, "Long task · 1 s")
    expect_state(long_task, "STORED", timeout=10_000)
    expect(long_task.locator(".task-status")).to_have_text("stored, waiting for the broker")
    # BrokerError, or CircuitOpenError once three failures have opened the breaker.
    expect(long_task.locator(".note.stored")).to_contain_text(
        re.compile(r"BrokerError|CircuitOpenError")
    )
    expect(page.locator("#tasks li.task[data-state=NOT_SENT]")).to_have_count(0)

    # The panel shows them waiting in the outbox.
    expect(outbox_pending).to_have_text(re.compile(r"^[1-9][0-9]*$"), timeout=5_000)
    expect(page.locator("#o-oldest")).to_have_text(re.compile(r"^\d+\.\d s$"))
    shoot(page, artifacts / "outbox-stored.png")
    assert report_status(page, report_id) == "queued"  # not run while the broker is dead

    # Back on the live broker, the relay publishes both; the page follows them live.
    page.click('#switch button[data-mode="live"]')
    expect(page.locator("#broker-chip")).to_have_attribute("data-mode", "live")
    expect_state(report, "SUCCESS")
    expect(report.locator(".task-status")).to_contain_text('"word_count":')
    expect(report.locator(".note", has_text="Published by the relay")).to_be_visible()
    expect_state(long_task, "SUCCESS")
    expect(outbox_pending).to_have_text("0", timeout=10_000)
    expect(page.locator("#o-dead")).to_have_text("0")
    assert report_status(page, report_id) == "done"
    shoot(page, artifacts / "outbox-published.png")


#: A page of another site that follows a task of the demo with aceleryctl's client.
FOREIGN_PAGE = "http://evil.example/"
FOLLOW_FROM_ELSEWHERE = """async ([url, taskId, token]) => {
  const { subscribe } = await import("/client.js");
  const seen = [];
  const ended = new Promise((resolve) => {
    subscribe(url, {
      taskId, token,
      onSubscribed: () => seen.push("subscribed"),
      onEvent: (event) => seen.push(event.type),
      onError: (error) => seen.push(`error ${error.code}`),
      onClose: (info) => resolve({ ...info, seen }),
    });
  });
  const stuck = new Promise((resolve) => setTimeout(() => resolve({ stuck: seen }), 20000));
  return Promise.race([ended, stuck]);
}"""


def test_a_page_of_another_site_is_refused_at_once(
    page: Page, playwright: Playwright, demo: Demo
) -> None:
    page.goto("/")
    started = post_json(page, "/api/tasks/long/", {"seconds": 1})  # a genuine token
    client_js = (REPO_ROOT / "aceleryctl" / "static" / "aceleryctl" / "client.js").read_text()
    # Chromium blocks a public site's connections to 127.0.0.1 (Local Network Access)
    # before they reach any server; a public aceleryctl is not subject to that.
    args = [*CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        evil = browser.new_page()
        evil.route(FOREIGN_PAGE, lambda route: route.fulfill(content_type="text/html", body="hi"))
        evil.route(
            FOREIGN_PAGE + "client.js",
            lambda route: route.fulfill(content_type="text/javascript", body=client_js),
        )
        evil.goto(FOREIGN_PAGE)
        socket_url = re.sub(r"^http", "ws", demo.base_url) + "ws/aceleryctl/tasks/"
        outcome = evil.evaluate(
            FOLLOW_FROM_ELSEWHERE, [socket_url, started["task_id"], started["token"]]
        )
    finally:
        browser.close()
    # A final refusal the client stops on (not a lost connection it retries), and
    # nothing of the task was seen.
    assert outcome == {"reason": "refused", "code": 4403, "seen": []}
