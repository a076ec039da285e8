//! Minimal browser automation over WebSocket, enough to drive an extension
//! page: Chrome DevTools Protocol for Chromium, WebDriver BiDi for Firefox.
//! Both evaluate JavaScript in a page and return its (JSON string) result.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{stream::MaybeTlsStream, Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn open(url: &str) -> Socket {
    let t = Instant::now();
    loop {
        match tungstenite::connect(url) {
            Ok((ws, _)) => {
                if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                }
                return ws;
            }
            Err(e) if t.elapsed() > Duration::from_secs(30) => panic!("cannot connect to {url}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Send one command (`id` is filled in) and wait for its answer, skipping events.
fn call(ws: &mut Socket, next: &mut u64, mut msg: Value) -> Value {
    *next += 1;
    let id = *next;
    msg["id"] = json!(id);
    ws.send(Message::text(msg.to_string())).expect("send to the browser");
    loop {
        let m = ws.read().expect("read from the browser");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
        if v["id"] == id {
            return v;
        }
    }
}

/// Chromium over CDP (started with --remote-debugging-port=0).
pub struct Cdp {
    ws: Socket,
    next: u64,
}

impl Cdp {
    /// Connects through `<user-data-dir>/DevToolsActivePort`.
    pub fn connect(user_data: &Path) -> Self {
        let file = user_data.join("DevToolsActivePort");
        let t = Instant::now();
        let text = loop {
            match std::fs::read_to_string(&file) {
                Ok(s) if s.lines().count() >= 2 => break s,
                _ if t.elapsed() > Duration::from_secs(30) => panic!("Chromium wrote no {}", file.display()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut lines = text.lines();
        let (port, path) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        Self { ws: open(&format!("ws://127.0.0.1:{port}{path}")), next: 0 }
    }

    fn cmd(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let mut m = json!({"method": method, "params": params});
        if let Some(s) = session {
            m["sessionId"] = json!(s);
        }
        let r = call(&mut self.ws, &mut self.next, m);
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    /// Opens `url` in a new tab; returns the session to talk to it.
    pub fn open_page(&mut self, url: &str) -> String {
        let target = self.cmd("Target.createTarget", json!({"url": url}), None)["targetId"].clone();
        let s = self.cmd("Target.attachToTarget", json!({"targetId": target, "flatten": true}), None);
        s["sessionId"].as_str().expect("session id").to_string()
    }

    /// Evaluates `expr` (may return a promise) in the page; its value.
    pub fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.cmd(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            Some(session),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    pub fn screenshot(&mut self, session: &str) -> Vec<u8> {
        use base64::Engine;
        let r = self.cmd("Page.captureScreenshot", json!({"format": "png"}), Some(session));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap_or("")).expect("PNG data")
    }
}

/// Firefox over WebDriver BiDi (started with --remote-debugging-port).
pub struct Bidi {
    ws: Socket,
    next: u64,
}

impl Bidi {
    pub fn connect(port: u16) -> Self {
        let mut b = Self { ws: open(&format!("ws://127.0.0.1:{port}/session")), next: 0 };
        b.cmd("session.new", json!({"capabilities": {}}));
        b
    }

    fn cmd(&mut self, method: &str, params: Value) -> Value {
        let r = call(&mut self.ws, &mut self.next, json!({"method": method, "params": params}));
        assert_eq!(r["type"], "success", "{method}: {r}");
        r["result"].clone()
    }

    /// Installs an unpacked extension as a temporary add-on; its id.
    pub fn install_extension(&mut self, dir: &Path) -> String {
        let r = self.cmd("webExtension.install", json!({"extensionData": {"type": "path", "path": dir}}));
        r["extension"].as_str().unwrap_or("").to_string()
    }

    /// Opens `url` in a new tab; the context id.
    pub fn open_page(&mut self, url: &str) -> String {
        let ctx = self.cmd("browsingContext.create", json!({"type": "tab"}))["context"].as_str().unwrap().to_string();
        self.cmd("browsingContext.navigate", json!({"context": ctx, "url": url, "wait": "complete"}));
        ctx
    }

    /// The context whose URL starts with `prefix` (a page something else
    /// opened), once there is one.
    pub fn find_page(&mut self, prefix: &str) -> String {
        let t = Instant::now();
        loop {
            let tree = self.cmd("browsingContext.getTree", json!({}));
            let found = tree["contexts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["url"].as_str().is_some_and(|u| u.starts_with(prefix)));
            if let Some(c) = found {
                return c["context"].as_str().unwrap_or("").to_string();
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no page at {prefix}: {tree}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Evaluates `expr` in the page; it must produce a string (JSON.stringify
    /// what you need), returned parsed.
    pub fn eval(&mut self, ctx: &str, expr: &str) -> Value {
        let r =
            self.cmd("script.evaluate", json!({"expression": expr, "target": {"context": ctx}, "awaitPromise": true}));
        assert_eq!(r["type"], "success", "{expr}: {r}");
        let v = &r["result"];
        match v["type"].as_str() {
            Some("string") => Value::String(v["value"].as_str().unwrap_or("").into()),
            Some("number") | Some("boolean") => v["value"].clone(),
            _ => Value::Null,
        }
    }
}
