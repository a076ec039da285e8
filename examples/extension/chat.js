// The example's chat page: status panel, model picker, a chat box that
// streams tokens, cancel. Everything goes through one BitnetHost
// (client.js), which reconnects when the host restarts.
//
// A first message needs no setup: with no model loaded (a fresh daemon, or
// one restarted since), the page loads the model used last here, else the
// host's default, showing the load's progress in the answer's place. With
// no model at all it offers the host catalog's first model for download.
import { BitnetHost } from "./client.js";

const $ = (id) => document.getElementById(id);
const host = new BitnetHost("com.bitnet.host");
const history = [];
const LAST_MODEL = "bitnet.lastModel";
let running = null; // the chat request in flight
let catalog = []; // what the host can download by name
let defaultModel = null; // the host's pick when the user has not chosen

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

// connectNative fails (Chromium: "Specified native messaging host not
// found."; Firefox: "No such native application") when the host is not
// installed for this browser: say how to install it.
function notInstalled(message) {
  return /not found|no such native application|not installed/i.test(message || "");
}

function hostMissing() {
  $("hint").hidden = false;
  $("hint-id").textContent = chrome.runtime.id;
  $("st-host").textContent = "not installed";
}

// What went wrong, in words, with what to do about it. The code stays in
// brackets for bug reports.
function explain(e) {
  const msg = e.message || String(e);
  const words = {
    not_available: "No model is loaded. Pick one above and press Load, or download one.",
    backend_crashed: `The model server stopped unexpectedly (${msg}). Send again to restart it; \`bitnet-host logs\` shows what it printed.`,
    busy: "The host is busy with other requests. Try again in a moment.",
    not_found: `That model is not there any more (${msg}). Pick another one above.`,
    timeout: "The model took too long to answer. Try a shorter message, or a smaller model.",
    backend_error: `The model server refused the request: ${msg}`,
    invalid_request: msg,
  }[e.code];
  return `${words || msg}${e.code ? ` [${e.code}]` : ""}`;
}

host.onDisconnect = (why) => {
  if (notInstalled(why)) hostMissing();
  else $("st-host").textContent = `disconnected (${why}); reconnects on the next request`;
};

async function refreshStatus() {
  const s = await host.request("status");
  $("st-host").textContent = `bitnet-host ${s.version} (pid ${s.pid})`;
  const hw = s.hardware;
  if (hw) {
    const gpus = [];
    if (hw.cuda?.status === "available") gpus.push(...hw.cuda.devices.map((d) => d.name));
    $("st-hardware").textContent = `${hw.cpu.brand || hw.cpu.arch}, ${hw.cpu.logical_cores} threads, ` +
      `${(hw.memory.total_bytes / 2 ** 30).toFixed(1)} GiB` + (gpus.length ? `, ${gpus.join(", ")}` : "");
  }
  const srv = s.server || {};
  $("st-backend").textContent = srv.state === "ready" ? `${srv.candidate} (pid ${srv.pid})` : srv.state || "–";
  // A model in the models folder by its name there; one elsewhere by its file name.
  const absolute = (p) => /^([\\/]|[A-Za-z]:[\\/])/.test(p || "");
  const shown = srv.name && !absolute(srv.name) ? srv.name : srv.model?.path.split(/[\\/]/).pop();
  $("st-model").textContent = srv.model ? `${shown} (${srv.model.format})` : "none";
  return s;
}

async function refreshModels() {
  const r = await host.request("models");
  const select = $("model");
  select.replaceChildren();
  const usable = (r.models || []).filter((m) => !m.error);
  for (const m of usable) {
    const o = document.createElement("option");
    o.value = m.path;
    o.textContent = m.name || m.path;
    select.append(o);
  }
  catalog = r.catalog || [];
  defaultModel = r.default || null;
  const offer = catalog.find((c) => !c.pulled);
  $("offer").hidden = !(usable.length === 0 && offer);
  if (offer) {
    const size = offer.bytes ? `, ${(offer.bytes / 1e9).toFixed(1)} GB` : "";
    $("offer-title").textContent = `${offer.title} (${offer.name}${size})`;
    $("pull").dataset.name = offer.name;
  }
  return usable;
}

// Load `model` (a path or a name as `models` lists it), showing progress in
// `where` (the backend panel, and the answer's place when a message waits).
async function load(model, where = null) {
  const say = (text) => {
    $("st-backend").textContent = text;
    if (where) where.textContent = text;
  };
  say(`loading ${model}…`);
  await host.request("load_model", { model }, (ev) => {
    if (ev.event !== "load") return;
    if (ev.state === "waiting") say(`loading ${model}: ${ev.message}`);
    else say(`loading ${model}: ${ev.state}${ev.candidate ? ` on ${ev.candidate}` : ""}`);
  });
  localStorage.setItem(LAST_MODEL, model);
  if (where) where.textContent = "";
}

