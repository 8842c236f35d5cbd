// Task cards for the demo pages: one card per task, fed by aceleryctl's JS client.
import { subscribe } from "../aceleryctl/client.js";

const SHORT_TYPE = (type) => type.replace(/^task\./, "");
/** Order keys are attempt * 10**10 + phase * 10**9 + seq (aceleryctl.events). */
const attemptOf = (event) => Math.floor(event.order / 1e10);
/** The order key of the retry that ended attempt `n - 1` (phase 4: retried). */
const retryOrder = (n) => (n - 1) * 1e10 + 4e9;
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
    this.retriesShown = new Set(); // retry numbers whose reason is on the card
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

  /**
   * Put a chip in the timeline at its place by order key, whatever the order the
   * events arrived in. Progress reports of one attempt share one chip.
   */
  addTimeline(event, label) {
    const short = SHORT_TYPE(event.type);
    const at = el("time", { text: `+${seconds(performance.now() - this.started)}` });
    let chip;
    if (short === "progress") {
      const attempt = String(attemptOf(event));
      chip = this.timeline.querySelector(`li[data-type="progress"][data-attempt="${attempt}"]`);
      if (chip) {
        const count = Number(chip.dataset.count) + 1;
        chip.dataset.count = String(count);
        chip.replaceChildren(`progress ×${count}`, at);
        if (event.order >= Number(chip.dataset.order)) return;
        chip.remove(); // an earlier report arrived late: the chip moves back
      } else {
        chip = el("li", { "data-type": "progress", "data-attempt": attempt, "data-count": "1" });
        chip.append("progress ×1", at);
      }
    } else {
      chip = el("li", { "data-type": short }, label ? `${short} ${label}` : short, at);
    }
    chip.dataset.order = String(event.order);
    const after = [...this.timeline.children].find((li) => Number(li.dataset.order) > event.order);
    this.timeline.insertBefore(chip, after || null);
  }

  /**
   * Mark retries 1..`attempt` in the timeline: an event of attempt n means the n
   * attempts before it were retried, even when their `retried` event has not come
   * (yet: a late one replaces the mark, with its reason).
   */
  markRetries(attempt) {
    for (let n = 1; n <= attempt; n += 1) {
      const order = retryOrder(n);
      if (!this.timeline.querySelector(`li[data-order="${order}"]`)) {
        this.addTimeline({ type: "task.retried", order }, String(n));
        this.timeline.querySelector(`li[data-order="${order}"]`).dataset.inferred = "true";
      }
    }
  }

  /** Show when the task is due (`eta`: ISO 8601) while no worker runs it. */
  schedule(eta) {
    if (!eta) return;
    const due = new Date(eta);
    this.root.dataset.eta = eta;
    this.scheduled = `scheduled for ${due.toLocaleTimeString()}`;
    if (["PENDING", "STORED", "RECEIVED"].includes(this.state)) this.showScheduled();
  }

  showScheduled() {
    const where = { RECEIVED: "held by a worker, ", STORED: "stored, waiting for the broker; " };
    this.status.textContent = `${where[this.state] || ""}${this.scheduled}`;
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

  /**
   * Render one aceleryctl event (see docs/live-status.md for the fields). A `late`
   * event (older than one already shown: it arrived out of order) adds its facts
   * to the timeline and the notes, and leaves the state alone.
   */
  apply(event, late = false) {
    const short = SHORT_TYPE(event.type);
    this.eventsSeen += 1;
    const attempt = attemptOf(event);
    this.markRetries(attempt);
    this.attempt = Math.max(this.attempt, attempt);
    const existing = this.timeline.querySelector(`li[data-order="${event.order}"]`);
    if (existing && existing.dataset.inferred) existing.remove();
    this.addTimeline(event, short === "retried" ? String(event.retry.attempt) : null);
    if (short === "retried") this.retryNote(event);
    if (short === "sent" || short === "deferred") this.schedule(event.eta);
    if (late) return;
    if (short !== "deferred") this.leftOutbox();
    this.setState(event.state);
    // Finished (the client may listen a moment longer for late events).
    if (TERMINAL_STATES.has(event.state)) this.setLive("done", "done");
    if (short === "deferred") {
      this.stored({ attempts: null, last_error: event.error_type });
    } else if (short === "retried") {
      this.status.textContent = "waiting for the retry…";
      this.setProgress(0);
    } else if (short === "progress") {
      const { current, total, message } = event.progress;
      if (total) this.setProgress(current / total);
      this.status.textContent = message || (total ? `${current} of ${total}` : `${current}`);
    } else if (short === "received") {
      if (this.scheduled) this.showScheduled();
      else this.status.textContent = "received by a worker";
    } else if (short === "started") {
      this.status.textContent = "running on the worker";
    } else if (short === "succeeded") {
      this.setProgress(1);
      this.status.replaceChildren(
        "Result ",
        el("span", { class: "result", text: JSON.stringify(event.result) }),
      );
    } else if (short === "failed" || short === "rejected" || short === "revoked") {
      // The bar stays where the work stopped: a failure is not 100% of anything.
      this.percent.textContent = short;
      this.status.textContent = `${short} after ${seconds(performance.now() - this.started)}`;
      this.note("error", event.error_type || short, event.error_message || "");
    } else if (short === "sent") {
      if (this.scheduled) this.showScheduled();
      else this.status.textContent = "in the broker, waiting for a worker";
    }
  }

  /** A retry's reason, once per retry, in attempt order among the notes. */
  retryNote(event) {
    const { attempt: number, max_retries: max } = event.retry;
    if (this.retriesShown.has(number)) return;
    this.retriesShown.add(number);
    const why = event.error_message || event.retry.reason || "";
    const limit = max === null || max === undefined ? "" : ` (at most ${max})`;
    const box = this.note("retry", event.error_type || "Retry", why, `attempt ${number} failed: retry ${number}${limit}`);
    box.dataset.retry = String(number);
    const later = [...this.notes.querySelectorAll(".note.retry")].find((n) => Number(n.dataset.retry) > number);
    if (later) this.notes.insertBefore(box, later);
  }

  /**
   * The task is stored in the outbox: the broker did not take it (`info` is the
   * outbox endpoint's answer, or the durable view's `{attempts, last_error}`).
   */
  stored(info) {
    this.setState("STORED", "stored");
    this.setLive("stored", "stored · not in the broker");
    this.status.textContent = "stored, waiting for the broker";
    if (this.scheduled) this.showScheduled();
    // A task.deferred event says only why; the outbox poll says more.
    if (this.storedNote && info.attempts === null) return;
    const attempts = info.attempts === 1 ? "1 attempt" : `${info.attempts} attempts`;
    const wait = info.next_attempt_in;
    let next = "";
    if (wait > 0) next = `; next attempt in ${wait.toFixed(1)} s`;
    else if (wait === 0) next = "; due now, tried as soon as the breaker lets a call through";
    const error = info.last_error || "unknown error";
    const text = info.attempts === null ? `the broker did not take it: ${error}` : `${attempts} failed; last: ${error}`;
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
    if (this.live.dataset.live === "stored") this.setLive("live");
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
      // A stored dispatch is not in the broker: the card says so, not "live".
      if (card.state !== "STORED") card.setLive("live");
      if (card.status.textContent === "subscribing…") card.status.textContent = "waiting for a worker";
    },
    onEvent(event) {
      card.apply(event);
    },
    onLate(event) {
      card.apply(event, true);
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
