#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! A real bitnet.cpp `llama-server` build (`BITNET_REAL_SERVER`, made by
//! scripts/build-bitnet-server.sh) against the host's own engine
//! (`bitnet-host runner`), each as a server on 127.0.0.1 answering the same
//! `/completion`: prompt processing and decode tokens/s from each server's
//! own `timings`, rounds alternating between the two, medians printed.
//!
//! The model is the original BitNet graph (`bitnet`, which every bitnet.cpp
//! build loads) with BitNet b1.58 2B4T's sizes, I2_S, random weights,
//! generated once under target/bench-models/.
//!
//! BITNET_REAL_SERVER=... cargo bench -p bitnet-host-tests --bench servers -- --bench
//! (without --bench: a small model and one round, to see that it runs).
//! BITNET_BENCH_FORMATS=i2_s,tq2_0,tq1_0 picks the weight formats (default
//! i2_s); the runner inherits BITNET_KERNEL, so `BITNET_KERNEL=avx2` measures
//! the engine as it runs on a CPU without AVX-512. These are the figures the
//! catalog ships per CPU family (`[[measured]]` in binaries/variants.toml).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitnet_host_tests::bench::median;
use bitnet_ternary::writer::Shape;
use serde_json::{json, Value};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `argv` and waits until its /health answers 200.
fn start(argv: &[String], port: u16, rt: &tokio::runtime::Runtime, http: &reqwest::Client) -> Server {
    let child = Command::new(&argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let server = Server(child);
    let t = Instant::now();
    loop {
        let ok = rt.block_on(async {
            http.get(format!("http://127.0.0.1:{port}/health")).send().await.is_ok_and(|r| r.status() == 200)
        });
        if ok {
            return server;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "{argv:?} never became healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let Some(real) = std::env::var_os("BITNET_REAL_SERVER").map(PathBuf::from) else {
        println!("skipped: BITNET_REAL_SERVER is not set (a llama-server from scripts/build-bitnet-server.sh)");
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, stem, prompt_n, rounds) = if full {
        (Shape::b158_2b4t(), "bitnet-2b4t-shape", 512, 5)
    } else {
        (Shape::default_model(), "bitnet-small", 64, 1)
    };
    let shape = Shape { arch: "bitnet".into(), ..sizes.clone() };
    for (format, tf) in bitnet_host_tests::bench::formats(&["i2_s"]) {
        let model = bitnet_host_tests::bench::model(stem, &shape, tf);
        compare(&real, &model, format, &sizes, prompt_n, rounds);
    }
}

/// Rounds alternating between the two servers on `model`; medians printed.
fn compare(real: &Path, model: &Path, format: &str, sizes: &Shape, prompt_n: usize, rounds: usize) {
    let host = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(2).to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let vocab = 256u32; // the byte tokens every generated vocabulary has
    let prompt: Vec<u32> = (0..prompt_n as u32).map(|i| (i * 7919 + 11) % vocab).collect();
    let body = json!({"prompt": prompt, "n_predict": 64, "temperature": 0, "ignore_eos": true, "cache_prompt": false});
    let m = model.to_str().unwrap().to_string();

    println!(
        "model: {} layers x {} hidden, `bitnet` graph, {format} ({} MB); {prompt_n}-token prompt, 64 tokens decoded, {threads} threads, runner kernels {}",
        sizes.n_layer,
        sizes.n_embd,
        std::fs::metadata(model).unwrap().len() >> 20,
        std::env::var("BITNET_KERNEL").unwrap_or_else(|_| "auto".into())
    );
    println!("round  server                       prompt tok/s  decode tok/s");
    let names = ["bitnet.cpp llama-server", "bitnet-host runner"];
    let mut prompt_speed = [Vec::new(), Vec::new()];
    let mut decode_speed = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for (i, name) in names.iter().enumerate() {
            let port = free_port();
            let p = port.to_string();
            let argv: Vec<String> = if i == 0 {
                let r = real.to_str().unwrap().to_string();
                [r.as_str(), "-m", &m, "--host", "127.0.0.1", "--port", &p, "-c", "1024", "-t", &threads]
                    .map(String::from)
                    .to_vec()
            } else {
                let h = host.to_str().unwrap();
                [h, "runner", "--model", &m, "--port", &p, "--ctx-size", "1024", "--threads", &threads]
                    .map(String::from)
                    .to_vec()
            };
            let _server = start(&argv, port, &rt, &http);
            let v: Value = rt.block_on(async {
                let r = http.post(format!("http://127.0.0.1:{port}/completion")).json(&body).send().await.unwrap();
                r.json().await.unwrap()
            });
            let t = &v["timings"];
            let (pp, tg) = (t["prompt_per_second"].as_f64().unwrap(), t["predicted_per_second"].as_f64().unwrap());
            assert_eq!(t["predicted_n"], 64, "{name}: {v}");
            println!("{round:>5}  {name:<27} {pp:>13.1} {tg:>13.2}");
            prompt_speed[i].push(pp);
            decode_speed[i].push(tg);
        }
    }
    for (i, name) in names.iter().enumerate() {
        println!(
            "median {name:<27} {:>13.1} {:>13.2}",
            median(prompt_speed[i].clone()),
            median(decode_speed[i].clone())
        );
    }
}
