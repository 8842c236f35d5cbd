// Task cards for the demo pages: one card per task, fed by aceleryctl's JS client.
import { subscribe } from "../aceleryctl/client.js";

const SHORT_TYPE = (type) => type.replace(/^task\./, "");
/** Order keys are attempt * 10**10 + phase * 10**9 + seq (aceleryctl.events). */
const attemptOf = (event) => Math.floor(event.order / 1e10);
const TERMINAL_STATES = new Set(["SUCCESS", "FAILURE", "REVOKED", "REJECTED"]);
/** How often a card asks about its task's outbox row while the broker lacks the task. */
const OUTBOX_POLL_MS = 1000;

/** Create an element: el("span", {class: "x", text: "hi"}, child, ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "href" || key === "title" || key === "role") {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

/** POST JSON; resolves to {ok, status, data} (never rejects for an HTTP error). */
export async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

/**
 * One task's card. `card.root` is the <li>; `card.apply(event)` renders an event.
 */
export class TaskCard {
  constructor({ label, via, taskId, taskName, pageUrl }) {
    this.started = performance.now();
    this.progressCount = 0;
    this.retriesShown = new Set();
    this.attempt = 0;
    this.eventsSeen = 0;
    this.storedNote = null;
    this.state = "PENDING";
    this.badge = el("span", { class: "badge", text: "dispatching" });
    this.live = el("span", { class: "live", "data-live": "connecting", text: "connecting" });
    this.fill = el("span");
    this.percent = el("span", { class: "percent", text: "" });
    this.status = el("div", { class: "task-status" });
    this.notes = el("div");
    this.timeline = el("ol", { class: "timeline", "aria-label": "events" });
    const meta = el("div", { class: "task-meta" });
    if (taskId) {
      const id = pageUrl
        ? el("a", { href: pageUrl, title: `open task ${taskId}`, text: shortId(taskId) })
        : el("span", { class: "mono", title: taskId, text: shortId(taskId) });
      meta.append(id);
    }
    if (taskName) meta.append(el("span", { text: taskName }));
    meta.append(this.live);
    this.root = el(
      "li",
      { class: "task", "data-state": "PENDING", "data-task-id": taskId || "" },
      el(
        "div",
        { class: "task-head" },
        el(
          "div",
          { class: "task-title" },
          el("span", { class: "task-name", text: label }),
          via ? el("span", { class: "via", text: via }) : null,
        ),
        this.badge,
      ),
      meta,
      el("div", { class: "progress" }, el("div", { class: "bar", role: "presentation" }, this.fill), this.percent),
      this.status,
      this.notes,
      this.timeline,
    );
  }

  get finished() {
    return (
      TERMINAL_STATES.has(this.state) ||
      ["NOT_SENT", "UNKNOWN", "REFUSED", "DEAD_LETTERED"].includes(this.state)
    );
  }

  setState(state, text) {
    this.state = state;
    this.root.dataset.state = state;
    this.badge.textContent = text || state.replace("_", " ");
    this.root.dispatchEvent(new CustomEvent("task-state", { bubbles: true }));
  }

  setLive(mode, text) {
    this.live.dataset.live = mode;
    this.live.textContent = text || mode;
  }

  setProgress(fraction) {
    const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    this.fill.style.width = `${pct}%`;
    this.percent.textContent = `${pct}%`;
    this.root.dataset.progress = String(pct);
  }

  addTimeline(type, extra) {
    const short = SHORT_TYPE(type);
    const at = el("time", { text: `+${seconds(performance.now() - this.started)}` });
    if (short === "progress") {
      this.progressCount += 1;
      let chip = this.timeline.querySelector('li[data-type="progress"]:last-child');
      if (!chip) {
        chip = el("li", { "data-type": "progress" });
        this.timeline.append(chip);
      }
      chip.replaceChildren(`progress ×${this.progressCount}`, at);
      return;
    }
    this.progressCount = 0;
    this.timeline.append(el("li", { "data-type": short }, extra ? `${short} ${extra}` : short, at));
  }

