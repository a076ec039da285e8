//! Helpers around the stand-in server binary: per-candidate wrapper scripts
//! that inject a fault, and supervisor specs with test-sized timings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitnet_supervisor::{Candidate, GpuApi, JobSpec, Launch, Policy, Settings};

/// An executable at `dir/name` that runs the stand-in with `faults` (and an
/// argv log), like a bundled build that fails in one particular way.
/// `standin` is the stand-in's path (`CARGO_BIN_EXE_standin-server`, which
/// Cargo gives test and bench targets only).
pub fn wrapper(standin: &Path, dir: &Path, name: &str, faults: &[&str]) -> PathBuf {
    let path = dir.join(name);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    let fault_args: String = faults.iter().map(|f| format!(" --fault '{f}'")).collect();
    let log = dir.join(format!("{}.argv", name.replace('/', "_")));
    let script = format!(
        "#!/bin/sh\necho \"$$\" >> '{log}'\nexec '{bin}'{fault_args} \"$@\"\n",
        log = log.display(),
        bin = standin.display()
    );
    std::fs::write(&path, script).expect("write wrapper");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    path
}

/// How many times the wrapper at `dir/name` was started.
pub fn launches(dir: &Path, name: &str) -> usize {
    let log = dir.join(format!("{}.argv", name.replace('/', "_")));
    std::fs::read_to_string(log).map(|s| s.lines().count()).unwrap_or(0)
}

pub fn candidate(id: &str, path: PathBuf) -> Candidate {
    Candidate {
        id: id.into(),
        launch: Launch::Bundled { path },
        gpu: GpuApi::None,
        rank: 1,
        gpu_layers: false,
        args: None,
    }
}

/// Timings small enough for tests, large enough for a loaded CI machine.
pub fn fast_policy() -> Policy {
    Policy {
        health_interval: Duration::from_millis(20),
        load_stall: Duration::from_millis(1500),
        load_max: Duration::from_secs(20),
        restart_base: Duration::from_millis(20),
        restart_max: Duration::from_millis(100),
        max_crashes: 3,
        crash_window: Duration::from_secs(60),
        stop_grace: Duration::from_millis(500),
        ring_bytes: 64 << 10,
        port_retries: 3,
    }
}

pub fn spec(dir: &Path, candidates: Vec<Candidate>) -> JobSpec {
    JobSpec {
        model: dir.join("model.gguf"),
        candidates,
        settings: Settings {
            threads: 1,
            ctx_size: 512,
            gpu_layers: 0,
            keep_alive: None,
            parallel: 4,
            max_queue: 16,
            request_timeout: Duration::from_secs(30),
            cache_types: None,
        },
        policy: fast_policy(),
        builtin_exe: None,
        remote_api_key: None,
        log_dir: Some(dir.join("logs")),
        run_dir: Some(dir.join("run")),
    }
}

/// A host home (for `BITNET_HOST_HOME`) with a recorded AVX2 Linux x86_64
/// hardware report ([`record_avx2_report`]), so selection does not depend
/// on the machine. Returns the home and the report's path (for
/// `BITNET_HOST_HARDWARE`).
pub fn recorded_avx2_home(host: &Path) -> (tempfile::TempDir, PathBuf) {
    let home = tempfile::tempdir().expect("temp home");
    let file = record_avx2_report(host, home.path());
    (home, file)
}

/// This machine's report as a Linux x86_64 CPU with AVX2 and FMA but no
/// F16C, written to `home/report.json`. Without F16C the built-in engine
/// would run its scalar kernels: a CPU family the catalog ships no speed
/// figures for, so the CPU candidates keep catalog order (a bundled build
/// first, the engine last) and the tests of supervision and fallback do
/// not move with measured figures (`select` and `calibrate` test those).
pub fn record_avx2_report(host: &Path, home: &Path) -> PathBuf {
    let out = std::process::Command::new(host)
        .args(["hardware", "--json"])
        .env("BITNET_HOST_HOME", home)
        .env_remove("BITNET_HOST_HARDWARE")
        .output()
        .expect("run hardware --json");
    let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hardware JSON");
    report["os"]["family"] = serde_json::json!("linux");
    report["cpu"]["arch"] = serde_json::json!("x86_64");
    report["cpu"]["features"] = serde_json::json!(["sse4.2", "avx", "avx2", "fma"]);
    let file = home.join("report.json");
    std::fs::write(&file, report.to_string()).expect("write report");
    file
}

/// The same home with the stand-in installed as the bitnet.cpp CPU build
/// (failing with `faults`).
pub fn host_home(host: &Path, standin: &Path, faults: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let (home, file) = recorded_avx2_home(host);
    wrapper(standin, &home.path().join("data/binaries"), "cpu/linux/llama-server", faults);
    (home, file)
}
