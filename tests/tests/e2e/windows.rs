//! The Windows build of the host, run under Wine: `scripts/cross-test`
//! sets BITNET_WINDOWS_HOST to the Wine loader and `bitnet-host.exe` (and
//! WINEPREFIX to its prefix). In-process: a ping, a streamed chat from the
//! built-in engine (`bitnet-host.exe runner`, a Windows child of the host),
//! and the kill-on-close Job Object ending that runner when the host is
//! terminated. Through the daemon over its named pipe: relays racing to
//! start it end up with one, which serves them all one model. The logon
//! task registered and removed with schtasks.

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use serde_json::{json, Value};

use crate::server::fixture_model;

fn windows_host() -> Option<Vec<String>> {
    match std::env::var("BITNET_WINDOWS_HOST") {
        Ok(v) => Some(v.split_whitespace().map(String::from).collect()),
        Err(_) => {
            eprintln!("skipped: BITNET_WINDOWS_HOST is not set (scripts/cross-test sets it)");
            None
        }
    }
}

/// A Linux path as the Windows host names it: Wine's drive Z: is `/`.
fn wine_path(p: &Path) -> String {
    format!("Z:{}", p.to_str().unwrap().replace('/', "\\"))
}

/// Linux pids of this test's Wine processes (their environment names
/// `home` as BITNET_HOST_HOME: other runs on the machine do not count)
/// whose command line has every one of `words`.
fn processes_with(home: &Path, words: &[&str]) -> Vec<u32> {
    let ours = format!("BITNET_HOST_HOME={}\0", home.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !String::from_utf8_lossy(&env).contains(&ours) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
        if !zombie && words.iter().all(|w| cmd.contains(w)) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn the_windows_host_answers_a_ping_and_streams_a_chat_and_its_job_object_ends_the_runner() {
    let Some(argv) = windows_host() else { return };
    let home = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = argv[1..].to_vec();
    args.extend(chromium_args("abcdefghijklmnopabcdefghijklmnop"));
    let home_arg = wine_path(home.path());
    let mut b = FakeBrowser::spawn_shared(Path::new(&argv[0]), &args, &[("WINEDEBUG", "-all")], home.path());
    // The folders the Windows host uses are under this home, by its own name.
    let r = b.request(&json!({"id": "p", "type": "ping"}));
    assert_eq!(r["ok"], true, "{r}");

    // A copy of the fixture under the home, so its path is unique to this
    // test: the runner is found by it below.
    let model = home.path().join("wine-fixture.gguf");
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), &model).unwrap();
    b.send(&json!({"id": "l", "type": "load_model", "model": wine_path(&model)}));
    let (_, loaded) = b.collect("id", &json!("l"), Duration::from_secs(180));
    assert_eq!(loaded.value["ok"], true, "{}", loaded.value);
    assert_eq!(loaded.value["result"]["backend"], "builtin", "{}", loaded.value);

    b.send(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6, "temperature": 0}));
    let (events, done) = b.collect("id", &json!("c"), Duration::from_secs(120));
    assert_eq!(done.value["ok"], true, "{}", done.value);
    let deltas: Vec<&Value> = events.iter().filter(|e| e["event"] == "delta").collect();
    assert!(!deltas.is_empty(), "no streamed tokens: {events:?}");
    let streamed: String = deltas.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(Some(streamed.as_str()), done.value["result"]["text"].as_str(), "{events:?} {}", done.value);

    let runners = processes_with(home.path(), &["runner", "wine-fixture.gguf"]);
    assert!(!runners.is_empty(), "no runner process found");
    // Terminated, as Chrome ends a host: nothing of it may run on.
    b.kill();
    let t = Instant::now();
    while !processes_with(home.path(), &["runner", "wine-fixture.gguf"]).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the runner outlived its host (home {home_arg})");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("runner {runners:?} ended {:?} after its host", t.elapsed());
}

/// The Windows pid of the process answering `b` (the daemon, for a relay).
fn answering_pid(b: &mut FakeBrowser, id: &str) -> u64 {
    let r = b.request(&json!({"id": id, "type": "hello"}));
    r["result"]["host"]["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {r}"))
}

