//! The daemon's optional OpenAI-compatible HTTP API: loopback only, bearer
//! token, Host check against DNS rebinding, no browser pages (Origin or
//! preflight refused, no CORS headers), requests through the same backend.

use std::io::{Read, Write};
use std::time::Duration;

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::host_home;
use serde_json::{json, Value};

use crate::server::fixture_model;
use crate::{host_bin, standin_bin};

/// One HTTP/1.1 request over a fresh connection: (status, head, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.into() };
    (status, head.to_string(), body)
}

/// A chunked body, reassembled.
fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A relay to a daemon with the stand-in server and the HTTP API on a free
/// port (plus `extra` environment): its home, the port, the browser.
fn daemon_with_api(extra: &[(&str, &str)]) -> (tempfile::TempDir, u16, FakeBrowser) {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let port = free_port();
    let port_s = port.to_string();
    let mut env = vec![
        ("BITNET_HOST_HARDWARE", report.as_str()),
        ("BITNET_HOST_DAEMON", "1"),
        ("BITNET_DAEMON_IDLE_MS", "3000"),
        ("BITNET_HTTP_PORT", port_s.as_str()),
    ];
    env.extend_from_slice(extra);
    let b =
        FakeBrowser::spawn_shared(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"), &env, home.path());
    (home, port, b)
}

#[test]
fn the_http_api_needs_the_token_our_host_name_and_no_origin_and_serves_the_shared_model() {
    let (home, port, mut b) = daemon_with_api(&[]);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let r = b.request(&json!({"id": "l", "type": "load_model", "model": model}));
    let server_pid = r["result"]["pid"].clone();
    assert!(server_pid.is_u64(), "{r}");
    let token_file = home.path().join("config/http-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let host = format!("127.0.0.1:{port}");
    let auth = format!("Bearer {token}");
    let chat = json!({"messages": [{"role": "user", "content": "[[tokens 4]] hi"}]}).to_string();

    // Refusals.
    let (st, _, _) = http(port, "GET", "/v1/models", &[("Host", &host)], "");
    assert_eq!(st, 401, "no token");
    let (st, _, _) = http(port, "GET", "/v1/models", &[("Host", &host), ("Authorization", "Bearer nope")], "");
    assert_eq!(st, 401, "wrong token");
    let (st, _, _) =
        http(port, "GET", "/v1/models", &[("Host", &format!("evil.example:{port}")), ("Authorization", &auth)], "");
    assert_eq!(st, 403, "a rebinding host name");
    let (st, head, _) = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[
            ("Host", &host),
            ("Authorization", &auth),
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/json"),
        ],
        &chat,
    );
    assert_eq!(st, 403, "a browser page");
    assert!(!head.to_ascii_lowercase().contains("access-control-allow-origin"), "{head}");
    let (st, head, _) = http(
        port,
        "OPTIONS",
        "/v1/chat/completions",
        &[("Host", &host), ("Access-Control-Request-Method", "POST")],
        "",
    );
    assert_eq!(st, 403, "a preflight");
    assert!(!head.to_ascii_lowercase().contains("access-control-allow"), "{head}");

    // Served, by the model the browser loaded.
    let (st, _, body) = http(port, "GET", "/v1/models", &[("Host", &host), ("Authorization", &auth)], "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], model.to_str().unwrap(), "{v}");
    let (st, _, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[("Host", &format!("localhost:{port}")), ("Authorization", &auth), ("Content-Type", "application/json")],
        &chat,
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    // Streamed: server-sent events passed through.
    let stream = json!({"stream": true, "messages": [{"role": "user", "content": "[[tokens 5]] hi"}]}).to_string();
    let (st, head, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[("Host", &host), ("Authorization", &auth), ("Content-Type", "application/json")],
        &stream,
    );
    assert_eq!(st, 200);
    assert!(head.to_ascii_lowercase().contains("text/event-stream"), "{head}");
    assert!(body.matches("data: ").count() >= 5, "{body}");
    // The browser still sees the same server.
    let st = b.request(&json!({"id": "s", "type": "status"}));
    assert_eq!(st["result"]["server"]["pid"], server_pid, "{st}");
}

#[test]
fn the_http_api_is_off_unless_asked() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut b = FakeBrowser::spawn_shared(
        host_bin(),
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", report.as_str()), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "3000")],
        home.path(),
    );
    assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    assert!(!home.path().join("config/http-token").exists(), "no token, no listener");
}

#[test]
fn slow_idle_and_odd_http_clients_are_cut_off_and_never_crowd_out_others() {
    let (home, port, mut b) = daemon_with_api(&[("BITNET_HTTP_HEADER_TIMEOUT_MS", "400")]);
    assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    let token_file = home.path().join("config/http-token");
    let t = std::time::Instant::now();
    while !token_file.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let host = format!("127.0.0.1:{port}");
    let auth = format!("Bearer {token}");
    // More half-sent requests than the server serves at once (slowloris).
    let slow: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: ").unwrap();
            s
        })
        .collect();
    // A real client still gets its answer once the header timeout has cut
    // them off.
    let t = std::time::Instant::now();
    let (st, _, body) = http(port, "GET", "/v1/models", &[("Host", &host), ("Authorization", &auth)], "");
    assert_eq!(st, 200, "{body}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Every one closed within a shared deadline (not 10 s each: a server
    // that never closes them must fail the test soon).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for mut s in slow {
        let left = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server (maybe after a 408): EOF or a reset.
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!("a slow connection was still open after 10 s")
                }
                Err(_) => break,
                Ok(n) => total += n,
            }
            assert!(total < 4096);
        }
    }
    // An idle keep-alive connection is closed too.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = idle.read(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(5), "idle connection open for {:?}: {r:?}", t.elapsed());
    assert!(matches!(r, Ok(0) | Err(_)));
    // Two Host headers (the first one ours), and an absolute-form target.
    let (st, _, _) =
        http(port, "GET", "/v1/models", &[("Host", &host), ("Host", "evil.example"), ("Authorization", &auth)], "");
    assert_eq!(st, 400, "two Host headers");
    let (st, _, _) =
        http(port, "GET", "http://evil.example/v1/models", &[("Host", &host), ("Authorization", &auth)], "");
    assert_eq!(st, 400, "an absolute-form target");
    // A body that is not JSON.
    let (st, _, _) =
        http(port, "POST", "/v1/chat/completions", &[("Host", &host), ("Authorization", &auth)], "{not json");
    assert_eq!(st, 400);
}

