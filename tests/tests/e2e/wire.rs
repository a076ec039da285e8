//! The wire's promises in both modes a browser meets: served in-process
//! (BITNET_HOST_DAEMON=0) and through the relay to the daemon (=1). The
//! same input gets the same answer, every request exactly one final reply
//! whatever happens to the daemon, no frame over 1 MiB, nothing between the
//! chunks of one message (FakeBrowser checks the last two on every read).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, encode_frame, FakeBrowser};
use serde_json::{json, Value};

use crate::host_bin;
use crate::server::{alive, fixture_model, home_with_server};

const T: Duration = Duration::from_secs(20);
const EXT: &str = "abcdefghijklmnopabcdefghijklmnop";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    InProcess,
    Relay,
}

const MODES: [Mode; 2] = [Mode::InProcess, Mode::Relay];

fn browser(mode: Mode, home: &Path, report: &str) -> FakeBrowser {
    let daemon = if mode == Mode::Relay { "1" } else { "0" };
    FakeBrowser::spawn_shared(
        host_bin(),
        &chromium_args(EXT),
        &[("BITNET_HOST_HARDWARE", report), ("BITNET_HOST_DAEMON", daemon), ("BITNET_DAEMON_IDLE_MS", "3000")],
        home,
    )
}

fn server_pid(b: &mut FakeBrowser, id: &str) -> u32 {
    let r = b.request(&json!({"id": id, "type": "hello"}));
    r["result"]["host"]["pid"].as_u64().expect("pid") as u32
}

fn kill(pid: u32) {
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
}

fn is_final(m: &Value) -> bool {
    m.get("ok").is_some() || m.get("status").is_some()
}

/// Final replies per id (v1 `id` or legacy `messageId`, as JSON text).
fn count_finals(finals: &mut HashMap<String, usize>, messages: &[Value]) {
    for m in messages.iter().filter(|m| is_final(m)) {
        let id = m.get("messageId").or_else(|| m.get("id")).cloned().unwrap_or(Value::Null);
        *finals.entry(id.to_string()).or_default() += 1;
    }
}

#[test]
fn every_request_gets_exactly_one_final_reply_even_when_the_daemon_dies() {
    for mode in MODES {
        let (home, report) = home_with_server(&[]);
        let mut b = browser(mode, home.path(), &report);
        let pid = server_pid(&mut b, "h");
        let mut finals = HashMap::new();
        // A reply big enough to go as chunks.
        b.send(&json!({"id": "big", "type": "echo", "bytes": 3 << 20}));
        let big = b.collect("id", &json!("big"), T).1;
        assert!(big.frames > 1 && big.value["ok"] == true, "{mode:?}: {} frames", big.frames);
        // Ids the session cannot key: refused at once, with id null.
        for odd in [json!({"a": 1}), json!(true), json!(null)] {
            b.send(&json!({"id": odd, "type": "ping"}));
            let r = b.collect("id", &Value::Null, T).1.value;
            assert_eq!(r["error"]["code"], "invalid_request", "{mode:?}: {r}");
        }
        // Both `id` and `action`: the legacy dialect, answered by messageId.
        b.send(&json!({"id": "both", "action": "ping", "messageId": "m-both"}));
        assert_eq!(b.collect("messageId", &json!("m-both"), T).1.value["status"], "success", "{mode:?}");
        // A duplicate of a running id is refused and leaves the first alone.
        b.send(&json!({"id": "dup", "type": "echo", "events": 200, "interval_ms": 25}));
        assert_eq!(b.recv(T)["event"], "echo");
        b.send(&json!({"id": "dup", "type": "ping"}));
        let (_, refused) = b.collect("id", &json!("dup"), T);
        assert_eq!(refused.value["error"]["code"], "invalid_request", "{mode:?}: {}", refused.value);
        assert_eq!(refused.value["error"]["message"], "a request with this id is still running");
        count_finals(&mut finals, &[big.value, refused.value]);
        // The fault: the daemon dies (relay), or the request is cancelled
        // (in-process, where the server is the browser's own process).
        match mode {
            Mode::Relay => {
                assert_ne!(pid, b.pid());
                kill(pid);
            }
            Mode::InProcess => {
                let r = b.request(&json!({"id": "c", "type": "cancel", "target": "dup"}));
                count_finals(&mut finals, &[r]);
            }
        }
        let rest = b.messages_for(Duration::from_millis(1500));
        count_finals(&mut finals, &rest);
        let want_code = if mode == Mode::Relay { "backend_crashed" } else { "cancelled" };
        let dup_final: Vec<&Value> = rest.iter().filter(|m| is_final(m) && m["id"] == "dup").collect();
        assert_eq!(dup_final.len(), 1, "{mode:?}: {rest:?}");
        assert_eq!(dup_final[0]["error"]["code"], want_code);
        // "dup" twice (the refusal and its own end), everything else once.
        for (id, n) in &finals {
            let want = if id == "\"dup\"" { 2 } else { 1 };
            assert_eq!(*n, want, "{mode:?}: {n} final replies for {id}: {finals:?}");
        }
        // The next request is served (by a new daemon in relay mode).
        let next = server_pid(&mut b, "h2");
        assert_eq!(next != pid, mode == Mode::Relay);
        if mode == Mode::Relay {
            kill(next);
        }
    }
}

