// The escalations inbox of `healing serve`: plain DOM, no build step, no dependencies.
// Everything from the server is shown with textContent (never parsed as HTML).
import { fetchEscalations, fetchStatus, sendDecision, subscribe } from "./healing-core.js";

const TOKEN_KEY = "healing.apiToken";
const REFRESH_MS = 5000;
const cards = new Map(); // workflow id -> card element
let unsubscribe = null;
let watching = null;

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showTokenState() {
  $("token-state").textContent = token() ? "token set for this tab" : "no token: deciding needs one";
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
}

function describeAttempt(a) {
  const type = a.error_type ? ` (${a.error_type})` : "";
  const delay = a.delay_s ? `, waited ${Number(a.delay_s).toFixed(1)}s` : "";
  const detail = a.detail ? `: ${a.detail}` : "";
  return `${a.strategy} ${a.outcome}${type}${delay}${detail}`;
}

// The explanation without its own "Tried:" list (shown below as a list of its own).
function summary(text) {
  return String(text || "").split(/\n\s*Tried:\s*\n/)[0].trim();
}

function call(esc) {
  return [esc.connector, esc.operation].filter(Boolean).join(".") || esc.activity || "a call";
}

function escalationBlock(workflowId, esc, full, resultLine, history) {
  const offered = full ? full.options.map((o) => o.option) : esc.options;
  const effects = new Map((full ? full.options : []).map((o) => [o.option, o]));
  // What was tried for this call, else the workflow's healing history.
  const tried = full && full.attempts.length ? full.attempts : history && history.length ? history : null;
  const block = el("div", { class: "escalation", "data-escalation": esc.escalation_id });
  block.append(
    el(
      "p",
      { class: "meta" },
      el("span", { class: "error-type", text: esc.error_type }),
      ` in ${call(esc)} · opened ${when(esc.opened_at)}`,
      esc.timeout_at ? ` · without a decision: ${esc.default_option} at ${when(esc.timeout_at)}` : "",
      full ? ` · without a decision: ${full.default_option}` : "",
    ),
    el("p", { class: "explanation", text: summary(full ? full.explanation : esc.explanation) }),
  );
  if (tried) {
    block.append(
      el("p", { class: "tried-title", text: "What was tried:" }),
      el("ul", { class: "tried" }, ...tried.map((a) => el("li", { text: describeAttempt(a) }))),
    );
  }
  const patch = offered.includes("edit_and_retry")
    ? el("textarea", { "aria-label": "input patch (JSON) for edit_and_retry", placeholder: '{"params": {"id": "42"}}' })
    : null;
  const alternatives = full ? full.alternatives : [];
  const alternative = offered.includes("reroute")
    ? el("input", { "aria-label": "alternative connector for reroute", value: alternatives[0] || "" })
    : null;
  const waitS = offered.includes("wait")
    ? el("input", { type: "number", min: "0", "aria-label": "seconds to wait", placeholder: "wait_s" })
    : null;
  const note = el("input", { "aria-label": "note", placeholder: "note (optional)" });
  const extra = el("div", { class: "extra" });
  if (patch) extra.append(el("label", { text: "Input patch for edit_and_retry (JSON)" }), patch);
  if (alternative) extra.append(el("label", { text: "Reroute to" }), alternative);
  if (waitS) extra.append(el("label", { text: "Wait (seconds)" }), waitS);
  extra.append(note);

  let decided = false;
  const decideWith = async (option, button) => {
    const body = { escalation_id: esc.escalation_id, note: note.value };
    if (option === "edit_and_retry") {
      try {
        body.input_patch = JSON.parse(patch.value || "{}");
      } catch (err) {
        resultLine.className = "result bad";
        resultLine.textContent = `the input patch is not JSON: ${err.message}`;
        return;
      }
    }
    if (option === "reroute" && alternative.value) body.alternative = alternative.value;
    if (option === "wait" && waitS.value) body.wait_s = Number(waitS.value);
    resultLine.className = "result";
    resultLine.textContent = `sending ${option}…`;
    button.disabled = true;
    watch(workflowId);
    try {
      await sendDecision(workflowId, option, body, { token });
      resultLine.className = "result ok";
      resultLine.textContent = `${option} accepted`;
      for (const b of block.querySelectorAll(".options button")) b.disabled = true;
      decided = true;
    } catch (err) {
      resultLine.className = "result bad";
      resultLine.textContent = `${option} refused (${err.status || "network"}): ${err.message}`;
    } finally {
      button.disabled = decided;
    }
  };
  const buttons = offered.map((option) => {
    const info = effects.get(option);
    const isDefault = option === (full ? full.default_option : esc.default_option);
    const button = el("button", {
      type: "button",
      class: isDefault ? "default" : "",
      title: info ? `${info.label}: ${info.effect}` : option,
      "data-option": option,
      text: option,
    });
    button.addEventListener("click", () => decideWith(option, button));
    return button;
  });
  block.append(el("div", { class: "options", role: "group", "aria-label": "options" }, ...buttons), extra);
  return block;
}

