//! The host with a model server: `load_model` through the supervisor to a
//! "bundled" build (the stand-in behind a wrapper script installed in the
//! host's binaries dir), `status`, `logs`, `unload_model`, fallback to the
//! built-in engine, no orphans after SIGKILL, and the sweep at start.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::host_home;
use serde_json::{json, Value};

use crate::{host_bin, standin_bin};

const T: Duration = Duration::from_secs(20);

pub fn fixture_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/ternary/fixtures").join(name)
}

pub fn home_with_server(faults: &[&str]) -> (tempfile::TempDir, String) {
    let (home, report) = host_home(host_bin(), standin_bin(), faults);
    (home, report.to_str().unwrap().to_string())
}

pub fn host(faults: &[&str]) -> FakeBrowser {
    host_with_config(faults, "")
}

/// Same, with `config` as the host's config.toml.
pub fn host_with_config(faults: &[&str], config: &str) -> FakeBrowser {
    let (home, report) = home_with_server(faults);
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(home.path().join("config/config.toml"), config).unwrap();
    FakeBrowser::spawn_in_home(
        host_bin(),
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", &report)],
        home,
    )
}

pub fn load(b: &mut FakeBrowser, id: &str, model: &Path) -> (Vec<Value>, Value) {
    b.send(&json!({"id": id, "type": "load_model", "model": model}));
    let (events, reply) = b.collect("id", &json!(id), T);
    (events, reply.value)
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn gone_within(pid: u32, d: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < d {
        if !alive(pid) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn load_model_starts_the_installed_build_and_status_logs_unload_follow_it() {
    let mut b = host(&["slow-load=300"]);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let (events, r) = load(&mut b, "load", &model);
    assert_eq!(r["ok"], true, "{r}");
    let res = &r["result"];
    assert_eq!(res["state"], "ready", "{r}");
    assert_eq!(res["backend"], "bitnet-cpu-linux-x86_64");
    assert_eq!(res["model"]["format"], "i2_s");
    assert_eq!(res["model"]["architecture"], "bitnet-b1.58");
    // Progress arrived as events while it loaded.
    let states: Vec<&str> =
        events.iter().filter(|e| e["event"] == "load").filter_map(|e| e["state"].as_str()).collect();
    assert!(states.contains(&"loading"), "{events:?}");
    let pid = res["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));

    // Loading the same model again reuses the server.
    let (_, again) = load(&mut b, "again", &model);
    assert_eq!(again["result"]["pid"], res["pid"]);

    let st = b.request(&json!({"id": "st", "type": "status"}));
    let server = &st["result"]["server"];
    assert_eq!(server["state"], "ready", "{st}");
    assert_eq!(server["candidate"], "bitnet-cpu-linux-x86_64");
    assert!(server["resources"]["rss_bytes"].as_u64().unwrap() > 1 << 20, "{server}");
    assert_eq!(server["failures"], json!([]));

    let ms = b.request(&json!({"id": "ms", "type": "model_state"}));
    assert_eq!(ms["result"]["ready"], true, "{ms}");

    let logs = b.request(&json!({"id": "lg", "type": "logs", "lines": 500}));
    let lines: Vec<&str> =
        logs["result"]["lines"].as_array().unwrap().iter().filter_map(|l| l["line"].as_str()).collect();
    assert!(lines.iter().any(|l| l.starts_with("starting bitnet-cpu-linux-x86_64")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("llama_model_load: loading tensor")), "{lines:?}");
    let bad = b.request(&json!({"id": "lg2", "type": "logs", "lines": 0}));
    assert_eq!(bad["error"]["code"], "invalid_request");

    let un = b.request(&json!({"id": "un", "type": "unload_model"}));
    assert_eq!(un["result"]["unloaded"], true, "{un}");
    assert!(gone_within(pid, Duration::from_secs(3)).is_some());
    let st = b.request(&json!({"id": "st2", "type": "status"}));
    assert_eq!(st["result"]["server"]["state"], "stopped");

    // With no server, `logs` reads the last one's log file.
    let logs = b.request(&json!({"id": "lg3", "type": "logs", "lines": 5}));
    let lines = logs["result"]["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 5, "{logs}");
    assert!(lines.iter().any(|l| l["line"].as_str().unwrap().starts_with("stopped pid")), "{logs}");

    // The CLI shows the same file.
    let out = Command::new(host_bin()).args(["logs", "-l", "3"]).env("BITNET_HOST_HOME", b.home()).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn models_that_are_not_gguf_or_not_there_are_refused_before_any_server_starts() {
    let mut b = host(&[]);
    let junk = b.home().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0garbage").unwrap();
    let (_, r) = load(&mut b, "j", &junk);
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("not a usable model"), "{r}");
    // A truncated download.
    let good = std::fs::read(fixture_model("bitnet-b1.58-i2_s.gguf")).unwrap();
    let cut = b.home().join("cut.gguf");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let (_, r) = load(&mut b, "c", &cut);
    assert!(r["error"]["message"].as_str().unwrap().contains("truncated"), "{r}");
    let (_, r) = load(&mut b, "n", Path::new("/no/such.gguf"));
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let r = b.request(&json!({"id": "rel", "type": "load_model", "model": "relative.gguf"}));
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    let r = b.request(&json!({"id": "none", "type": "load_model"}));
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(!b.home().join("state/logs/servers/server.log").exists(), "no server was started");
    // A name as `models` lists it loads the file in the models folder; a
    // name leading out of it is no name.
    let dir = b.home().join("data/models/org");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), dir.join("m.gguf")).unwrap();
    let r = b.request(&json!({"id": "../x", "type": "load_model", "model": "../org/m.gguf"}));
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    let (_, r) = load(&mut b, "byname", Path::new("org/m.gguf"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["model"]["path"], json!(dir.join("m.gguf")), "{r}");
}

/// `[server] cache_type_k = "q8_0"` reaches the server: the built-in
/// engine's runner makes a q8_0-key cache (its log says so) and serves;
/// the bundled build (the stand-in) takes the same flags.
#[test]
fn the_configs_kv_cache_types_reach_every_server() {
    for (variant, backend) in [("builtin", "builtin"), ("bitnet-cpu-linux-x86_64", "bitnet-cpu-linux-x86_64")] {
        let config = format!("[server]\nvariant = \"{variant}\"\ncache_type_k = \"q8_0\"\n");
        let mut b = host_with_config(&[], &config);
        let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
        assert_eq!(r["result"]["backend"], backend, "{r}");
        let r = b.request(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "Hi"}],
                                 "max_tokens": 4, "temperature": 0}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["result"]["backend"], backend, "{r}");
        if variant == "builtin" {
            assert_eq!(r["result"]["usage"]["completion_tokens"], 4, "{r}");
            let logs = b.home().join("state/logs/servers");
            let said = std::fs::read_dir(&logs)
                .unwrap()
                .flatten()
                .any(|f| std::fs::read_to_string(f.path()).unwrap_or_default().contains("KV cache q8_0"));
            assert!(said, "no runner log in {} says `KV cache q8_0`", logs.display());
        }
    }
}

#[test]
fn a_build_that_dies_of_sigill_falls_back_to_the_builtin_engine_which_serves() {
    let mut b = host(&["sigill"]);
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["result"]["backend"], "builtin", "{r}");
    let st = b.request(&json!({"id": "st", "type": "status"}));
    let failures = st["result"]["server"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{st}");
    assert_eq!(failures[0]["candidate"], "bitnet-cpu-linux-x86_64");
    assert_eq!(failures[0]["failure"]["kind"], "illegal_instruction");
    // The built-in engine answers through the same request path.
    let r = b.request(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 4, "temperature": 0}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["backend"], "builtin");
    assert_eq!(r["result"]["usage"]["completion_tokens"], 4, "{r}");
    // A prompt longer than the context: that request is refused with the
    // figures, streamed or not; the next one is served.
    let long = "word ".repeat(20_000);
    for stream in [true, false] {
        let r = b.request(&json!({"id": "long", "type": "chat", "messages": [{"role": "user", "content": long}],
                                 "stream": stream}));
        assert_eq!(r["error"]["code"], "invalid_request", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains("exceeds the available context size") && msg.contains("the context"), "{msg}");
    }
    let r = b.request(&json!({"id": "c2", "type": "chat", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 2}));
    assert_eq!(r["ok"], true, "{r}");
    // Parameters of the wrong type or range name the field.
    for (field, bad) in [
        ("max_tokens", json!(-5)),
        ("max_tokens", json!(1e12)),
        ("max_tokens", json!("16")),
        ("temperature", json!(-1)),
        ("top_p", json!(2)),
        ("stop", json!(7)),
        ("stream", json!("yes")),
    ] {
        let mut req = json!({"id": "p", "type": "chat", "messages": [{"role": "user", "content": "Hi"}]});
        req[field] = bad.clone();
        let r = b.request(&req);
        assert_eq!(r["error"]["code"], "invalid_request", "{field}={bad}: {r}");
        assert_eq!(r["error"]["details"]["field"], field, "{r}");
    }
    // The built-in engine has no embeddings: said as such.
    let r = b.request(&json!({"id": "e", "type": "embed", "input": "Hi"}));
    assert_eq!(r["error"]["code"], "not_available", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("does not serve embeddings"), "{r}");
}

