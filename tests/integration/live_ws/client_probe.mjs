// Drives aceleryctl's client.js from Node (>= 20, with --experimental-websocket)
// for the live tests: one JSON line on stdout per callback, exit when closed.
//
//   node --experimental-websocket client_probe.mjs CLIENT_JS URL TASK_ID TOKEN ORIGIN COOKIE [BACKOFF]
//
// BACKOFF is a JSON object merged over the probe's short delays (client.js's
// `backoff` option).
import { pathToFileURL } from "node:url";

const [clientPath, url, taskId, token, origin, cookie, backoff] = process.argv.slice(2);
const { subscribe } = await import(pathToFileURL(clientPath).href);

// Browsers send Origin and the page's cookies; Node's WebSocket only when told to.
class BrowserLikeWebSocket extends WebSocket {
  constructor(target) {
    super(target, { headers: { origin, cookie } });
  }
}

const out = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
subscribe(url, {
  taskId,
  token,
  WebSocket: BrowserLikeWebSocket,
  backoff: { initialDelay: 50, maxDelay: 400, ...JSON.parse(backoff || "{}") },
  on: { progress: (e) => out({ kind: "on.progress", order: e.order }) },
  onSubscribed: () => out({ kind: "subscribed" }),
  onEvent: (event) => out({ kind: "event", event }),
  onError: (error) => out({ kind: "error", ...error }),
  onClose: (info) => {
    out({ kind: "close", ...info });
    process.exit(0);
  },
});
