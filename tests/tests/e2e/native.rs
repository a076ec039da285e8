//! Protocol v1 over native messaging, as Chromium and Firefox start the host.

use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, encode_frame, firefox_args, FakeBrowser};
use serde_json::{json, Value};

use crate::host_bin;

const T: Duration = Duration::from_secs(10);

fn chromium() -> FakeBrowser {
    FakeBrowser::spawn(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"))
}

fn filler(len: usize) -> String {
    (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
}

/// The next reply that carries `id: null` (errors about frames whose id
/// could not be read), skipping other requests' traffic.
fn next_unrouted(b: &mut FakeBrowser) -> Value {
    b.collect("id", &Value::Null, T).1.value
}

fn assert_still_serving(b: &mut FakeBrowser, id: &str) {
    let r = b.request(&json!({"id": id, "type": "ping"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["pong"], true);
}

#[test]
fn hello_and_ping_as_chromium() {
    let mut b = chromium();
    let r = b.request(&json!({"id": 1, "type": "hello", "protocol_versions": [1]}));
    assert_eq!(r["id"], 1);
    assert_eq!(r["ok"], true);
    assert_eq!(r["result"]["protocol"]["selected"], 1);
    assert_eq!(r["result"]["host"]["name"], "bitnet-host");
    assert_eq!(r["result"]["host"]["pid"], b.pid());
    assert!(r["result"]["capabilities"].as_array().unwrap().contains(&json!("cancel")));
    let r = b.request(&json!({"id": "p", "type": "ping"}));
    assert_eq!(r["id"], "p");
    assert_eq!(r["result"]["pong"], true);
}

#[test]
fn hello_and_ping_as_firefox() {
    let mut b = FakeBrowser::spawn(
        host_bin(),
        &firefox_args("/home/u/.mozilla/native-messaging-hosts/com.bitnet.host.json", "bitnet@example.org"),
    );
    let r = b.request(&json!({"id": "h", "type": "hello"}));
    assert_eq!(r["ok"], true, "{r}");
    let r = b.request(&json!({"id": 2, "type": "ping"}));
    assert_eq!(r["result"]["pong"], true);
}

#[test]
fn hello_without_a_common_version_is_refused() {
    let mut b = chromium();
    let r = b.request(&json!({"id": 1, "type": "hello", "protocol_versions": [99]}));
    assert_error(&r, "unsupported_version");
    assert_eq!(r["error"]["details"]["supported"], json!([1]));
}

#[test]
fn fifty_concurrent_requests_each_get_their_own_reply() {
    let mut b = chromium();
    // Half of them stream events with a delay so replies really interleave.
    for i in 0..50 {
        let req = if i % 2 == 0 {
            json!({"id": i, "type": "echo", "data": {"n": i}, "events": 3, "interval_ms": 5 + (i % 7), "event_bytes": 10})
        } else {
            json!({"id": i, "type": "ping"})
        };
        b.send(&req);
    }
    let mut finals = std::collections::HashMap::new();
    let mut events = std::collections::HashMap::<u64, usize>::new();
    while finals.len() < 50 {
        let m = b.recv(T);
        let id = m["id"].as_u64().expect("every message carries its numeric id");
        if m.get("event").is_some() {
            assert!(!finals.contains_key(&id), "event after the final reply of {id}");
            *events.entry(id).or_default() += 1;
        } else {
            assert!(finals.insert(id, m).is_none(), "two final replies for {id}");
        }
    }
    for i in 0..50u64 {
        let r = &finals[&i];
        assert_eq!(r["ok"], true, "{r}");
        if i % 2 == 0 {
            assert_eq!(r["result"]["data"]["n"], i);
            assert_eq!(events.get(&i), Some(&3));
        } else {
            assert_eq!(r["result"]["pong"], true);
        }
    }
}

#[test]
fn every_bad_input_gets_a_typed_error_and_the_host_keeps_serving() {
    let mut b = chromium();
    // A request that is running while the bad frames arrive must survive.
    b.send(&json!({"id": "long", "type": "echo", "events": 2, "interval_ms": 300}));

    b.send_raw(&encode_frame(&[0xff, 0xfe, 0x00]));
    assert_error(&next_unrouted(&mut b), "invalid_utf8");
    assert_still_serving(&mut b, "after-utf8");

    b.send_raw(&encode_frame(b"{\"id\": 1, \"type\": "));
    assert_error(&next_unrouted(&mut b), "invalid_json");
    assert_still_serving(&mut b, "after-json");

    for (frame, id) in [
        (json!([1, 2, 3]), Value::Null),
        (json!({"type": "ping"}), Value::Null),
        (json!({"id": "x"}), json!("x")),
        (json!({"id": [1], "type": "ping"}), Value::Null),
    ] {
        b.send(&frame);
        let r = b.collect("id", &id, T).1.value;
        assert_error(&r, "invalid_request");
        assert_eq!(r["id"], id, "{r}");
    }
    assert_still_serving(&mut b, "after-invalid");

    let r = b.request(&json!({"id": "u", "type": "teleport"}));
    assert_error(&r, "unknown_type");
    assert_still_serving(&mut b, "after-unknown");

    // Declared length over 64 MiB, followed by that many bytes: skipped
    // without being held, and the stream stays in sync.
    let declared = (64 << 20) + 1usize;
    let mut big = (declared as u32).to_ne_bytes().to_vec();
    big.resize(4 + declared, b' ');
    b.send_raw(&big);
    let r = next_unrouted(&mut b);
    assert_error(&r, "frame_too_large");
    assert_eq!(r["error"]["details"]["declared"], declared);
    assert_still_serving(&mut b, "after-huge");

    // A frame of exactly 64 MiB is accepted.
    let data = filler((64 << 20) - 100);
    let req = json!({"id": "max", "type": "ping", "pad": data}).to_string();
    assert!(req.len() <= 64 << 20);
    b.send_raw(&encode_frame(req.as_bytes()));
    assert_eq!(b.collect("id", &json!("max"), T).1.value["ok"], true);

    let (events, done) = b.collect("id", &json!("long"), T);
    assert_eq!(events.len(), 2);
    assert_eq!(done.value["ok"], true);
}

#[test]
fn a_frame_cut_short_is_reported_then_the_host_exits() {
    let mut b = chromium();
    let mut partial = 100u32.to_ne_bytes().to_vec();
    partial.extend_from_slice(b"{\"id\":");
    b.send_raw(&partial);
    b.close_stdin();
    let rest = b.drain_until_closed(T);
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_error(&rest[0], "truncated_frame");
    assert_eq!(rest[0]["error"]["details"]["declared"], 100);
    assert!(b.wait_exit(Duration::from_secs(2)).is_some());
}

#[test]
fn a_reply_over_one_mebibyte_arrives_in_chunks_that_reassemble_exactly() {
    let mut b = chromium();
    b.send(&json!({"id": "big", "type": "echo", "bytes": 3_000_000}));
    let m = b.recv_message(T);
    assert!(m.frames >= 3, "3 MB in {} frames", m.frames);
    assert!(m.largest_frame <= 1 << 20);
    assert_eq!(m.value["id"], "big");
    assert_eq!(m.value["result"]["text"].as_str().unwrap(), filler(3_000_000));

    // Escape-heavy text: control characters, quotes, multi-byte and astral
    // characters, sent in and echoed back byte for byte.
    let mut tricky = String::new();
    for i in 0..600_000u32 {
        tricky.push_str(["\u{1}", "\"", "\\", "é", "😀", "\n", "z"][(i % 7) as usize]);
    }
    b.send(&json!({"id": "tricky", "type": "echo", "data": tricky}));
    let m = b.recv_message(T);
    assert!(m.frames > 1);
    assert_eq!(m.value["result"]["data"].as_str().unwrap(), tricky);
    // A reply just under the limit still goes as one frame.
    b.send(&json!({"id": "edge", "type": "echo", "bytes": 1_000_000}));
    let m = b.recv_message(T);
    assert_eq!(m.frames, 1);
}

#[test]
fn cancel_aborts_a_running_request_with_a_cancelled_final_frame() {
    let mut b = chromium();
    b.send(&json!({"id": "slow", "type": "echo", "events": 1000, "interval_ms": 20}));
    // Let it stream a little first.
    let first = b.recv(T);
    assert_eq!(first["id"], "slow");
    assert_eq!(first["event"], "echo");
    let r = b.request(&json!({"id": "c", "type": "cancel", "target": "slow"}));
    assert_eq!(r["result"]["cancelled"], 1, "{r}");
    let started = Instant::now();
    let (events, done) = b.collect("id", &json!("slow"), T);
    assert!(events.len() < 100, "kept streaming after cancel: {} events", events.len());
    assert_error(&done.value, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Nothing more arrives for it, and a second cancel finds nothing.
    let r = b.request(&json!({"id": "c2", "type": "cancel", "target": "slow"}));
    assert_eq!(r["result"]["cancelled"], 0);
    assert_still_serving(&mut b, "after-cancel");
}

#[test]
fn a_reused_running_id_is_refused_without_disturbing_the_first() {
    let mut b = chromium();
    b.send(&json!({"id": 5, "type": "echo", "events": 1, "interval_ms": 200}));
    b.send(&json!({"id": 5, "type": "ping"}));
    let r = b.recv(T);
    assert_error(&r, "invalid_request");
    let (events, done) = b.collect("id", &json!(5), T);
    assert_eq!(events.len(), 1);
    assert_eq!(done.value["ok"], true);
}

#[test]
fn requests_without_a_backend_say_not_available() {
    let mut b = chromium();
    // No model loaded: the inference requests say so.
    let requests = [
        json!({"id": "chat", "type": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        json!({"id": "embed", "type": "embed", "input": "hi"}),
        json!({"id": "complete", "type": "complete", "prompt": "hi"}),
    ];
    for r in requests {
        let reply = b.request(&r);
        assert_error(&reply, "not_available");
    }
}

#[test]
fn closing_stdin_cancels_work_and_exits_within_one_and_a_half_seconds() {
    let mut b = chromium();
    b.send(&json!({"id": "forever", "type": "echo", "events": 1_000_000, "interval_ms": 50}));
    let _ = b.recv(T);
    let closed = Instant::now();
    b.close_stdin();
    let status = b.wait_exit(Duration::from_millis(1500));
    let took = closed.elapsed();
    assert!(status.is_some(), "still running {took:?} after stdin closed");
    assert!(status.unwrap().success());
    let rest = b.drain_until_closed(T);
    let last = rest.last().expect("a final frame for the running request");
    assert_eq!(last["id"], "forever");
    assert_error(last, "cancelled");
}

#[cfg(unix)]
#[test]
fn sigterm_cancels_work_and_exits_promptly() {
    let mut b = chromium();
    b.send(&json!({"id": "forever", "type": "echo", "events": 1_000_000, "interval_ms": 50}));
    let _ = b.recv(T);
    let sent = Instant::now();
    let ok = std::process::Command::new("kill").args(["-TERM", &b.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    let status = b.wait_exit(Duration::from_millis(1500));
    assert!(status.is_some(), "still running {:?} after SIGTERM", sent.elapsed());
    let rest = b.drain_until_closed(T);
    assert_error(rest.last().unwrap(), "cancelled");
}

#[test]
fn the_host_writes_its_log_file_not_to_stdout() {
    // In-process and as a relay to the daemon (the default): with debug
    // logging on and an empty stdin, stdout holds nothing at all.
    for (mode, says) in [("0", "native messaging session started"), ("1", "relaying to the daemon")] {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(host_bin())
            .args(chromium_args("abcdefghijklmnopabcdefghijklmnop"))
            .env("BITNET_HOST_HOME", home.path())
            .env("BITNET_HOST_LOG", "debug")
            .env("BITNET_HOST_DAEMON", mode)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout.is_empty(), "stdout: {:?}", String::from_utf8_lossy(&out.stdout));
        let logs: Vec<_> = std::fs::read_dir(home.path().join("state/logs")).unwrap().flatten().collect();
        let log = logs.iter().find(|e| e.path().is_file()).expect("a log file");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains(says), "{mode}: {text}");
        assert!(!out.stderr.is_empty());
        // An empty stdin never needed the daemon: none was started.
        assert!(!home.path().join("state/daemon/daemon.sock").exists());
    }
}
