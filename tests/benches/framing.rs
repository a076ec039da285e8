#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The native-messaging path through the real binary over pipes, in both
//! modes side by side: in-process (BITNET_HOST_DAEMON=0) and relay + daemon
//! (=1). Ping round-trip latency, and host-to-browser streaming throughput.
//! `cat` echoing frames gives the floor of the pipes and the fake browser.
//!
//! cargo bench -p bitnet-host-tests --bench framing -- --bench

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser, Output};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

#[derive(Clone, Copy)]
enum Mode {
    Cat,
    InProcess,
    Relay,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cat => "cat (floor)",
            Mode::InProcess => "in-process",
            Mode::Relay => "relay + daemon",
        }
    }
}

fn spawn(bin: &Path, mode: Mode, home: &Path) -> FakeBrowser {
    match mode {
        Mode::Cat => FakeBrowser::spawn(Path::new("/bin/cat"), &[]),
        Mode::InProcess => {
            FakeBrowser::spawn_shared(bin, &chromium_args("abcdefghijklmnopabcdefghijklmnop"), &[], home)
        }
        Mode::Relay => FakeBrowser::spawn_shared(
            bin,
            &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
            &[("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "2000")],
            home,
        ),
    }
}

/// p50, p99 and mean of `n` ping round trips (after 200 to warm up).
fn ping_latency(b: &mut FakeBrowser, n: usize) -> (f64, f64, f64) {
    let mut lat = Vec::with_capacity(n);
    for i in 0..(n + 200) {
        let start = Instant::now();
        b.send(&json!({"id": i, "type": "ping"}));
        let r = b.recv(T);
        let took = start.elapsed();
        assert_eq!(r["id"], i, "{r}");
        if i >= 200 {
            lat.push(took);
        }
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>().as_secs_f64() * 1e6 / lat.len() as f64;
    (percentile(&lat, 0.5), percentile(&lat, 0.99), mean)
}

/// MB/s and messages/s of one request streaming `events` events.
fn stream_throughput(b: &mut FakeBrowser, id: &str, event_bytes: usize, events: usize) -> (f64, f64) {
    let start = Instant::now();
    b.send(&json!({"id": id, "type": "echo", "events": events, "event_bytes": event_bytes}));
    let mut bytes = 0usize;
    let mut frames = 0usize;
    while frames < events + 1 {
        match b.recv_frame(T) {
            Some(Output::Frame(f)) => {
                bytes += f.len() + 4;
                frames += 1;
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (bytes as f64 / secs / 1e6, frames as f64 / secs)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us with no
    // flag and only wants to know we start.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (pings, small, large) = if quick { (100, 1000, 10) } else { (10_000, 200_000, 1000) };
    let bin = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    let home = tempfile::tempdir().expect("temp home");
    println!("{pings} pings; streams of {small} x 1 KiB and {large} x 512 KiB events");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>14} {:>10} {:>12}",
        "mode", "ping p50", "ping p99", "ping mean", "1 KiB msgs/s", "MB/s", "512 KiB MB/s"
    );
    for mode in [Mode::Cat, Mode::InProcess, Mode::Relay] {
        let mut b = spawn(bin, mode, home.path());
        let (p50, p99, mean) = ping_latency(&mut b, pings);
        let (small_mb, small_msgs, large_mb) = match mode {
            Mode::Cat => (f64::NAN, f64::NAN, f64::NAN),
            _ => {
                let (mb, msgs) = stream_throughput(&mut b, "s", 1024, small);
                let (large_mb, _) = stream_throughput(&mut b, "l", 512 * 1024, large);
                (mb, msgs, large_mb)
            }
        };
        println!(
            "{:<16} {:>7.1} us {:>7.1} us {:>7.1} us {:>14.0} {:>10.0} {:>12.0}",
            mode.name(),
            p50,
            p99,
            mean,
            small_msgs,
            small_mb,
            large_mb
        );
    }
}
