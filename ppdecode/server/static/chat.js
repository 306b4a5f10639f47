// The chat page: streams /v1/chat/completions and shows where each committed token came from.
// Each stream chunk carries `ppd` = {accept_length, origins, pieces} for the step that committed it
// (origins: "model" = the model's own token, "ppd" = an accepted prompt-token guess, "lookup" = an
// accepted prompt-lookup copy); the last chunk carries the generation's statistics instead.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // the conversation sent with each request: [{role, content}]
let model = null;
let controller = null;  // AbortController of the reply being streamed

$("api-key").value = localStorage.getItem("ppd-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("ppd-api-key", $("api-key").value));

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

function setStatus(ok, text) {
  $("status").className = "status " + (ok ? "ok" : "down");
  $("status").textContent = text;
}

function unreachable(err) {
  setStatus(false, "unreachable");
  showBanner(`The server at ${location.origin} cannot be reached (${err.message || err}). ` +
             "Is `ppd serve` still running? This page retries every few seconds.");
}

async function checkHealth() {
  try {
    const resp = await fetch("/health", {cache: "no-store"});
    const body = await resp.json();
    if (body.status === "starting") {  // warming up: requests are queued meanwhile
      setStatus(false, "starting…");
      return;
    }
    if (!resp.ok) throw new Error(`health check says ${body.status}`);
    setStatus(true, `ok · ${body.running} running · ${body.waiting} waiting`);
    if ($("banner").dataset.kind !== "error") showBanner("");
    if (!model) await loadModel();
  } catch (err) {
    $("banner").dataset.kind = "";
    unreachable(err);
  }
}

async function loadModel() {
  const resp = await fetch("/v1/models", {headers: headers()});
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    showBanner("Models: " + ((body.error && body.error.message) || resp.statusText));
    $("banner").dataset.kind = "error";
    return;
  }
  model = (await resp.json()).data[0].id;
  $("model").textContent = model;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (text) div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function appendTokens(div, text, step) {
  // One span per token when the chunk's text splits into the tokens' own texts; else one span.
  const parts = step && step.pieces ? step.pieces.map((p, i) => [p, step.origins[i]]) : [[text, "model"]];
  for (const [piece, origin] of parts) {
    if (!piece) continue;
    const span = document.createElement("span");
    span.className = "tok-" + origin;
    if (origin === "ppd") span.title = "accepted guess of the prompt tokens";
    if (origin === "lookup") span.title = "accepted copy from prompt lookup";
    span.textContent = piece;
    div.appendChild(span);
  }
}

function showStats(s) {
  $("stat-tps").textContent = s.tps.toFixed(1);
  $("stat-tau").textContent = s.tau ? s.tau.toFixed(2) : "–";
  $("stat-tokens").textContent = s.tokens;
  $("stat-steps").textContent = s.steps;
}

// Server-sent events: "data: <json>" lines, events separated by a blank line.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const usePPD = $("ppd-toggle").checked;
  const body = {
    model: model || undefined,
    messages: history,
    stream: true,
    stream_options: {include_usage: true},
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    ppd: usePPD,
  };
  controller = new AbortController();
  $("send").textContent = "Stop";
  $("send").classList.add("stop");
  const start = performance.now();
  const live = {tokens: 0, steps: 0, accepted: 0, tps: 0, tau: 0};
  let reply = "";
  let final = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      throw new Error(`${resp.status}: ${(err.error && err.error.message) || resp.statusText}`);
    }
    for await (const data of events(resp)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      const step = chunk.ppd && chunk.ppd.origins ? chunk.ppd : null;
      if (chunk.ppd && chunk.ppd.tau !== undefined) final = chunk.ppd;
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        appendTokens(div, choice.delta.content, step);
        div.scrollIntoView({block: "end"});
      }
      if (step) {
        live.tokens += step.origins.length;
        if (step.accept_length > 0) { live.steps += 1; live.accepted += step.accept_length; }
        live.tau = live.steps ? live.accepted / live.steps : 0;
        live.tps = live.tokens / ((performance.now() - start) / 1000);
        showStats(live);
      }
    }
    if (final) {
      showStats({tokens: live.tokens, steps: final.steps, tau: final.tau, tps: final.tokens_per_s});
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${live.tokens} tokens · ${final.steps} steps · τ ${final.tau.toFixed(2)} · ` +
        `${final.tokens_per_s.toFixed(1)} tokens/s · PPD ${usePPD ? "on" : "off"}`;
      div.appendChild(meta);
    }
    history.push({role: "assistant", content: reply});
    showBanner("");
  } catch (err) {
    if (err.name === "AbortError") {
      history.push({role: "assistant", content: reply});
    } else if (err instanceof TypeError) {  // fetch's network failure
      history.pop();
      div.remove();
      unreachable(err);
    } else {
      history.pop();
      div.classList.add("error");
      div.textContent = "Error " + err.message;
    }
  } finally {
    controller = null;
    $("send").textContent = "Send";
    $("send").classList.remove("stop");
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (controller) { controller.abort(); return; }
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
});

checkHealth();
setInterval(checkHealth, 5000);