#[test]
fn when_every_candidate_fails_the_error_carries_each_attempt_and_the_last_output() {
    // A file that parses as GGUF but is no model the engine can run: the
    // installed build dies of SIGILL, the built-in engine refuses the file.
    let mut b = host(&["sigill"]);
    let vocab_only = b.home().join("vocab-only.gguf");
    std::fs::write(&vocab_only, bitnet_ternary_vocab_only()).unwrap();
    let (_, r) = load(&mut b, "load", &vocab_only);
    assert_eq!(r["error"]["code"], "backend_crashed", "{r}");
    let attempts = r["error"]["details"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.first().unwrap()["failure"]["kind"], "illegal_instruction", "{r}");
    assert_eq!(attempts.last().unwrap()["candidate"], "builtin");
    assert_eq!(attempts.last().unwrap()["failure"]["kind"], "model_load", "not restarted: {r}");
    assert_eq!(attempts.len(), 2, "{r}");
    let tail = r["error"]["details"]["tail"].to_string();
    assert!(tail.contains("error loading model"), "{tail}");
    // The failed model is not left loaded: a chat says what happened at
    // once instead of trying the same failing load again.
    let t = std::time::Instant::now();
    let r = b.request(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "Hi"}]}));
    assert_eq!(r["error"]["code"], "not_available", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("vocab-only.gguf failed") && msg.contains("load_model"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let st = b.request(&json!({"id": "s", "type": "model_state"}));
    assert_eq!(st["result"]["state"], "stopped", "{st}");
    // A good model afterwards clears it.
    let (_, r) = load(&mut b, "load2", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["ok"], true, "{r}");
}

/// A GGUF with an architecture and no tensors.
fn bitnet_ternary_vocab_only() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    v.extend(1u64.to_le_bytes());
    let key = "general.architecture";
    v.extend((key.len() as u64).to_le_bytes());
    v.extend(key.as_bytes());
    v.extend(8u32.to_le_bytes());
    v.extend(6u64.to_le_bytes());
    v.extend(b"bitnet");
    v
}

