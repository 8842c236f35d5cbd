/**
 * aceleryctl live task events: a dependency-free ES module for the browser.
 *
 *   import { subscribe } from "/static/aceleryctl/client.js";
 *
 *   const handle = subscribe("/ws/aceleryctl/tasks/", {
 *     taskId, token,                       // from the view that dispatched the task
 *     on: {
 *       progress(e) { bar.value = e.progress.current / e.progress.total; },
 *       succeeded(e) { show(e.result); },
 *       failed(e) { show(`${e.error_type}: ${e.error_message}`); },
 *     },
 *   });
 *   handle.close();                        // stop following early (optional)
 *
 * Callbacks in `on` are named after the event type without "task.": sent,
 * received, started, progress, retried, succeeded, failed, revoked, rejected.
 * `onEvent(e)` gets every event; `onSubscribed()` is called each time the server
 * confirms the subscription (after every reconnect too), just before any event
 * its snapshot brings. The first event may come from the server's
 * snapshot (the task's state when you subscribed); the callbacks cannot tell
 * and need not care. Events never go backwards and never repeat: each has an
 * `order` above the last one delivered.
 *
 * Events come from several processes and can arrive out of order (a retry's
 * `task.retried` after the next attempt's `task.received`). Pass `onLate(e)` to
 * get those too, instead of losing them: it is called, once per event, for each
 * one whose `order` is below what was already delivered (also the facts the
 * server's snapshot merge knew besides the newest, and late events that arrive
 * within `lateWindow` ms, default 1000, after the terminal one: the subscription
 * ends then). Sort them into a history by `order`; they never change the state.
 *
 * The connection closes by itself once a terminal event (succeeded, failed,
 * revoked, rejected) has been delivered. A dropped connection is reopened with
 * exponential backoff and jitter, resuming after the last order seen. Refusals
 * are final and end the subscription with `onClose({reason: "refused", code})`
 * (the server's error frame, when it sends one, goes to `onError` first): 4400
 * malformed, 4401 no token, 4403 forbidden (a token for someone else, or a page
 * whose origin the server does not allow), 4413 frame too large. An expired
 * token (4419) is renewed through `refreshToken()` when you pass one (it returns
 * a new token, or a promise of one); without it, that is final too.
 *
 * Connection attempts that never open (the server, or a proxy in front of it,
 * refuses the handshake; nothing listens) are retried the same way, but only
 * `backoff.maxConnectFailures` times in a row (default 10, one to two minutes
 * with the default delays): then the subscription ends with
 * `onClose({reason: "gave-up", code})`. A connection that opens resets that count.
 *
 * One socket per subscribe() call; the server also lets one socket follow many
 * tasks, for clients that want to multiplex.
 */

const TERMINAL = new Set(["task.succeeded", "task.failed", "task.revoked", "task.rejected"]);
const FINAL_CODES = new Set([4400, 4401, 4403, 4413]);
const EXPIRED = 4419;

/** An absolute ws:// or wss:// URL for `url`, resolved against the page. */
function socketUrl(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const absolute = new URL(url, base);
  if (absolute.protocol === "http:") absolute.protocol = "ws:";
  if (absolute.protocol === "https:") absolute.protocol = "wss:";
  return absolute.href;
}

/**
 * Follow one task. Returns `{ close(), lastOrder, closed }`.
 *
 * Options: taskId, token (required); on, onEvent, onLate, lateWindow (ms), onSubscribed,
 * onError, onClose (called once,
 * with {reason: "terminal" | "closed" | "refused" | "gave-up", code}; `code` is the last close
 * code for "refused" and "gave-up"); refreshToken;
 * backoff: {initialDelay: 500, maxDelay: 30000, factor: 2, maxAttempts: Infinity,
 * maxConnectFailures: 10} (delays in milliseconds; maxAttempts counts reconnections since the
 * last confirmed subscription, maxConnectFailures consecutive attempts that never opened);
 * WebSocket (an implementation, for tests and non-browser use).
 */