#[test]
fn ids_are_bounded_so_no_frame_is_over_the_browsers_limit() {
    for mode in MODES {
        let (home, report) = home_with_server(&[]);
        let mut b = browser(mode, home.path(), &report);
        let huge = "i".repeat(1 << 20);
        b.send(&json!({"id": huge, "type": "echo", "bytes": 2 << 20}));
        let r = b.collect("id", &Value::Null, T).1.value;
        assert_eq!(r["error"]["code"], "invalid_request", "{mode:?}: {r}");
        assert_eq!(r["error"]["details"]["id_bytes"], (1 << 20) + 2);
        assert_eq!(r["error"]["details"]["limit"], 1024);
        b.send(&json!({"action": "ping", "messageId": huge}));
        let r = b.recv(T);
        assert_eq!((r["status"].as_str(), r.get("messageId")), (Some("error"), None), "{mode:?}: {r}");
        // The longest id allowed, on a reply that must be chunked: every
        // chunk repeats it and still fits (FakeBrowser checks each frame).
        let longest = "l".repeat(1022);
        b.send(&json!({"id": longest, "type": "echo", "bytes": 3 << 20, "events": 2, "event_bytes": 900 * 1024}));
        let (events, fin) = b.collect("id", &json!(longest), T);
        assert_eq!(events.len(), 2, "{mode:?}");
        assert_eq!(fin.value["ok"], true);
        assert!(fin.frames > 3 && fin.largest_frame <= 1 << 20, "{mode:?}: {} frames", fin.frames);
    }
}

#[test]
fn frame_errors_are_the_same_in_both_modes_and_oversized_ones_come_at_once() {
    let mut seen = Vec::new();
    for mode in MODES {
        let (home, report) = home_with_server(&[]);
        let mut b = browser(mode, home.path(), &report);
        server_pid(&mut b, "h");
        // A header that declares over 64 MiB, and no body (yet): answered
        // without waiting for the body.
        let declared = (64u32 << 20) + 1;
        b.send_raw(&declared.to_ne_bytes());
        let too_large = b.collect("id", &Value::Null, T).1.value;
        assert_eq!(too_large["error"]["code"], "frame_too_large", "{mode:?}: {too_large}");
        // The body follows; the stream stays in sync behind it.
        b.send_raw(&vec![b' '; declared as usize]);
        assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true, "{mode:?}");
        let mut errors = vec![too_large];
        for bad in [&b"\xff\xfe"[..], b"{\"id\": 1", b"[1]", b"{\"id\":\"x\"}"] {
            b.send_raw(&encode_frame(bad));
            errors.push(b.recv(T));
        }
        b.send(&json!({"id": "x", "type": "teleport"}));
        errors.push(b.recv(T));
        // Then a frame cut short by the end of input.
        let mut partial = 100u32.to_ne_bytes().to_vec();
        partial.extend_from_slice(b"{\"id\":");
        b.send_raw(&partial);
        b.close_stdin();
        let rest = b.messages_for(Duration::from_secs(3));
        let cut = rest.iter().find(|m| m["error"]["code"] == "truncated_frame").cloned();
        assert!(cut.is_some(), "{mode:?}: {rest:?}");
        errors.push(cut.unwrap_or_default());
        assert!(b.wait_exit(T).is_some(), "{mode:?}: exits after the cut frame");
        seen.push(errors);
    }
    for (a, b) in seen[0].iter().zip(&seen[1]) {
        assert!(a["error"]["details"].is_object() || a["error"]["code"] != "frame_too_large");
        assert_eq!(a, b, "in-process and relay answer alike");
    }
}