  note(kind, title, text, hint) {
    const box = el(
      "div",
      { class: `note ${kind}` },
      el("strong", { text: title }),
      el("span", { text }),
      hint ? el("span", { class: "hint", text: hint }) : null,
    );
    this.notes.append(box);
    return box;
  }

  /** Render one aceleryctl event (see docs/live-status.md for the fields). */
  apply(event) {
    const short = SHORT_TYPE(event.type);
    this.eventsSeen += 1;
    this.leftOutbox();
    this.setState(event.state);
    // An event of a later attempt means the earlier ones were retried. The client
    // drops a `retried` event that arrives after the next attempt's first event, so
    // mark those retries here (without their reason).
    const attempt = attemptOf(event);
    for (let n = this.attempt + 1; n <= attempt; n += 1) {
      if (!this.retriesShown.has(n)) {
        this.retriesShown.add(n);
        this.addTimeline("task.retried", String(n));
      }
    }
    this.attempt = Math.max(this.attempt, attempt);
    if (short === "retried") {
      const { attempt: number, max_retries: max } = event.retry;
      if (!this.retriesShown.has(number)) {
        this.retriesShown.add(number);
        this.addTimeline(event.type, String(number));
      }
      const why = event.error_message || event.retry.reason || "";
      const limit = max === null || max === undefined ? "" : ` (at most ${max})`;
      this.note("retry", event.error_type || "Retry", why, `attempt ${number} failed: retry ${number}${limit}`);
      this.status.textContent = "waiting for the retry…";
      this.setProgress(0);
      return;
    }
    this.addTimeline(event.type);
    if (short === "progress") {
      const { current, total, message } = event.progress;
      if (total) this.setProgress(current / total);
      this.status.textContent = message || (total ? `${current} of ${total}` : `${current}`);
    } else if (short === "received") {
      this.status.textContent = "received by a worker";
    } else if (short === "started") {
      this.status.textContent = "running on the worker";
    } else if (short === "succeeded") {
      this.setProgress(1);
      this.status.replaceChildren(
        "Result ",
        el("span", { class: "result", text: JSON.stringify(event.result) }),
      );
    } else if (short === "failed" || short === "rejected" || short === "revoked") {
      this.setProgress(1);
      this.status.textContent = `${short} after ${seconds(performance.now() - this.started)}`;
      this.note("error", event.error_type || short, event.error_message || "");
    } else if (short === "sent") {
      this.status.textContent = "in the broker, waiting for a worker";
    }
  }

  /**
   * The task is stored in the outbox: the broker did not take it (`info` is the
   * outbox endpoint's answer, or the durable view's `{attempts, last_error}`).
   */
  stored(info) {
    this.setState("STORED", "stored");
    this.status.textContent = "stored, waiting for the broker";
    const attempts = info.attempts === 1 ? "1 attempt" : `${info.attempts} attempts`;
    const wait = info.next_attempt_in;
    let next = "";
    if (wait > 0) next = `; next attempt in ${wait.toFixed(1)} s`;
    else if (wait === 0) next = "; due now, tried as soon as the breaker lets a call through";
    const text = `${attempts} failed; last: ${info.last_error || "unknown error"}`;
    const hint = `In the outbox: the relay publishes it when the broker takes it${next}.`;
    const box = this.note("stored", "Outbox", text, hint);
    if (this.storedNote) this.storedNote.replaceWith(box);
    this.storedNote = box;
  }

  /** The task left the outbox: the relay published it (or a live event says so). */
  leftOutbox() {
    if (!this.storedNote) return;
    this.storedNote.querySelector(".hint").textContent =
      "Published by the relay: the broker has it now.";
    this.storedNote.classList.replace("stored", "info");
    this.storedNote = null;
    if (this.state === "STORED") {
      this.setState("PENDING", "pending");
      this.status.textContent = "published by the relay, waiting for a worker";
    }
  }