export function subscribe(url, options) {
  const { taskId, on = {}, onEvent, onLate, onSubscribed, onError, onClose, refreshToken } = options;
  const lateWindow = options.lateWindow ?? 1000;
  const {
    initialDelay = 500,
    maxDelay = 30000,
    factor = 2,
    maxAttempts = Infinity,
    maxConnectFailures = 10,
  } = options.backoff || {};
  const Socket = options.WebSocket || globalThis.WebSocket;
  const target = socketUrl(url);
  let token = options.token;
  let lastOrder = null;
  const seen = new Set(); // every order delivered, for onLate: each event once
  let terminal = false;
  let finished = false;
  let failures = 0; // reconnections since the last confirmed subscription
  let unopened = 0; // consecutive connection attempts that never opened
  let timer = null;
  let socket = null;

  function finish(reason, code) {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    if (socket && socket.readyState <= 1) socket.close(1000);
    if (onClose) onClose({ reason, code });
  }

  function deliver(event) {
    if (!event || seen.has(event.order)) return;
    const isTerminal = TERMINAL.has(event.type);
    const newer = lastOrder === null || event.order > lastOrder;
    // A terminal snapshot may carry a lower-bound order: it is final all the same.
    if (terminal || (!newer && !isTerminal)) {
      // Older than what was delivered: a late fact (nothing newer follows the end).
      if (onLate && !newer) {
        seen.add(event.order);
        onLate(event);
      }
      return;
    }
    seen.add(event.order);
    lastOrder = lastOrder === null ? event.order : Math.max(lastOrder, event.order);
    terminal = isTerminal;
    const callback = on[event.type.replace(/^task\./, "")];
    if (callback) callback(event);
    if (onEvent) onEvent(event);
    if (!terminal) return;
    // With onLate, stay a moment for what is still on its way (a quick task's
    // task.received can come after its outcome).
    if (onLate && lateWindow > 0) timer = setTimeout(() => finish("terminal"), lateWindow);
    else finish("terminal");
  }

  function retryLater(code) {
    failures += 1;
    if (failures > maxAttempts) return finish("gave-up", code);
    const ceiling = Math.min(maxDelay, initialDelay * factor ** (failures - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
    timer = setTimeout(connect, delay);
  }

  async function renew(code) {
    try {
      token = await refreshToken();
      connect();
    } catch (error) {
      if (onError) onError({ code, message: `refreshToken failed: ${error}` });
      finish("refused", code);
    }
  }

  function connect() {
    if (finished) return;
    const ws = new Socket(target);
    socket = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      unopened = 0;
      const frame = { type: "subscribe", task_id: taskId, token, after: lastOrder };
      if (onLate) frame.late = true;
      ws.send(JSON.stringify(frame));
    };
    ws.onmessage = (message) => {
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      if (frame.type === "snapshot") {
        failures = 0; // subscribed: the connection is healthy again
        if (onSubscribed) onSubscribed();
        deliver(frame.event);
      } else if (frame.type === "event") {
        deliver(frame.event);
      } else if (frame.type === "error" && onError) {
        onError({ code: frame.code, message: frame.message });
      }
    };
    // Some WebSocket implementations (Node 20's) report a refused connection with
    // "error" and no "close": treat whichever comes first as the end of this socket.
    ws.onerror = () => lost(ws, 1006, opened);
    ws.onclose = (event) => lost(ws, event.code, opened);
  }

  function lost(ws, code, opened) {
    if (socket !== ws || finished) return;
    socket = null;
    if (ws.readyState <= 1) ws.close();
    if (terminal) return finish("terminal"); // only late events were still awaited
    if (code === EXPIRED && refreshToken) renew(code);
    else if (FINAL_CODES.has(code) || code === EXPIRED) finish("refused", code);
    // A handshake refused over HTTP (a proxy, an old server) looks like a network
    // failure (1006): retried, but not forever.
    else if (!opened && (unopened += 1) >= maxConnectFailures) finish("gave-up", code);
    else retryLater(code);
  }

  connect();
  return {
    /** Stop following: closes the socket, cancels any pending reconnect. */
    close() {
      finish("closed");
    },
    /** The order key of the last event delivered, or null. */
    get lastOrder() {
      return lastOrder;
    },
    /** Whether the subscription has ended (terminal, closed, refused, gave up). */
    get closed() {
      return finished;
    },
  };
}