#[test]
fn loading_another_model_waits_for_running_streams_instead_of_cutting_them() {
    for mode in MODES {
        let (home, report) = home_with_server(&[]);
        let mut a = browser(mode, home.path(), &report);
        // Relay: another browser of the same daemon asks for the load;
        // in-process: the same connection does.
        let mut other = (mode == Mode::Relay).then(|| browser(mode, home.path(), &report));
        let first = fixture_model("bitnet-b1.58-i2_s.gguf");
        let second = fixture_model("bitnet-tq2_0.gguf");
        assert_eq!(a.request(&json!({"id": "l1", "type": "load_model", "model": first}))["ok"], true, "{mode:?}");
        a.send(&json!({"id": "s", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 30]] [[slow 20]] go"}]}));
        assert_eq!(a.recv(T)["event"], "delta", "{mode:?}: the stream runs");
        let loader = other.as_mut().unwrap_or(&mut a);
        loader.send(&json!({"id": "l2", "type": "load_model", "model": second}));
        let waiting = loader.recv(T);
        assert_eq!(
            (&waiting["id"], &waiting["event"], &waiting["state"]),
            (&json!("l2"), &json!("load"), &json!("waiting")),
            "{mode:?}: {waiting}"
        );
        assert_eq!(waiting["running"], 1);
        let (events, fin) = a.collect("id", &json!("s"), T);
        assert_eq!(fin.value["ok"], true, "{mode:?}: the load cut the stream: {}", fin.value);
        assert_eq!(events.iter().filter(|e| e["event"] == "delta").count(), 29, "{mode:?}");
        let loader = other.as_mut().unwrap_or(&mut a);
        let (_, loaded) = loader.collect("id", &json!("l2"), T);
        assert_eq!(loaded.value["ok"], true, "{mode:?}: {}", loaded.value);
        let st = a.request(&json!({"id": "m", "type": "model_state"}));
        assert_eq!(st["result"]["model"], json!(second), "{mode:?}");
    }
}

#[test]
fn daemon_controls_are_refused_to_extensions_and_left_to_the_cli() {
    for mode in MODES {
        let (home, report) = home_with_server(&[]);
        let mut b = browser(mode, home.path(), &report);
        let pid = server_pid(&mut b, "h");
        for kind in ["retire", "reload_binaries", "relay_hello"] {
            let r = b.request(&json!({"id": kind, "type": kind}));
            assert_eq!(r["error"]["code"], "forbidden", "{mode:?}: {r}");
        }
        assert_eq!(server_pid(&mut b, "h2"), pid, "{mode:?}: still the same server");
        assert!(alive(pid));
        if mode == Mode::Relay {
            let o = std::process::Command::new(host_bin())
                .arg("stop")
                .env("BITNET_HOST_HOME", home.path())
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&o.stdout), format!("stopped daemon {pid}\n"));
            let t = Instant::now();
            while alive(pid) && t.elapsed() < T {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!alive(pid));
        }
    }
}

#[test]
fn the_daemon_knows_a_relay_by_its_socket_not_by_what_it_claims() {
    use std::io::{Read, Write};
    let (home, report) = home_with_server(&[]);
    let mut real = browser(Mode::Relay, home.path(), &report);
    server_pid(&mut real, "h");
    // Any process of this user can connect and claim to be a relay.
    let mut s = std::os::unix::net::UnixStream::connect(home.path().join("state/daemon/daemon.sock")).unwrap();
    let hello = json!({"id": "x", "type": "relay_hello", "relay_pid": 1,
        "caller": {"browser": "firefox", "extension_id": "evil@example.org", "relay_pid": 1}});
    s.write_all(&encode_frame(hello.to_string().as_bytes())).unwrap();
    let mut read = || {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_ne_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    assert_eq!(read()["ok"], true);
    let conns = real.request(&json!({"id": "s", "type": "status"}))["result"]["connections"].clone();
    let conns = conns.as_array().unwrap();
    let fake = conns.iter().find(|c| c["verified"] == false).expect("the claimed one");
    assert_eq!(fake["relay_pid"], std::process::id(), "the pid comes from the socket: {conns:?}");
    let genuine = conns.iter().find(|c| c["verified"] == true).expect("the real relay");
    assert_eq!(genuine["relay_pid"], real.pid());
    assert_eq!(genuine["origin"], format!("chrome-extension://{EXT}/"));
    // A relay's connection carries an extension: no daemon controls on it.
    let mut s2 = s.try_clone().unwrap();
    s2.write_all(&encode_frame(json!({"id": "r", "type": "retire"}).to_string().as_bytes())).unwrap();
    let mut len = [0u8; 4];
    s2.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_ne_bytes(len) as usize];
    s2.read_exact(&mut body).unwrap();
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
}