#[test]
fn v1_models_gives_names_as_models_lists_them_and_a_name_loads_that_model() {
    let (home, port, mut b) = daemon_with_api(&[]);
    // The daemon is up once the relay has an answer.
    assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    let dir = home.path().join("data/models/bitnet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), dir.join("tiny.gguf")).unwrap();
    let token = std::fs::read_to_string(home.path().join("config/http-token")).unwrap();
    let (host, auth) = (format!("127.0.0.1:{port}"), format!("Bearer {token}"));
    let list = || {
        let (st, _, body) = http(port, "GET", "/v1/models", &[("Host", &host), ("Authorization", &auth)], "");
        assert_eq!(st, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let v = list();
    assert_eq!(
        v["data"],
        json!([{"id": "bitnet/tiny.gguf", "object": "model", "owned_by": "bitnet-host", "loaded": false}])
    );
    // A client types back the id it was shown.
    let chat = json!({"model": "bitnet/tiny.gguf", "messages": [{"role": "user", "content": "[[tokens 3]] hi"}]});
    let (st, _, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[("Host", &host), ("Authorization", &auth), ("Content-Type", "application/json")],
        &chat.to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let v = list();
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["id"], "bitnet/tiny.gguf");
    assert_eq!(v["data"][0]["loaded"], true, "{v}");
}
