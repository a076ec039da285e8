// The example's background: on start, if a test config is present
// (config.json, written by the test harness), open the page it names
// (`open`) and run the round trip it asks for (`report`), reporting the
// outcome to the harness on 127.0.0.1.
import { BitnetHost } from "./client.js";

async function selfTest() {
  let config;
  try {
    config = await (await fetch(chrome.runtime.getURL("config.json"))).json();
  } catch {
    return; // not under test
  }
  if (config.open) chrome.tabs.create({ url: chrome.runtime.getURL(config.open) });
  if (!config.report) return;
  const out = { steps: {} };
  const t0 = performance.now();
  const host = new BitnetHost(config.host || "com.bitnet.host");
  try {
    out.steps.hello = await host.request("hello", { protocol_versions: [1] });
    out.steps.load = await host.request("load_model", { model: config.model });
    let first = null;
    const deltas = [];
    const chat = await host.request(
      "chat",
      { messages: [{ role: "user", content: "Hello" }], max_tokens: 8, temperature: 0 },
      (ev) => {
        if (ev.event === "delta") {
          if (first === null) first = performance.now();
          deltas.push(ev.text);
        }
      },
    );
    out.steps.chat = chat;
    out.deltas = deltas;
    out.connect_to_first_token_ms = first === null ? null : first - t0;
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = { message: String(e.message || e), code: e.code || null };
  }
  await fetch(config.report, { method: "POST", body: JSON.stringify(out) });
}

selfTest();
