#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The request path's cost, in one run: a fake browser over pipes -> the
//! real host -> the stand-in server, against the same stand-in asked over
//! HTTP directly.
//!
//! - Paced tokens (`[[clock]]`: each token's text is the server's send time
//!   in microseconds): per-token latency from the server's send to the
//!   client's receipt, p50/p99, through the host and direct; the difference
//!   is what the host adds.
//! - Time to first token from the client's send, through the host and direct.
//! - Unpaced: tokens/s the host forwards when the server sends as fast as it
//!   can.
//!
//! cargo bench -p bitnet-host-tests --bench proxy -- --bench   (quick run without --bench)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::host_home;
use bitnet_supervisor::proxy::SseParser;
use serde_json::{json, Value};

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/ternary/fixtures/bitnet-b1.58-i2_s.gguf")
}

/// One streamed chat through the host: (ttft ms, per-token latencies us, tokens).
fn via_host(b: &mut FakeBrowser, id: &str, prompt: &str) -> (f64, Vec<f64>, usize) {
    let sent = Instant::now();
    b.send(&json!({"id": id, "type": "chat", "messages": [{"role": "user", "content": prompt}]}));
    let mut ttft = None;
    let mut lat = Vec::new();
    let mut n = 0;
    loop {
        let m = b.recv(Duration::from_secs(60));
        let at = now_us();
        match m["event"].as_str() {
            Some("delta") => {
                ttft.get_or_insert_with(|| sent.elapsed().as_secs_f64() * 1e3);
                n += 1;
                if let Ok(us) = m["text"].as_str().unwrap().trim().parse::<u128>() {
                    lat.push((at - us) as f64);
                }
            }
            Some(_) => {}
            None => {
                assert_eq!(m["ok"], true, "{m}");
                return (ttft.unwrap_or(0.0), lat, n);
            }
        }
    }
}

/// The same chat straight to the server over HTTP.
async fn direct(c: &reqwest::Client, url: &str, prompt: &str) -> (f64, Vec<f64>, usize) {
    let sent = Instant::now();
    let mut resp = c
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("bench")
        .json(&json!({"messages": [{"role": "user", "content": prompt}], "stream": true}))
        .send()
        .await
        .unwrap();
    let mut p = SseParser::default();
    let (mut ttft, mut lat, mut n) = (None, Vec::new(), 0);
    while let Some(bytes) = resp.chunk().await.unwrap() {
        let at = now_us();
        p.feed(&bytes);
        while let Some(d) = p.pop() {
            if d == "[DONE]" {
                return (ttft.unwrap_or(0.0), lat, n);
            }
            let v: Value = serde_json::from_str(&d).unwrap();
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                ttft.get_or_insert_with(|| sent.elapsed().as_secs_f64() * 1e3);
                n += 1;
                if let Ok(us) = t.trim().parse::<u128>() {
                    lat.push((at - us) as f64);
                }
            }
        }
    }
    (ttft.unwrap_or(0.0), lat, n)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (requests, tokens, flood) = if quick { (3, 20, 2_000) } else { (40, 200, 100_000) };
    let host_bin = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    let standin = Path::new(env!("CARGO_BIN_EXE_standin-server"));

    let (home, report) = host_home(host_bin, standin, &[]);
    let report = report.to_str().unwrap().to_string();
    let mut b = FakeBrowser::spawn_in_home(
        host_bin,
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", &report)],
        home,
    );
    b.send(&json!({"id": "load", "type": "load_model", "model": model()}));
    let (_, r) = b.collect("id", &json!("load"), Duration::from_secs(30));
    assert_eq!(r.value["ok"], true, "{}", r.value);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = std::process::Command::new(standin)
        .args(["--model", "/m.gguf", "--port", &port.to_string(), "--api-key", "bench"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().unwrap();
    rt.block_on(async {
        loop {
            if let Ok(r) = client.get(format!("{url}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let paced = format!("[[clock]] [[tokens {tokens}]] [[slow 2]]");
    let (mut h_ttft, mut h_lat, mut d_ttft, mut d_lat) = (vec![], vec![], vec![], vec![]);
    for i in 0..requests {
        // Alternate so drift on the machine hits both alike.
        let (t, l, n) = via_host(&mut b, &format!("p{i}"), &paced);
        assert_eq!(n, tokens);
        h_ttft.push(t);
        h_lat.extend(l);
        let (t, l, n) = rt.block_on(direct(&client, &url, &paced));
        assert_eq!(n, tokens);
        d_ttft.push(t);
        d_lat.extend(l);
    }
    println!("paced stream: {requests} requests x {tokens} tokens, 2 ms apart");
    println!("{:<36} {:>10} {:>10}", "", "p50", "p99");
    let (hp50, hp99) = (pct(&mut h_lat, 0.5), pct(&mut h_lat, 0.99));
    let (dp50, dp99) = (pct(&mut d_lat, 0.5), pct(&mut d_lat, 0.99));
    println!("{:<36} {:>7.0} us {:>7.0} us", "token latency, direct HTTP", dp50, dp99);
    println!("{:<36} {:>7.0} us {:>7.0} us", "token latency, through the host", hp50, hp99);
    println!("{:<36} {:>+7.0} us {:>+7.0} us", "added by the host", hp50 - dp50, hp99 - dp99);
    let (ht50, ht99, dt50, dt99) =
        (pct(&mut h_ttft, 0.5), pct(&mut h_ttft, 0.99), pct(&mut d_ttft, 0.5), pct(&mut d_ttft, 0.99));
    println!("{:<36} {:>7.2} ms {:>7.2} ms", "time to first token, direct", dt50, dt99);
    println!("{:<36} {:>7.2} ms {:>7.2} ms", "time to first token, through host", ht50, ht99);
    println!("{:<36} {:>+7.2} ms {:>+7.2} ms", "added by the host", ht50 - dt50, ht99 - dt99);

    let unpaced = format!("[[tokens {flood}]]");
    let t = Instant::now();
    let (_, _, n) = via_host(&mut b, "flood", &unpaced);
    let host_tps = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (_, _, n2) = rt.block_on(direct(&client, &url, &unpaced));
    let direct_tps = n2 as f64 / t.elapsed().as_secs_f64();
    println!("unpaced, {flood} tokens: direct {direct_tps:.0} tokens/s, through the host {host_tps:.0} tokens/s");

    let _ = server.kill();
    let _ = server.wait();
}
