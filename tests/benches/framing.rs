#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! Framing path through the real binary over pipes: ping round-trip latency
//! and host-to-browser streaming throughput.
//!
//! cargo bench -p bitnet-host-tests --bench framing

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser, Output};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Round trips of `n` pings. With `cat` as the "host" this measures the
/// pipes and the fake browser alone: the floor under the host's figure.
fn ping_latency(bin: &Path, n: usize) {
    let cat = bin.ends_with("cat");
    let label = if cat { "baseline (cat echoing frames)" } else { "ping round trip" };
    let args = if cat { vec![] } else { chromium_args("abcdefghijklmnopabcdefghijklmnop") };
    let mut b = FakeBrowser::spawn(bin, &args);
    let mut lat = Vec::with_capacity(n);
    for i in 0..(n + 200) {
        let start = Instant::now();
        b.send(&json!({"id": i, "type": "ping"}));
        let r = b.recv(T);
        let took = start.elapsed();
        assert_eq!(r["id"], i, "{r}");
        if i >= 200 {
            lat.push(took); // the first 200 warm up
        }
    }
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    println!(
        "{label} over {n} messages: p50 {:.1} us, p99 {:.1} us, mean {:.1} us, max {:.1} us",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        lat.last().unwrap().as_secs_f64() * 1e6,
    );
}

fn stream_throughput(bin: &Path, event_bytes: usize, events: usize) {
    let mut b = FakeBrowser::spawn(bin, &chromium_args("abcdefghijklmnopabcdefghijklmnop"));
    // Warm the process up.
    b.request(&json!({"id": "w", "type": "ping"}));
    let start = Instant::now();
    b.send(&json!({"id": "s", "type": "echo", "events": events, "event_bytes": event_bytes}));
    let mut bytes = 0usize;
    let mut frames = 0usize;
    loop {
        match b.recv_frame(T) {
            Some(Output::Frame(f)) => {
                bytes += f.len() + 4;
                frames += 1;
                if frames == events + 1 {
                    break;
                }
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "stream of {events} x {} KiB events: {:.0} MB/s, {:.0} messages/s ({} MB in {:.2} s)",
        event_bytes / 1024,
        bytes as f64 / secs / 1e6,
        frames as f64 / secs,
        bytes / 1_000_000,
        secs
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us with no
    // flag and only wants to know we start.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bin = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    if quick {
        ping_latency(bin, 100);
        stream_throughput(bin, 1024, 1000);
        return;
    }
    ping_latency(Path::new("/bin/cat"), 10_000);
    ping_latency(bin, 10_000);
    stream_throughput(bin, 1024, 200_000);
    stream_throughput(bin, 512 * 1024, 1000);
}
