#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! Supervisor timings with the stand-in server and the default policy:
//! - spawn to ready through the supervisor, against the same process started
//!   by hand and polled every millisecond (the difference is the
//!   supervisor's own overhead);
//! - a crash while serving to the next healthy server (restart backoff
//!   included: 50-100% of 250 ms by default);
//! - SIGILL in the first candidate to the second one healthy.
//!
//! cargo bench -p bitnet-host-tests --bench supervisor   (quick run without --bench)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bitnet_host_tests::standin::{candidate, spec, wrapper};
use bitnet_supervisor::{Job, JobState, Policy};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn row(name: &str, v: &mut [Duration]) {
    println!(
        "{name:<44} p50 {:>7.2} ms   p90 {:>7.2} ms   max {:>7.2} ms   (n={})",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 1.0),
        v.len()
    );
}

fn standin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_standin-server"))
}

/// The stand-in started by hand, /health polled every millisecond.
fn raw_start(port: u16) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(standin())
        .args(["--model", "/m.gguf", "--port", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let d = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    d
}

fn job_spec(dir: &Path, cands: Vec<bitnet_supervisor::Candidate>) -> bitnet_supervisor::JobSpec {
    let mut s = spec(dir, cands);
    s.policy = Policy::default();
    s
}

async fn wait_state(job: &Job, want: &str) -> Instant {
    let mut rx = job.subscribe();
    loop {
        if rx.borrow_and_update().name() == want {
            return Instant::now();
        }
        rx.changed().await.unwrap();
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 3 } else { 30 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut raw: Vec<Duration> = (0..n).map(|i| raw_start(31000 + i as u16)).collect();
    row("stand-in by hand, spawn -> /health 200", &mut raw);

    let mut sup = Vec::new();
    rt.block_on(async {
        for _ in 0..n {
            let t = Instant::now();
            let job = Job::start(job_spec(dir.path(), vec![candidate("cpu", standin())]));
            job.ready().await.unwrap();
            sup.push(t.elapsed());
            job.stop().await;
        }
    });
    row("supervisor, Job::start -> ready", &mut sup);
    println!("{:<44} {:>+7.2} ms at p50", "supervisor overhead", pct(&mut sup, 0.5) - pct(&mut raw, 0.5));

    let mut crash = Vec::new();
    rt.block_on(async {
        for i in 0..n {
            let state = dir.path().join(format!("crash-{i}"));
            let bin = wrapper(&standin(), dir.path(), &format!("crash{i}"), &["crash-after=100"]);
            let script = std::fs::read_to_string(&bin)
                .unwrap()
                .replace("exec ", &format!("STANDIN_FAULT_TIMES=1 STANDIN_FAULT_STATE='{}' exec ", state.display()));
            std::fs::write(&bin, script).unwrap();
            let job = Job::start(job_spec(dir.path(), vec![candidate("cpu", bin)]));
            job.ready().await.unwrap();
            let failed = wait_state(&job, "failed").await;
            let ready = wait_state(&job, "ready").await;
            crash.push(ready - failed);
            assert!(matches!(job.state(), JobState::Ready { .. }));
            job.stop().await;
        }
    });
    row("crash while serving -> restarted and healthy", &mut crash);

    let mut fallback = Vec::new();
    rt.block_on(async {
        let bad = wrapper(&standin(), dir.path(), "sigill", &["sigill"]);
        for _ in 0..n {
            let t = Instant::now();
            let job =
                Job::start(job_spec(dir.path(), vec![candidate("bad", bad.clone()), candidate("good", standin())]));
            let ep = job.ready().await.unwrap();
            assert_eq!(ep.candidate, "good");
            fallback.push(t.elapsed());
            job.stop().await;
        }
    });
    row("SIGILL build -> next candidate healthy", &mut fallback);
}
