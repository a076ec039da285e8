// A small client for bitnet-host's protocol v1 over one connectNative port.
// Copy it into your extension. Requests carry ids; replies and events come
// back with the same id; replies over 1 MiB arrive as ordered chunks and are
// reassembled here. The port reconnects when the host restarts.
//
//   const host = new BitnetHost("com.bitnet.host");
//   await host.request("load_model", { model: "/path/model.gguf" });
//   const r = await host.request("chat", { messages }, (ev) => show(ev.text));

export class BitnetHost {
  constructor(name = "com.bitnet.host") {
    this.name = name;
    this.nextId = 1;
    this.pending = new Map(); // id -> { resolve, reject, onEvent, chunks }
    this.port = null;
    this.onDisconnect = null;
  }

  connect() {
    if (this.port) return this.port;
    const port = chrome.runtime.connectNative(this.name);
    port.onMessage.addListener((m) => this.#receive(m));
    port.onDisconnect.addListener(() => {
      const why = chrome.runtime.lastError?.message || "the host went away";
      this.port = null;
      for (const p of this.pending.values()) p.reject(new Error(why));
      this.pending.clear();
      if (this.onDisconnect) this.onDisconnect(why);
    });
    this.port = port;
    return port;
  }

  #receive(m) {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.event === "chunk") {
      // {id, event: "chunk", index, count, data}: a message split to fit
      // the browser's 1 MiB frame limit, in order.
      p.chunks = p.chunks || [];
      p.chunks[m.index] = m.data;
      if (p.chunks.filter((c) => c !== undefined).length < m.count) return;
      m = JSON.parse(p.chunks.join(""));
      p.chunks = null;
    }
    if (m.event) {
      if (p.onEvent) p.onEvent(m);
      return;
    }
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else p.reject(Object.assign(new Error(m.error?.message || "error"), { code: m.error?.code, details: m.error?.details }));
  }

  // The returned promise carries the request's `id` (for `cancel`).
  request(type, params = {}, onEvent = null) {
    const id = `r${this.nextId++}`;
    let port;
    try {
      port = this.connect();
    } catch (e) {
      return Object.assign(Promise.reject(e), { id });
    }
    const p = new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onEvent });
      port.postMessage({ id, type, ...params });
    });
    return Object.assign(p, { id });
  }

  cancel(id) {
    return this.request("cancel", { target: id });
  }
}
