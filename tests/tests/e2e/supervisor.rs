//! The supervisor job against real processes: the stand-in server with
//! injected faults, started through wrapper scripts that stand for bundled
//! builds.

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::standin::{candidate, launches, spec, wrapper};
use bitnet_supervisor::{Failure, Job, JobError, JobState};

use crate::standin_bin;

fn wrap(dir: &Path, name: &str, faults: &[&str]) -> std::path::PathBuf {
    wrapper(standin_bin(), dir, name, faults)
}

/// Collect every state the job publishes (a watch channel can skip states
/// that are replaced before the collector runs; tests only assert on states
/// that last).
fn record(job: &Job) -> std::sync::Arc<std::sync::Mutex<Vec<JobState>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![job.state()]));
    let mut rx = job.subscribe();
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            out.lock().unwrap().push(s);
        }
    });
    seen
}

fn alive(pid: u32) -> bool {
    // Zombies count as gone: /proc/<pid>/stat state Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn get(url: &str, key: Option<&str>) -> reqwest::StatusCode {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut r = c.get(url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loading_server_goes_loading_then_ready_and_answers_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let bin = wrap(dir.path(), "cpu/linux/llama-server", &["slow-load=400"]);
    let job = Job::start(spec(dir.path(), vec![candidate("cpu", bin)]));
    let seen = record(&job);
    let ep = job.ready().await.expect("ready");
    assert_eq!(ep.candidate, "cpu");
    let pid = ep.pid.unwrap();
    assert!(ep.url.starts_with("http://127.0.0.1:"), "{}", ep.url);
    let port: u16 = ep.url.rsplit(':').next().unwrap().parse().unwrap();
    assert!((20000..49152).contains(&port));

    // The recorder task may still be catching up with the last change.
    let t = Instant::now();
    while seen.lock().unwrap().last().map(JobState::name) != Some("ready") && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let states = seen.lock().unwrap().clone();
    let names: Vec<&str> = states.iter().map(JobState::name).collect();
    // (starting lasts microseconds and may be replaced before the recorder
    // sees it; loading lasts 400 ms.)
    assert!(names.contains(&"loading"), "{names:?}");
    assert_eq!(names.last(), Some(&"ready"));
    let loading = states.iter().rev().find_map(|s| match s {
        JobState::Loading { log_lines, elapsed_ms, .. } => Some((*log_lines, *elapsed_ms)),
        _ => None,
    });
    let (lines, _) = loading.unwrap();
    assert!(lines >= 3, "load progress reports log lines: {lines}");
    if let JobState::Ready { load_ms, .. } = job.state() {
        assert!(load_ms >= 400, "{load_ms}");
    }

    // The per-launch key is required by the server and known to the job.
    let key = ep.api_key.clone().unwrap();
    assert_eq!(key.len(), 64);
    assert_eq!(get(&format!("{}/v1/models", ep.url), Some(&key)).await, 200);
    assert_eq!(get(&format!("{}/v1/models", ep.url), None).await, 401);
    // ...and never appears in the log, nor on the server's command line
    // (which every local user can read): it went in a file only we can
    // read, gone once the server has read it.
    assert!(job.logs(1000).iter().all(|l| !l.contains(&key)));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(!args.iter().any(|a| a.contains(&key)), "{args:?}");
    let key_file =
        args.iter().position(|a| a == "--api-key-file").map(|i| args[i + 1].clone()).expect("--api-key-file");
    assert!(key_file.starts_with(&dir.path().join("run").to_string_lossy().into_owned()), "{key_file}");
    assert!(!Path::new(&key_file).exists(), "the key file outlived the start");

    let stats = job.stats().expect("stats of a running server");
    assert_eq!(stats.pid, pid);
    assert!(stats.rss_bytes > 1 << 20, "{stats:?}");

    // A pid file exists while it runs, and goes with it.
    let pid_file = dir.path().join(format!("run/server-{pid}.json"));
    assert!(pid_file.exists());
    job.stop().await;
    assert!(matches!(job.state(), JobState::Stopped { .. }), "{:?}", job.state());
    assert!(wait_gone(pid, Duration::from_secs(2)).await);
    assert!(!pid_file.exists());
    // The log file got the server's output.
    let log = std::fs::read_to_string(dir.path().join("logs/server.log")).unwrap();
    assert!(log.contains("err llama_model_load: loading tensor 0"), "{log:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_serving_is_restarted_on_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fault-count");
    let bin = wrap(dir.path(), "srv", &["crash-after=150"]);
    // Only the first start crashes.
    let script = std::fs::read_to_string(&bin)
        .unwrap()
        .replace("exec ", &format!("STANDIN_FAULT_TIMES=1 STANDIN_FAULT_STATE='{}' exec ", state.display()));
    std::fs::write(&bin, script).unwrap();
    let job = Job::start(spec(dir.path(), vec![candidate("cpu", bin)]));
    let first = job.ready().await.unwrap();
    assert!(wait_gone(first.pid.unwrap(), Duration::from_secs(5)).await);
    let t = Instant::now();
    let second = loop {
        let ep = job.ready().await.unwrap();
        if ep.pid != first.pid {
            break ep;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.candidate, "cpu");
    assert_ne!(second.url, "");
    assert_eq!(launches(dir.path(), "srv"), 2);
    let failures = job.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(matches!(failures[0].failure, Failure::Crashed { .. }));
    let logs = job.logs(200).join("\n");
    assert!(logs.contains("simulated crash while serving"), "{logs}");
    assert!(logs.contains("ended: crashed (exit code 1)"), "{logs}");
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_instruction_skips_to_the_next_variant_without_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let avx512 = wrap(dir.path(), "avx512", &["sigill"]);
    let plain = wrap(dir.path(), "plain", &[]);
    let job = Job::start(spec(dir.path(), vec![candidate("avx512", avx512), candidate("plain", plain)]));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "plain");
    assert_eq!(launches(dir.path(), "avx512"), 1, "SIGILL is never retried");
    let failures = job.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].candidate, "avx512");
    assert!(matches!(failures[0].failure, Failure::IllegalInstruction { .. }), "{failures:?}");
    assert!(job.logs(100).join("\n").contains("giving up on avx512: illegal instruction"));
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_gives_up_after_k_crashes_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let bad = wrap(dir.path(), "bad", &["crash-at-start"]);
    let good = wrap(dir.path(), "good", &[]);
    let job = Job::start(spec(dir.path(), vec![candidate("bad", bad), candidate("good", good)]));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "good");
    assert_eq!(launches(dir.path(), "bad"), 3, "max_crashes launches, then the next candidate");
    // Two restarts, then the third crash gives the candidate up.
    let kinds: Vec<_> = job.failures().iter().map(|a| (a.candidate.clone(), a.failure.clone())).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds.iter().all(|(c, f)| c == "bad" && matches!(f, Failure::Crashed { .. })));
    let logs = job.logs(500).join("\n");
    assert!(logs.contains("giving up on bad: crashed (exit code 1); trying good"), "{logs}");
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_hits_the_load_deadline_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let hang = wrap(dir.path(), "hang", &["hang", "ignore-sigterm"]);
    let good = wrap(dir.path(), "good", &[]);
    let job = Job::start(spec(dir.path(), vec![candidate("hang", hang), candidate("good", good)]));
    let t = Instant::now();
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "good");
    // load_stall is 1.5 s in the test policy; the hung server logged a few
    // lines at start, then nothing.
    assert!(t.elapsed() >= Duration::from_millis(1500), "{:?}", t.elapsed());
    let waited = job.failures().iter().find_map(|a| match a.failure {
        Failure::LoadTimeout { waited_ms } => Some(waited_ms),
        _ => None,
    });
    assert!(waited.is_some_and(|w| w >= 1500), "{waited:?}");
    // It ignored SIGTERM, so it was SIGKILLed after the grace period.
    let logs = job.logs(200).join("\n");
    assert!(logs.contains("(killed by signal 9 (SIGKILL))"), "{logs}");
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_flood_is_drained_so_the_server_still_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let flood = wrap(dir.path(), "flood", &["flood-stderr=4194304"]);
    let job = Job::start(spec(dir.path(), vec![candidate("flood", flood)]));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "flood");
    // The ring stayed within its budget (64 KiB in the test policy).
    let kept: usize = job.logs(usize::MAX).iter().map(String::len).sum();
    assert!(kept <= 64 << 10, "{kept}");
    // The file has all of it.
    let log_len = std::fs::metadata(dir.path().join("logs/server.log")).unwrap().len();
    assert!(log_len >= 4 << 20, "{log_len}");
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_gpu_failures_move_on_and_everything_failing_gives_up_with_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = wrap(dir.path(), "gpu", &["gpu-error"]);
    let oom = wrap(dir.path(), "oom", &["oom"]);
    let crash = wrap(dir.path(), "crash", &["crash-at-start"]);
    let job =
        Job::start(spec(dir.path(), vec![candidate("gpu", gpu), candidate("oom", oom), candidate("crash", crash)]));
    let err = job.ready().await.unwrap_err();
    let JobError::GaveUp { error, attempts, tail } = err else { panic!("{err:?}") };
    assert_eq!(attempts.len(), 3);
    assert!(matches!(&attempts[0].failure, Failure::GpuError { line } if line.contains("no CUDA-capable device")));
    assert!(matches!(&attempts[1].failure, Failure::OutOfMemory { .. }), "{:?}", attempts[1]);
    assert!(matches!(&attempts[2].failure, Failure::Crashed { .. }));
    assert_eq!(launches(dir.path(), "gpu"), 1);
    assert_eq!(launches(dir.path(), "oom"), 1);
    assert!(error.contains("3 candidates failed"), "{error}");
    assert!(tail.iter().any(|l| l.contains("simulated crash at start")), "{tail:?}");
    assert!(matches!(job.state(), JobState::GaveUp { .. }));
    // A later request tries again from the top.
    assert!(job.ready().await.is_err());
    assert_eq!(launches(dir.path(), "gpu"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_is_unloaded_after_keep_alive_and_reloaded_on_next_use() {
    let dir = tempfile::tempdir().unwrap();
    let bin = wrap(dir.path(), "srv", &[]);
    let mut s = spec(dir.path(), vec![candidate("cpu", bin)]);
    s.settings.keep_alive = Some(Duration::from_millis(300));
    let job = Job::start(s);
    let first = job.ready().await.unwrap();
    // Use keeps it loaded.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        job.touch();
    }
    assert_eq!(job.state().name(), "ready");
    assert!(wait_gone(first.pid.unwrap(), Duration::from_secs(3)).await);
    // The process goes first; the state follows once the job has reaped it.
    let mut rx = job.subscribe();
    // (The guard wait_for returns holds the channel's lock: drop it at once.)
    let stopped =
        tokio::time::timeout(Duration::from_secs(3), async { rx.wait_for(|s| s.name() == "stopped").await.is_ok() })
            .await;
    assert_eq!(stopped, Ok(true), "{:?}", job.state());
    assert!(matches!(job.state(), JobState::Stopped { reason } if reason.contains("keep-alive")));
    let second = job.ready().await.unwrap();
    assert_ne!(second.pid, first.pid);
    assert_eq!(launches(dir.path(), "srv"), 2);
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_a_spawn_failure_not_a_restart_loop() {
    let dir = tempfile::tempdir().unwrap();
    let good = wrap(dir.path(), "good", &[]);
    let job = Job::start(spec(
        dir.path(),
        vec![candidate("missing", dir.path().join("no-such-server")), candidate("good", good)],
    ));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "good");
    let logs = job.logs(100).join("\n");
    assert!(logs.contains("giving up on missing: could not be started"), "{logs}");
    job.stop().await;
}

/// A real program linked against a shared library that is not there (as a
/// CUDA build is on a machine without the CUDA runtime): the dynamic loader
/// refuses it, and the supervisor moves on at once instead of restarting it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_missing_a_shared_library_moves_on_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("gone.c"), "int gone(void) { return 0; }\n").unwrap();
    std::fs::write(d.join("main.c"), "int gone(void);\nint main(void) { return gone(); }\n").unwrap();
    let cc = |args: &[&str]| {
        let out = std::process::Command::new("cc").args(args).current_dir(d).output().expect("cc (gcc) is installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    cc(&["-shared", "-fPIC", "-o", "libgone.so", "gone.c"]);
    cc(&["-o", "needs-gone", "main.c", "-L.", "-lgone"]);
    std::fs::remove_file(d.join("libgone.so")).unwrap();
    let good = wrap(d, "good", &[]);
    let job = Job::start(spec(d, vec![candidate("needs-gone", d.join("needs-gone")), candidate("good", good)]));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "good");
    let failures = job.failures();
    let mine: Vec<_> = failures.iter().filter(|a| a.candidate == "needs-gone").collect();
    assert_eq!(mine.len(), 1, "started once, not restarted: {failures:?}");
    assert!(matches!(&mine[0].failure, Failure::SpawnFailed { error } if error.contains("libgone.so")), "{failures:?}");
    job.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_job_kills_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let bin = wrap(dir.path(), "srv", &[]);
    let job = Job::start(spec(dir.path(), vec![candidate("cpu", bin)]));
    let pid = job.ready().await.unwrap().pid.unwrap();
    drop(job);
    assert!(wait_gone(pid, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_retried_without_counting_as_a_crash_until_the_retries_run_out() {
    let dir = tempfile::tempdir().unwrap();
    // A build whose template pins a port someone else holds: every bind fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let bin = wrap(dir.path(), "pinned", &[]);
    let mut c = candidate("pinned", bin);
    c.args = Some(vec!["--model".into(), "{model}".into(), "--port".into(), port]);
    let good = wrap(dir.path(), "good", &[]);
    let job = Job::start(spec(dir.path(), vec![c, candidate("good", good)]));
    let ep = job.ready().await.unwrap();
    assert_eq!(ep.candidate, "good");
    let kinds: Vec<_> = job.failures().into_iter().filter(|a| a.candidate == "pinned").map(|a| a.failure).collect();
    assert!(kinds.iter().all(|f| *f == Failure::PortInUse), "{kinds:?}");
    // port_retries (3) free retries, then max_crashes (3) counted ones.
    assert_eq!(launches(dir.path(), "pinned"), 3 + 3);
    job.stop().await;
}
