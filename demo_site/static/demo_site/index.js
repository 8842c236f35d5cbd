// The demo's main page: start tasks, follow them live, watch the controller's health.
import { TaskCard, follow, postJSON } from "./tasks.js";

const config = JSON.parse(document.getElementById("demo-config").textContent);
const list = document.getElementById("tasks");
const cards = new Set();

function updateCounts() {
  let active = 0;
  let done = 0;
  for (const card of cards) {
    if (card.finished) done += 1;
    else active += 1;
  }
  document.getElementById("count-active").textContent = active;
  document.getElementById("count-done").textContent = done;
  document.getElementById("no-tasks").hidden = cards.size > 0;
}
list.addEventListener("task-state", updateCounts);

/** Dispatch through `url`, then add a card that follows the task live. */
async function start(url, label, via, body) {
  const pending = new TaskCard({ label, via });
  cards.add(pending);
  list.prepend(pending.root);
  updateCounts();
  let answer;
  try {
    answer = await postJSON(url, body);
  } catch (error) {
    answer = { ok: false, status: 0, data: { error: "NetworkError", detail: String(error) } };
  }
  if (!answer.ok) {
    pending.dispatchFailed(answer.status, answer.data);
    updateCounts();
    return;
  }
  const started = answer.data;
  const card = new TaskCard({
    label,
    via,
    taskId: started.task_id,
    taskName: started.task,
    pageUrl: `${started.page_url}#token=${encodeURIComponent(started.token)}`,
  });
  cards.delete(pending);
  cards.add(card);
  pending.root.replaceWith(card.root);
  if (started.audit_sent === false) {
    card.note(
      "info",
      "safe_execute",
      "the audit task was not sent; the failure was logged and suppressed",
    );
  }
  follow(card, started);
  updateCounts();
}

function secondsWanted() {
  const value = Number(document.getElementById("seconds").value);
  return Number.isInteger(value) && value >= 1 && value <= 60 ? value : 5;
}

const ASYNC = "async view";
const DRF = "DRF";
const on = (id, handler) => document.getElementById(id).addEventListener("click", handler);
/** The dispatch buttons' `durable` option (the report always goes through the outbox). */
const durable = () => document.getElementById("durable").checked;

on("start-long", () => {
  const s = secondsWanted();
  start(config.urls.long, `Long task · ${s} s`, ASYNC, { seconds: s, durable: durable() });
});
on("start-retrying", () =>
  start(config.urls.retrying, "Retries, then succeeds", ASYNC, { durable: durable() }),
);
on("start-flaky", () => start(config.urls.flaky, "Retries, then fails", ASYNC, { durable: durable() }));
on("start-django", () =>
  start(config.urls.django_task, "Django task · count_words", "Django Tasks", {
    text: "the quick brown fox\njumps over\nthe lazy dog",
  }),
);
on("start-burst", () => {
  for (const s of [3, 5, 8]) {
    start(config.urls.long, `Long task · ${s} s`, ASYNC, { seconds: s, durable: durable() });
  }
});
on("start-report", () =>
  start(config.urls.report, "Create a report", DRF, {
    title: `Quarterly numbers ${new Date().toLocaleTimeString()}`,
  }),
);
on("start-add", () =>
  start(config.urls.add, "add(2, 3) in 3 s", DRF, { x: 2, y: 3, countdown: 3, durable: durable() }),
);
on("clear-done", () => {
  for (const card of [...cards]) {
    if (card.finished) {
      card.root.remove();
      cards.delete(card);
    }
  }
  updateCounts();
});

// -- controller health, refreshed every second -----------------------------------

const BREAKER_TEXT = { closed: "Closed", open: "Open", half_open: "Half open", forced_open: "Forced open" };
const text = (id, value) => {
  document.getElementById(id).textContent = value;
};