async function fillCard(card, item) {
  const body = card.querySelector(".body");
  const resultLine = card.querySelector(".result");
  let status = null;
  try {
    status = await fetchStatus(item.workflow_id);
  } catch (err) {
    status = null;
  }
  const open = status && status.healing ? status.healing.open_escalations : [];
  body.replaceChildren();
  if (status && status.problem) {
    body.append(el("p", { class: "meta", text: `${status.problem}; showing what the memo holds` }));
  }
  if (open.length) {
    const history = status.healing.history;
    for (const esc of open) body.append(escalationBlock(item.workflow_id, esc, esc, resultLine, history));
  } else if (item.escalation) {
    body.append(escalationBlock(item.workflow_id, item.escalation, null, resultLine));
  } else {
    body.append(el("p", { text: `paused (${item.error_type || "unknown error"}); no details yet` }));
  }
}

function newCard(item) {
  const card = el(
    "li",
    { class: "card", "data-workflow-id": item.workflow_id },
    el("h3", { text: item.workflow_id }),
    el("p", { class: "meta", text: `${item.workflow_type} on ${item.task_queue}` }),
    el("div", { class: "body" }),
    el("p", { class: "result", role: "status" }),
    el("button", { type: "button", class: "watch", text: "Watch events", onclick: () => watch(item.workflow_id) }),
  );
  fillCard(card, item);
  return card;
}

async function refresh() {
  try {
    const { escalations } = await fetchEscalations();
    const listed = new Set(escalations.map((e) => e.workflow_id));
    for (const [id, card] of cards) {
      if (!listed.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    for (const item of escalations) {
      if (!cards.has(item.workflow_id)) {
        const card = newCard(item);
        cards.set(item.workflow_id, card);
        $("escalations").append(card);
      }
    }
    $("count").textContent = `(${escalations.length})`;
    $("inbox-state").textContent = escalations.length ? "" : "No workflow is waiting for a decision.";
  } catch (err) {
    $("inbox-state").textContent = `Cannot list escalations: ${err.message}`;
  }
}

function watch(workflowId) {
  if (watching === workflowId && unsubscribe) return;
  if (unsubscribe) unsubscribe();
  watching = workflowId;
  const list = $("events");
  list.replaceChildren();
  $("live-title").textContent = `Live events of ${workflowId}`;
  $("live-state").textContent = "connecting…";
  unsubscribe = subscribe(workflowId, {
    onEvent: (a) => list.append(el("li", { "data-index": a.index, text: `${when(a.at)} ${describeAttempt(a)}` })),
    onStatus: (s) => {
      const worker = s.worker ? "" : " (no worker answers)";
      $("live-state").textContent = `${s.run_status}, healing ${s.state || "unknown"}${worker}`;
    },
    onConnected: (up) => {
      if (!up && watching === workflowId) $("live-state").textContent += " · disconnected";
    },
    onEnd: (info) => {
      list.append(el("li", { class: "end", text: `workflow closed: ${info.run_status}` }));
      $("live-state").textContent = `closed: ${info.run_status}`;
      unsubscribe = null;
    },
  });
}

document.addEventListener("DOMContentLoaded", () => {
  showTokenState();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    showTokenState();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