#[test]
fn windows_relays_racing_to_start_the_daemon_share_one_over_its_named_pipe() {
    let Some(argv) = windows_host() else { return };
    let home = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = argv[1..].to_vec();
    args.extend(chromium_args("abcdefghijklmnopabcdefghijklmnop"));
    let env = [("WINEDEBUG", "-all"), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "2000")];
    // Three browsers' relays at once: each asks first, so each may start a daemon.
    let mut relays: Vec<FakeBrowser> =
        (0..3).map(|_| FakeBrowser::spawn_shared(Path::new(&argv[0]), &args, &env, home.path())).collect();
    for (i, r) in relays.iter_mut().enumerate() {
        r.send(&json!({"id": format!("h{i}"), "type": "hello"}));
    }
    let pids: Vec<u64> = relays
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let (_, m) = r.collect("id", &json!(format!("h{i}")), Duration::from_secs(120));
            m.value["result"]["host"]["pid"].as_u64().unwrap_or_else(|| panic!("{}", m.value))
        })
        .collect();
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "one daemon answers all: {pids:?}");
    let t = Instant::now();
    while processes_with(home.path(), &["bitnet-host.exe", "daemon"]).len() != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "daemons: {:?}",
            processes_with(home.path(), &["bitnet-host.exe", "daemon"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // One model for all: loaded through one relay, used through another.
    let model = home.path().join("wine-shared-fixture.gguf");
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), &model).unwrap();
    relays[0].send(&json!({"id": "l", "type": "load_model", "model": wine_path(&model)}));
    let (_, loaded) = relays[0].collect("id", &json!("l"), Duration::from_secs(180));
    assert_eq!(loaded.value["ok"], true, "{}", loaded.value);
    let status = relays[1].request(&json!({"id": "s", "type": "status"}));
    assert_eq!(status["result"]["server"]["pid"], loaded.value["result"]["pid"], "{status}");
    relays[1].send(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4, "temperature": 0}));
    let (events, done) = relays[1].collect("id", &json!("c"), Duration::from_secs(120));
    assert_eq!(done.value["ok"], true, "{}", done.value);
    assert!(events.iter().any(|e| e["event"] == "delta"), "{events:?}");
    assert_eq!(answering_pid(&mut relays[2], "h"), pids[0]);

    // The browsers go; the daemon (and its runner) leave after the idle period.
    for mut r in relays {
        r.close_stdin();
        r.kill();
    }
    let t = Instant::now();
    while !processes_with(home.path(), &["bitnet-host.exe", "daemon"]).is_empty()
        || !processes_with(home.path(), &["runner", "wine-shared-fixture.gguf"]).is_empty()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "the daemon or its runner stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `service install` registers the daemon's logon task with schtasks (Wine
/// keeps it in the prefix's system32\tasks), and `service uninstall`
/// removes it and the task file.
#[test]
fn windows_service_install_registers_the_logon_task_and_uninstall_removes_it() {
    let Some(argv) = windows_host() else { return };
    let prefix = std::path::PathBuf::from(std::env::var("WINEPREFIX").expect("cross-test sets WINEPREFIX"));
    let registered = prefix.join("drive_c/windows/system32/tasks/bitnet-host daemon");
    let home = tempfile::tempdir().unwrap();
    let run = |action: &str| {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .args(["service", action])
            // A Windows path: the service's binary is placed under it, and
            // a task needs an absolute Windows path.
            .env("BITNET_HOST_HOME", wine_path(home.path()))
            .env("WINEDEBUG", "-all")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "service {action}: {text} {}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let text = run("install");
    assert!(text.contains("registered the logon task"), "{text}");
    // What the Task Scheduler stored: our daemon at logon.
    // (Windows keeps it as UTF-16, Wine as UTF-8: either reads here.)
    let stored = std::fs::read(&registered).unwrap();
    let stored = match stored.strip_prefix(&[0xFF, 0xFE]) {
        Some(u16le) => String::from_utf16_lossy(
            &u16le.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>(),
        ),
        None => String::from_utf8_lossy(&stored).into_owned(),
    };
    // Our description came through, so the UTF-16 file was read. (Wine 8's
    // task XML reader keeps the registration info and settings but drops
    // triggers and the Exec action's command: those are checked on the
    // rendered XML by the installer's unit tests.)
    assert!(stored.contains("bitnet-host daemon: local BitNet models for browser extensions"), "{stored}");
    assert!(stored.contains("<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>"), "{stored}");
    // The task runs the installed copy, placed by `service install`.
    let placed = home.path().join("data/bin/bitnet-host.exe");
    assert!(placed.is_file(), "{text}");
    assert!(text.contains("registered the logon task"), "{text}");
    let text = run("uninstall");
    assert!(text.contains("removed the logon task"), "{text}");
    assert!(!registered.exists(), "the task is still registered");
}
