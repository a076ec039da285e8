#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! Hardware probe: cold (child process + vendor libraries) and cached
//! report times, in-process and as a whole `bitnet-host hardware --json`.
//!
//! cargo bench -p bitnet-host-tests --bench probe

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bitnet_probe::{ChildCommand, Prober, Source};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (cold_n, warm_n) = if quick { (2, 5) } else { (20, 500) };
    let bin = Path::new(env!("CARGO_BIN_EXE_host-under-test"));
    let home = tempfile::tempdir().unwrap();
    let prober = Prober {
        child: Some(ChildCommand { program: bin.to_path_buf(), args: vec!["probe".into(), "--child".into()] }),
        cache_file: Some(home.path().join("hardware.json")),
        timeout: Duration::from_secs(5),
        host_version: "bench".into(),
    };
    let time = |refresh: bool, n: usize| {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = prober.report(refresh).unwrap();
            v.push(t.elapsed());
            assert_eq!(r.source, if refresh { Source::Probed } else { Source::Cache });
        }
        v
    };
    let cold = time(true, cold_n);
    let warm = time(false, warm_n);
    println!(
        "probe, in-process: cold median {:.1} ms (max {:.1}) over {cold_n}; cached median {:.2} ms (max {:.2}) over {warm_n}",
        ms(median(cold.clone())),
        ms(*cold.iter().max().unwrap()),
        ms(median(warm.clone())),
        ms(*warm.iter().max().unwrap()),
    );
    let cmd = |refresh: bool| {
        let t = Instant::now();
        let mut c = Command::new(bin);
        c.args(["hardware", "--json"]).env("BITNET_HOST_HOME", home.path());
        if refresh {
            c.arg("--refresh");
        }
        assert!(c.output().unwrap().status.success());
        t.elapsed()
    };
    let cold_cmd: Vec<Duration> = (0..cold_n).map(|_| cmd(true)).collect();
    let warm_cmd: Vec<Duration> = (0..cold_n).map(|_| cmd(false)).collect();
    println!(
        "`bitnet-host hardware --json` whole process: cold median {:.1} ms, cached median {:.1} ms",
        ms(median(cold_cmd)),
        ms(median(warm_cmd))
    );
}
