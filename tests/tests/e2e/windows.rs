//! The Windows build of the host, run under Wine: `scripts/cross-test`
//! sets BITNET_WINDOWS_HOST to the Wine loader and `bitnet-host.exe` (and
//! WINEPREFIX to its prefix). Native messaging in-process (the daemon has
//! no Windows transport yet): a ping, a streamed chat from the built-in
//! engine (`bitnet-host.exe runner`, a Windows child of the host), and the
//! kill-on-close Job Object ending that runner when the host is
//! terminated.

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

/// Linux pids of Wine processes whose command line has every one of `words`.
fn processes_with(words: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
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

    let runners = processes_with(&["runner", "wine-fixture.gguf"]);
    assert!(!runners.is_empty(), "no runner process found");
    // Terminated, as Chrome ends a host: nothing of it may run on.
    b.kill();
    let t = Instant::now();
    while !processes_with(&["runner", "wine-fixture.gguf"]).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "the runner outlived its host (home {home_arg})");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("runner {runners:?} ended {:?} after its host", t.elapsed());
}