  /** The relay gave up on the task's outbox row: it was never sent. */
  deadLettered(info) {
    this.setState("DEAD_LETTERED", "dead-lettered");
    this.setLive("off", "dead-lettered");
    this.status.textContent = "";
    const box = this.note(
      "error",
      "Dead-lettered",
      `after ${info.attempts} attempts; last: ${info.last_error || "unknown error"}`,
      "The relay gave up: the dispatch stays in the outbox table, marked dead.",
    );
    if (this.storedNote) this.storedNote.replaceWith(box);
    this.storedNote = null;
  }

  /** The subscription was refused (bad or expired token...). */
  refused(code, message) {
    this.setState("REFUSED", "refused");
    this.setLive("refused", `refused (${code})`);
    this.status.textContent = "";
    this.note("error", `Refused (${code})`, message || "the server refused the subscription");
  }

  /** The dispatch itself failed: nothing to follow. */
  dispatchFailed(status, body) {
    const unknown = body.outcome === "unknown";
    this.setState(unknown ? "UNKNOWN" : "NOT_SENT", unknown ? "outcome unknown" : "not sent");
    this.setLive("off", `not dispatched · HTTP ${status}`);
    this.setProgress(0);
    this.percent.textContent = "";
    let hint;
    if (body.error === "CircuitOpenError") {
      hint = `Refused in microseconds by the open breaker: nothing was sent. Retry in ${body.retry_after} s.`;
    } else if (body.error === "DispatchTimeout") {
      hint = `The deadline passed mid-publish: the task may still run (id ${body.task_id}).`;
    } else if (body.error === "BrokerError") {
      hint = unknown
        ? "The connection failed after the publish may have reached the broker."
        : "The broker could not be reached: nothing was sent, safe to retry.";
    } else if (body.outcome === "not sent") {
      hint = "Nothing was sent: safe to retry later.";
    }
    this.note(unknown ? "unknown" : "error", body.error || `HTTP ${status}`, body.detail || "", hint);
  }
}

/**
 * Ask `url` (GET /api/tasks/<id>/outbox/) about the task's outbox row every second,
 * until the row is gone (the broker has the task), dead-lettered, a live event has
 * arrived, or the card is finished. The view that dispatched cannot know: an
 * on-commit publish ends after the response, and the relay publishes later.
 */
export function watchOutbox(card, url) {
  let timer = null;
  async function poll() {
    if (card.eventsSeen || card.finished) return;
    let info = null;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) info = await response.json();
    } catch {
      // The web server is away for a moment: ask again.
    }
    if (card.eventsSeen || card.finished) return;
    if (info && !info.stored) {
      card.leftOutbox();
      return;
    }
    if (info && info.state === "dead") {
      card.deadLettered(info);
      return;
    }
    // attempts 0: the commit's own publish has not ended yet.
    if (info && info.attempts > 0) card.stored(info);
    timer = setTimeout(poll, OUTBOX_POLL_MS);
  }
  poll();
  return { stop: () => clearTimeout(timer) };
}

/**
 * Follow `started` ({task_id, token, websocket, outbox_url?, deferred?, reason?}) live,
 * and its outbox row while it has one; returns the client's handle.
 */
export function follow(card, started) {
  card.setState("PENDING", "pending");
  card.status.textContent = "subscribing…";
  if (started.deferred) card.stored({ attempts: 1, last_error: started.reason });
  if (started.outbox_url) watchOutbox(card, started.outbox_url);
  let lastError = null;
  return subscribe(started.websocket, {
    taskId: started.task_id,
    token: started.token,
    onSubscribed() {
      card.setLive("live");
      if (card.status.textContent === "subscribing…") card.status.textContent = "waiting for a worker";
    },
    onEvent(event) {
      card.apply(event);
    },
    onError(error) {
      lastError = error;
    },
    onClose({ reason, code }) {
      if (reason === "refused") card.refused(code, lastError && lastError.message);
      else if (reason === "terminal") card.setLive("done", "done");
      else card.setLive("off", reason);
    },
  });
}