async function loadModel() {
  const path = $("model-path").value.trim() || $("model").value;
  if (!path) return;
  showError("");
  try {
    await load(path);
  } catch (e) {
    showError(explain(e));
  }
  await refreshStatus().catch(() => {});
  await refreshModels().catch(() => {});
}

// Before a message: a model must be loaded. The last one used here, else
// the host's default; none at all is an error that points at the offer.
async function ensureModel(where) {
  const s = await refreshStatus();
  if (s.server?.model) return;
  const usable = await refreshModels();
  const last = localStorage.getItem(LAST_MODEL);
  const known = (m) => usable.some((u) => u.path === m || u.name === m);
  const pick = (last && known(last) && last) || defaultModel;
  if (!pick) {
    throw Object.assign(new Error("no model on this machine yet: download one above, or give a path and press Load"), { code: "no_model" });
  }
  await load(pick, where);
  await refreshStatus().catch(() => {});
}

function tooLong(e) {
  return e.code === "invalid_request" && /context/i.test(e.message || "");
}

// Removes the oldest user/assistant exchange before the last message
// (system messages stay); false when there is none left to remove.
function dropOldest() {
  const first = history.findIndex((m) => m.role !== "system");
  if (first < 0 || first >= history.length - 1) return false;
  const end = history[first + 1]?.role === "assistant" ? first + 2 : first + 1;
  history.splice(first, Math.min(end, history.length - 1) - first);
  return true;
}

function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = `turn ${role}`;
  div.textContent = text;
  $("log").append(div);
  return div;
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || running) return;
  $("input").value = "";
  showError("");
  const userTurn = addTurn("user", text);
  const out = addTurn("assistant", "");
  $("send").disabled = true;
  let tokens = 0;
  let first = null;
  try {
    out.classList.add("note");
    await ensureModel(out);
    out.classList.remove("note");
    history.push({ role: "user", content: text });
    let r;
    for (;;) {
      const req = host.request("chat", { messages: history, max_tokens: 256 }, (ev) => {
        if (ev.event !== "delta") return;
        first ??= performance.now();
        tokens += 1;
        out.textContent += ev.text;
      });
      running = req;
      $("cancel").disabled = false;
      try {
        r = await req;
        break;
      } catch (e) {
        // The conversation outgrew the model's context: leave out the
        // oldest exchange (never the new message) and ask again.
        if (!(tooLong(e) && dropOldest())) throw e;
        $("log").insertBefore(
          Object.assign(document.createElement("div"), {
            className: "turn note",
            textContent: "(the oldest messages no longer fit the model's context and were left out)",
          }),
          userTurn,
        );
      }
    }
    history.push({ role: "assistant", content: out.textContent });
    const n = r.usage?.completion_tokens ?? tokens;
    const secs = first ? (performance.now() - first) / 1000 : 0;
    $("st-speed").textContent = secs > 0 ? `${(n / secs).toFixed(1)} tokens/s (${n} tokens)` : `${n} tokens`;
  } catch (e) {
    if (history.at(-1)?.content === text) history.pop();
    if (e.code === "cancelled") {
      out.textContent += " [cancelled]";
    } else {
      // A failed turn leaves no empty answer behind; the message goes back
      // into the box to send again.
      if (!out.textContent || out.classList.contains("note")) {
        out.remove();
        userTurn.remove();
        $("input").value = text;
      }
      if (notInstalled(e.message)) hostMissing();
      else showError(explain(e));
    }
  } finally {
    running = null;
    $("cancel").disabled = true;
    $("send").disabled = false;
    refreshStatus().catch(() => {});
  }
}

// Download the offered catalog model, then load it.
async function pull() {
  const name = $("pull").dataset.name;
  if (!name) return;
  showError("");
  $("pull").disabled = true;
  try {
    await host.request("pull", { model: name }, (ev) => {
      if (ev.event !== "progress") return;
      const mb = (n) => (n / 1e6).toFixed(1);
      $("offer-progress").textContent = ev.total
        ? `${mb(ev.received)} of ${mb(ev.total)} MB (${Math.floor((100 * ev.received) / ev.total)}%)`
        : `${mb(ev.received)} MB`;
    });
    $("offer-progress").textContent = "downloaded";
    await load(name);
  } catch (e) {
    showError(explain(e));
  } finally {
    $("pull").disabled = false;
    await refreshModels().catch(() => {});
    await refreshStatus().catch(() => {});
  }
}

$("form").addEventListener("submit", send);
$("cancel").addEventListener("click", () => running && host.cancel(running.id).catch(() => {}));
$("load").addEventListener("click", loadModel);
$("pull").addEventListener("click", pull);

async function start() {
  try {
    const s = await refreshStatus();
    await refreshModels();
    const m = new URLSearchParams(location.search).get("model");
    if (m && !s.server?.model) {
      $("model-path").value = m;
      await loadModel();
    }
  } catch (e) {
    if (notInstalled(e.message)) hostMissing();
    else showError(explain(e));
  }
  document.body.dataset.ready = "1";
}

start();