function renderHealth(h) {
  const breaker = document.getElementById("breaker");
  const state = h.breaker.state;
  breaker.dataset.state = state;
  text("breaker-state", BREAKER_TEXT[state] || state);
  let extra = "";
  if (state === "open") extra = `probe in ${h.breaker.retry_after.toFixed(1)} s`;
  else if (state === "half_open") extra = "probing the broker";
  else if (h.breaker.consecutive_failures) extra = `${h.breaker.consecutive_failures} failing in a row`;
  text("breaker-extra", extra);
  for (const key of ["dispatched", "failed", "timed_out", "rejected_open", "overloaded"]) {
    const node = document.getElementById(`m-${key}`);
    node.textContent = h[key];
    node.parentElement.classList.toggle(
      "bad",
      node.parentElement.hasAttribute("data-bad-when-positive") && h[key] > 0,
    );
  }
  text("m-failure_rate", `${Math.round(h.breaker.failure_rate * 100)}%`);
  text("p-threads", `${h.pool.threads} / ${h.pool.max_workers}`);
  text("p-load", `${h.pool.running} / ${h.pool.waiting}`);
  text("p-done", `${h.pool.submitted} / ${h.pool.completed}`);
  text("b-opened", `${h.breaker.times_opened}×`);
  text("health-source", h.broker_mode === "live" ? "default controller" : `${h.broker_mode} broker`);
  renderOutbox(h.outbox, h.relay_running);
  text("updated", `updated ${new Date().toLocaleTimeString()}`);
  renderMode(h.broker_mode, h.broker_description);
}

const age = (seconds) => (seconds === null || seconds === undefined ? "–" : `${seconds.toFixed(1)} s`);

/** The outbox's depth from `ahealth()["outbox"]`, and whether the relay thread runs. */
function renderOutbox(outbox, relayRunning) {
  const panel = document.getElementById("outbox");
  if (!outbox || !outbox.enabled) {
    panel.dataset.pending = "0";
    text("o-pending", "outbox off");
    return;
  }
  if (outbox.error) {
    text("o-pending", "unavailable");
    text("o-oldest", outbox.error);
    return;
  }
  panel.dataset.pending = String(outbox.pending);
  text("o-pending", outbox.pending);
  document.getElementById("o-pending").classList.toggle("waiting", outbox.pending > 0);
  text("o-dead", outbox.dead);
  document.getElementById("o-dead").classList.toggle("bad", outbox.dead > 0);
  text("o-oldest", age(outbox.oldest_pending_seconds));
  const last = outbox.relay_last_round_seconds;
  const ran = last === null || last === undefined ? "never" : `${age(last)} ago`;
  text("o-relay", relayRunning ? ran : `not running (${ran})`);
}

function renderMode(mode, description) {
  const chip = document.getElementById("broker-chip");
  chip.dataset.mode = mode;
  text("broker-chip-text", mode === "live" ? "broker: live Redis" : `broker: ${mode} (dead)`);
  const group = document.getElementById("switch");
  if (!group) return;
  for (const button of group.querySelectorAll("button")) {
    button.setAttribute("aria-checked", String(button.dataset.mode === mode));
  }
  text("switch-text", description);
}

async function refreshHealth() {
  try {
    const response = await fetch(config.urls.status, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderHealth(await response.json());
  } catch (error) {
    document.getElementById("breaker").dataset.state = "unknown";
    text("breaker-state", "unavailable");
    text("updated", `status unavailable: ${error.message}`);
  } finally {
    setTimeout(refreshHealth, 1000);
  }
}
refreshHealth();

// -- the dead-broker switch --------------------------------------------------------

const group = document.getElementById("switch");
if (group) {
  group.addEventListener("click", async (click) => {
    const button = click.target.closest("button[data-mode]");
    if (!button) return;
    const answer = await postJSON(config.urls.switch, { mode: button.dataset.mode });
    if (answer.ok) renderMode(answer.data.mode, answer.data.description);
    else text("switch-text", `${answer.status}: ${answer.data.detail || "refused"}`);
  });
}
