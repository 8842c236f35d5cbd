// The single-task page: /tasks/<id>/#token=<token>. The token travels in the URL's
// fragment, which the browser never sends to the server.
import { TaskCard, follow } from "./tasks.js";

const config = JSON.parse(document.getElementById("demo-config").textContent);
const token = new URLSearchParams(window.location.hash.slice(1)).get("token") || "";
const card = new TaskCard({ label: "Live status", taskId: config.task_id });
document.getElementById("tasks").append(card.root);

const refusal = document.getElementById("refusal");
const originalRefused = card.refused.bind(card);
card.refused = (code, message) => {
  originalRefused(code, message);
  card.notes.replaceChildren(); // said once, below, in full
  document.getElementById("refusal-title").textContent = `Subscription refused (${code})`;
  document.getElementById("refusal-text").textContent =
    `${message || "the server refused the subscription"}. Open this page from the link on the demo page, which carries a valid token.`;
  refusal.hidden = false;
};
card.apply = ((apply) => (event, late) => {
  if (event.task_name) card.root.querySelector(".task-name").textContent = event.task_name;
  apply(event, late);
})(card.apply.bind(card));

follow(card, {
  task_id: config.task_id,
  token,
  websocket: config.websocket,
  outbox_url: config.outbox_url,
});