#[test]
fn the_server_dies_within_two_seconds_of_the_host_being_sigkilled() {
    let mut b = host(&[]);
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    let pid = r["result"]["pid"].as_u64().expect("pid") as u32;
    assert!(alive(pid));
    b.kill();
    let took = gone_within(pid, Duration::from_secs(2));
    assert!(took.is_some(), "server {pid} outlived its host");
}

/// The processes whose process group is `pgid` (Linux /proc).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the ")" ending the command: state, ppid, pgrp.
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// A host with the parent-death signal off (BITNET_PARENT_DEATH=guard)
/// and a loaded server: the host, the server's pid, and its group (the
/// server and one guard).
fn guarded_host_with_a_server() -> (FakeBrowser, u32, Vec<u32>) {
    let (home, report) = home_with_server(&[]);
    let env = [("BITNET_HOST_HARDWARE", report.as_str()), ("BITNET_PARENT_DEATH", "guard")];
    let mut b = FakeBrowser::spawn_in_home(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"), &env, home);
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    let pid = r["result"]["pid"].as_u64().expect("pid") as u32;
    let members = group_members(pid);
    assert_eq!(members.len(), 2, "group {pid}: the server and one guard: {members:?}");
    (b, pid, members)
}

/// What macOS and the BSDs rely on (they have no parent-death signal):
/// with PR_SET_PDEATHSIG off, the pipe guard alone ends the server.
#[test]
fn with_the_parent_death_signal_off_the_pipe_guard_ends_the_server_of_a_sigkilled_host() {
    let (mut b, pid, members) = guarded_host_with_a_server();
    let guard = *members.iter().find(|&&p| p != pid).unwrap();
    // No parent-death signal was asked for: only the guard can end it.
    b.kill();
    let took = gone_within(pid, Duration::from_secs(2));
    assert!(took.is_some(), "server {pid} outlived its host (guard {guard})");
    assert!(gone_within(guard, Duration::from_secs(2)).is_some(), "guard {guard} outlived its server");
}

/// A normal unload ends the guard with its server: none are left behind.
#[test]
fn an_unloaded_servers_guard_goes_with_it() {
    let (mut b, pid, members) = guarded_host_with_a_server();
    let r = b.request(&json!({"id": "u", "type": "unload_model"}));
    assert_eq!(r["ok"], true, "{r}");
    for p in members {
        assert!(gone_within(p, Duration::from_secs(5)).is_some(), "{p} of group {pid} is still there");
    }
}

#[test]
fn servers_left_by_a_dead_host_are_swept_at_start_but_only_when_argv_matches() {
    let (home, report) = home_with_server(&[]);
    // A server whose owner is gone: start it ourselves, record it as owned
    // by a pid that has exited.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut orphan = Reaped(
        Command::new(standin_bin())
            .args(["--model", "/m.gguf", "--port", &port.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut bystander = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let dead_owner = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let run = home.path().join("state/run");
    std::fs::create_dir_all(&run).unwrap();
    let (orphan_pid, bystander_pid) = (orphan.id(), bystander.id());
    let rec = |pid: u32, program: &Path| {
        json!({"pid": pid, "owner_pid": dead_owner, "program": program, "port": port}).to_string()
    };
    std::fs::write(run.join(format!("server-{orphan_pid}.json")), rec(orphan_pid, standin_bin())).unwrap();
    // A record that names the sleep process under another program: not ours.
    std::fs::write(run.join(format!("server-{bystander_pid}.json")), rec(bystander_pid, standin_bin())).unwrap();

    let mut b = FakeBrowser::spawn_in_home(
        host_bin(),
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", &report)],
        home,
    );
    let r = b.request(&json!({"id": "p", "type": "ping"}));
    assert_eq!(r["ok"], true);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = orphan.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "orphan not swept");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    assert!(bystander.try_wait().unwrap().is_none(), "a process whose argv does not match was killed");
    assert_eq!(std::fs::read_dir(b.home().join("state/run")).unwrap().count(), 0);
}

/// A child killed and reaped when the test ends, pass or fail (a stray
/// process would hold the test's output pipes open).
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stream_longer_than_the_keep_alive_is_not_cut_by_the_idle_unload() {
    // keep_alive 1 s; one answer streaming for about 2.4 s and nothing else.
    let mut b = host_with_config(&[], "[server]\nkeep_alive = \"1s\"\n");
    let (_, r) = load(&mut b, "l", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["ok"], true, "{r}");
    b.send(
        &json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 40]] [[slow 60]] go"}]}),
    );
    let (events, fin) = b.collect("id", &json!("c"), T);
    assert_eq!(fin.value["ok"], true, "the idle unload cut a running stream: {:?}", fin.value);
    assert_eq!(events.iter().filter(|e| e["event"] == "delta").count(), 40);
    // Once the answer is done, the keep-alive counts again: unloaded soon after.
    let t = Instant::now();
    loop {
        let st = b.request(&json!({"id": "s", "type": "status"}));
        if st["result"]["server"]["state"] == "stopped" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never unloaded: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
