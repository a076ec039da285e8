#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The daemon's added hop: ping round trip and time to first token through
//! relay + daemon, against the single-process native path, in one run.
//!
//! cargo bench -p bitnet-host-tests --bench daemon -- --bench

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::host_home;
use serde_json::json;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn measure(b: &mut FakeBrowser, pings: usize, chats: usize) -> (Vec<f64>, Vec<f64>) {
    let model: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/ternary/fixtures/bitnet-b1.58-i2_s.gguf");
    let r = b.request(&json!({"id": "load", "type": "load_model", "model": model}));
    assert_eq!(r["ok"], true, "{r}");
    let mut ping = Vec::new();
    for i in 0..pings {
        let t = Instant::now();
        let r = b.request(&json!({"id": i, "type": "ping"}));
        ping.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r["ok"], true);
    }
    let mut ttft = Vec::new();
    for i in 0..chats {
        let id = format!("c{i}");
        let t = Instant::now();
        b.send(&json!({"id": id, "type": "chat", "messages": [{"role": "user", "content": "[[tokens 3]]"}]}));
        let first = b.recv(Duration::from_secs(10));
        ttft.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(first["event"], "delta");
        b.collect("id", &json!(id), Duration::from_secs(10));
    }
    (ping, ttft)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (pings, chats) = if quick { (50, 5) } else { (5000, 200) };
    let host = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    let standin = Path::new(env!("CARGO_BIN_EXE_standin-server"));
    let (home, report) = host_home(host, standin, &[]);
    let report = report.to_str().unwrap().to_string();
    let args = chromium_args("abcdefghijklmnopabcdefghijklmnop");
    let mut direct = FakeBrowser::spawn_shared(host, &args, &[("BITNET_HOST_HARDWARE", &report)], home.path());
    let (mut p1, mut t1) = measure(&mut direct, pings, chats);
    drop(direct);
    let env =
        [("BITNET_HOST_HARDWARE", report.as_str()), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "2000")];
    let mut relayed = FakeBrowser::spawn_shared(host, &args, &env, home.path());
    let (mut p2, mut t2) = measure(&mut relayed, pings, chats);
    println!("{pings} pings, {chats} chats to the stand-in server (3 tokens)");
    println!("{:<40} {:>10} {:>10}", "", "p50", "p99");
    println!("{:<40} {:>7.0} us {:>7.0} us", "ping, single process", pct(&mut p1, 0.5), pct(&mut p1, 0.99));
    println!("{:<40} {:>7.0} us {:>7.0} us", "ping, relay + daemon", pct(&mut p2, 0.5), pct(&mut p2, 0.99));
    println!("{:<40} {:>7.2} ms {:>7.2} ms", "first token, single process", pct(&mut t1, 0.5), pct(&mut t1, 0.99));
    println!("{:<40} {:>7.2} ms {:>7.2} ms", "first token, relay + daemon", pct(&mut t2, 0.5), pct(&mut t2, 0.99));
}
