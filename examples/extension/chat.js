// The example's chat page: status panel, model picker, a chat box that
// streams tokens, cancel. Everything goes through one BitnetHost
// (client.js), which reconnects when the host restarts.
import { BitnetHost } from "./client.js";

const $ = (id) => document.getElementById(id);
const host = new BitnetHost("com.bitnet.host");
const history = [];
let running = null; // the chat request in flight

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
  $("st-model").textContent = srv.model ? `${srv.model.path.split("/").pop()} (${srv.model.format})` : "none";
  return s;
}

async function refreshModels() {
  const r = await host.request("models");
  const select = $("model");
  select.replaceChildren();
  for (const m of r.models || []) {
    const o = document.createElement("option");
    o.value = m.path;
    o.textContent = m.name || m.path;
    select.append(o);
  }
}

async function loadModel() {
  const path = $("model-path").value.trim() || $("model").value;
  if (!path) return;
  showError("");
  $("st-backend").textContent = "loading…";
  try {
    await host.request("load_model", { model: path }, (ev) => {
      if (ev.event === "load") $("st-backend").textContent = ev.state;
    });
  } catch (e) {
    showError(`${e.code || "error"}: ${e.message}`);
  }
  await refreshStatus().catch(() => {});
  await refreshModels().catch(() => {});
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
  history.push({ role: "user", content: text });
  addTurn("user", text);
  const out = addTurn("assistant", "");
  let tokens = 0;
  let first = null;
  const req = host.request("chat", { messages: history, max_tokens: 256 }, (ev) => {
    if (ev.event !== "delta") return;
    first ??= performance.now();
    tokens += 1;
    out.textContent += ev.text;
  });
  running = req;
  $("cancel").disabled = false;
  $("send").disabled = true;
  try {
    const r = await req;
    history.push({ role: "assistant", content: out.textContent });
    const n = r.usage?.completion_tokens ?? tokens;
    const secs = first ? (performance.now() - first) / 1000 : 0;
    $("st-speed").textContent = secs > 0 ? `${(n / secs).toFixed(1)} tokens/s (${n} tokens)` : `${n} tokens`;
  } catch (e) {
    history.pop();
    if (e.code === "cancelled") out.textContent += " [cancelled]";
    else if (notInstalled(e.message)) hostMissing();
    else showError(`${e.code || "error"}: ${e.message}`);
  } finally {
    running = null;
    $("cancel").disabled = true;
    $("send").disabled = false;
  }
}

$("form").addEventListener("submit", send);
$("cancel").addEventListener("click", () => running && host.cancel(running.id).catch(() => {}));
$("load").addEventListener("click", loadModel);

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
    else showError(`${e.code || "error"}: ${e.message}`);
  }
  document.body.dataset.ready = "1";
}

start();
