//! The per-user daemon behind relays (BITNET_HOST_DAEMON=1): shared backend,
//! one daemon however many start at once, an error for in-flight requests
//! when it dies and a fresh one for the next, idle exit, owner-only socket.

use std::path::Path;
use std::time::{Duration, Instant};

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::host_home;
use serde_json::{json, Value};

use crate::server::{alive, fixture_model};
use crate::{host_bin, standin_bin};

const T: Duration = Duration::from_secs(20);

fn relay(home: &Path, report: &str, idle_ms: &str) -> FakeBrowser {
    FakeBrowser::spawn_shared(
        host_bin(),
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", report), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", idle_ms)],
        home,
    )
}

fn daemon_pid(b: &mut FakeBrowser, id: &str) -> u64 {
    let r = b.request(&json!({"id": id, "type": "hello"}));
    r["result"]["host"]["pid"].as_u64().expect("pid")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_browsers_share_one_daemon_and_one_server_and_their_streams_never_cross() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay(home.path(), &report, "5000");
    let mut b = relay(home.path(), &report, "5000");
    let (pa, pb) = (daemon_pid(&mut a, "h1"), daemon_pid(&mut b, "h2"));
    assert_eq!(pa, pb, "one daemon answers both");
    assert_ne!(pa, u64::from(a.pid()));
    let sock = home.path().join("state/daemon/daemon.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let ra = a.request(&json!({"id": "la", "type": "load_model", "model": model}));
    let rb = b.request(&json!({"id": "lb", "type": "load_model", "model": model}));
    assert_eq!(ra["result"]["pid"], rb["result"]["pid"], "one server for both: {ra} {rb}");
    // Concurrent streams, same ids on both connections: each gets only its own.
    a.send(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 30]] [[slow 2]] from a"}]}));
    b.send(&json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 20]] [[slow 2]] from b"}]}));
    let (ea, fa) = a.collect("id", &json!("c"), T);
    let (eb, fb) = b.collect("id", &json!("c"), T);
    assert_eq!(ea.iter().filter(|e| e["event"] == "delta").count(), 30);
    assert_eq!(eb.iter().filter(|e| e["event"] == "delta").count(), 20);
    assert_eq!(fa.value["result"]["usage"]["completion_tokens"], 30);
    assert_eq!(fb.value["result"]["usage"]["completion_tokens"], 20);
}

#[test]
fn relays_racing_to_start_the_daemon_end_up_with_exactly_one() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut relays: Vec<FakeBrowser> = (0..4).map(|_| relay(home.path(), &report, "5000")).collect();
    let pids: Vec<u64> = relays.iter_mut().enumerate().map(|(i, r)| daemon_pid(r, &format!("h{i}"))).collect();
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "{pids:?}");
    // Any other daemon that started lost the lock and exited.
    let daemons = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"host-under-test")) && args.get(1) == Some(&&b"daemon"[..])
        })
        .count();
    // Other tests may run daemons too; at least ours is there and the pid
    // file names the winner.
    assert!(daemons >= 1);
    let pid_file = std::fs::read_to_string(home.path().join("state/daemon/daemon.pid")).unwrap();
    assert_eq!(pid_file.trim().parse::<u64>().unwrap(), pids[0]);
}

#[test]
fn a_daemon_killed_mid_stream_fails_the_request_and_the_next_one_gets_a_new_daemon() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay(home.path(), &report, "5000");
    let first = daemon_pid(&mut a, "h");
    a.send(&json!({"id": "long", "type": "echo", "events": 1000, "interval_ms": 20}));
    assert_eq!(a.recv(T)["id"], "long");
    // SAFETY-free: a plain kill of the daemon process.
    assert!(std::process::Command::new("kill").args(["-9", &first.to_string()]).status().unwrap().success());
    let (_, last) = a.collect("id", &json!("long"), T);
    assert_eq!(last.value["error"]["code"], "backend_crashed", "{}", last.value);
    assert!(last.value["error"]["message"].as_str().unwrap().contains("daemon"));
    let second = daemon_pid(&mut a, "h2");
    assert_ne!(first, second);
    // Legacy requests get a legacy-shaped error.
    a.send(&json!({"action": "ping", "messageId": "p"}));
    let (_, p) = a.collect("messageId", &json!("p"), T);
    assert_eq!(p.value["status"], "success");
}

#[test]
fn the_daemon_exits_after_its_idle_period_with_no_connections() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay(home.path(), &report, "400");
    let pid = daemon_pid(&mut a, "h") as u32;
    // While connected it stays.
    std::thread::sleep(Duration::from_millis(700));
    assert!(alive(pid));
    a.close_stdin();
    assert!(a.wait_exit(Duration::from_secs(5)).is_some());
    wait_for("the idle daemon to exit", || !alive(pid));
    assert!(!home.path().join("state/daemon/daemon.sock").exists());
    let _: Value = Value::Null;
}

#[test]
fn another_user_cannot_reach_the_daemons_socket() {
    // Needs root to become another user; elsewhere there is no other user to be.
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        return;
    }
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay(home.path(), &report, "5000");
    daemon_pid(&mut a, "h");
    let sock = home.path().join("state/daemon/daemon.sock");
    // Open every folder above the daemon's own to others, so only the
    // daemon's permissions (folder 0700, socket 0600) stand in the way.
    use std::os::unix::fs::PermissionsExt;
    for d in [home.path().to_path_buf(), home.path().join("state")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(home.path().join("report.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |test: &str, path: &Path| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "/bin/sh",
                "-c",
                &format!("test {test} '{}'", path.display()),
            ])
            .status()
            .unwrap()
            .success()
    };
    // The check itself works: nobody can read an open file...
    assert!(as_nobody("-r", &home.path().join("report.json")));
    // ...but can neither enter the daemon's folder nor write to its socket.
    assert!(!as_nobody("-x", &home.path().join("state/daemon")));
    assert!(!as_nobody("-w", &sock));
    // The owner still gets in.
    assert_eq!(a.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
}

fn relay_with(bin: &Path, args: &[String], home: &Path, report: &str) -> FakeBrowser {
    FakeBrowser::spawn_shared(
        bin,
        args,
        &[("BITNET_HOST_HARDWARE", report), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "3000")],
        home,
    )
}

#[test]
fn status_lists_every_connection_with_its_browser_and_extension() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay_with(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"), home.path(), &report);
    let mut b = relay_with(
        host_bin(),
        &bitnet_host_tests::browser::firefox_args("/x/com.bitnet.host.json", "ext@example.org"),
        home.path(),
        &report,
    );
    daemon_pid(&mut a, "h1");
    daemon_pid(&mut b, "h2");
    let st = a.request(&json!({"id": "s", "type": "status"}));
    let conns = st["result"]["connections"].as_array().unwrap().clone();
    assert_eq!(conns.len(), 2, "{st}");
    let find = |browser: &str| conns.iter().find(|c| c["browser"] == browser).cloned().unwrap_or_default();
    assert_eq!(find("chromium")["origin"], "chrome-extension://abcdefghijklmnopabcdefghijklmnop/");
    assert_eq!(find("chromium")["relay_pid"], a.pid());
    assert_eq!(find("firefox")["extension_id"], "ext@example.org");
    assert_eq!(find("firefox")["relay_pid"], b.pid());
    // A relay that goes away leaves the list.
    b.close_stdin();
    b.wait_exit(T);
    wait_for("the closed connection to leave the list", || {
        let st = a.request(&json!({"id": "s2", "type": "status"}));
        st["result"]["connections"].as_array().map(Vec::len) == Some(1)
    });
}

#[test]
fn stop_lets_running_requests_finish_and_the_next_request_starts_a_daemon_again() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let mut a = relay_with(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"), home.path(), &report);
    let first = daemon_pid(&mut a, "h1");
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    assert_eq!(a.request(&json!({"id": "l", "type": "load_model", "model": model}))["ok"], true);
    a.send(
        &json!({"id": "s", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 40]] [[slow 15]] go"}]}),
    );
    std::thread::sleep(Duration::from_millis(150));
    let o = std::process::Command::new(host_bin()).arg("stop").env("BITNET_HOST_HOME", home.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("stopped daemon {first}\n"));
    let (events, fin) = a.collect("id", &json!("s"), T);
    assert_eq!(fin.value["ok"], true, "stop cut the stream: {:?}", fin.value);
    assert_eq!(events.iter().filter(|e| e["event"] == "delta").count(), 40);
    assert!(!alive(first as u32));
    // Nothing restarts it on its own; the next request does.
    assert!(!home.path().join("state/daemon/daemon.sock").exists());
    let second = daemon_pid(&mut a, "h2");
    assert_ne!(first, second);
    let o = std::process::Command::new(host_bin()).arg("stop").env("BITNET_HOST_HOME", home.path()).output().unwrap();
    assert!(o.status.success());
    let o = std::process::Command::new(host_bin()).arg("stop").env("BITNET_HOST_HOME", home.path()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no daemon is running\n");
}

#[test]
fn a_new_build_of_the_host_replaces_the_running_daemon_without_cutting_a_stream() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let exe = home.path().join("bin/bitnet-host");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(host_bin(), &exe).unwrap();
    let mut a = relay_with(&exe, &chromium_args("abcdefghijklmnopabcdefghijklmnop"), home.path(), &report);
    let old = daemon_pid(&mut a, "h1");
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    assert_eq!(a.request(&json!({"id": "l", "type": "load_model", "model": model}))["ok"], true);
    // The new build, ready beside the old one.
    let mut bytes = std::fs::read(host_bin()).unwrap();
    bytes.extend_from_slice(b"\n#new build");
    let tmp = home.path().join("bin/.new");
    std::fs::write(&tmp, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.send(
        &json!({"id": "s", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 100]] [[slow 20]] go"}]}),
    );
    assert_eq!(a.recv(T)["event"], "delta", "the stream runs");
    // An update replaces the file (rename over it, as self_replace does).
    std::fs::rename(&tmp, &exe).unwrap();
    // A browser connection of the new build: the old daemon retires.
    let mut b = relay_with(&exe, &chromium_args("abcdefghijklmnopabcdefghijklmnop"), home.path(), &report);
    let new = daemon_pid(&mut b, "h2");
    assert_ne!(old, new, "a daemon of the new build answers");
    assert!(alive(old as u32), "the old daemon still finishes the stream");
    let (events, fin) = a.collect("id", &json!("s"), T);
    assert_eq!(fin.value["ok"], true, "the handover cut the stream: {:?}", fin.value);
    assert_eq!(events.iter().filter(|e| e["event"] == "delta").count(), 99, "(one delta was read above)");
    wait_for("the old daemon to exit", || !alive(old as u32));
    // The old relay's next request goes to the new daemon.
    assert_eq!(daemon_pid(&mut a, "h3"), new);
}

#[test]
fn a_daemon_that_cannot_start_fails_the_request_not_the_connection() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    // Someone holds the daemon lock without a socket: no daemon can start.
    let dir = home.path().join("state/daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("daemon.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let mut a = relay(home.path(), &report, "3000");
    let r = a.request(&json!({"id": "p1", "type": "ping"}));
    assert_eq!(r["error"]["code"], "internal", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("cannot start or reach the bitnet-host daemon"), "{r}");
    // Released: the same connection's next request gets a daemon.
    drop(lock);
    let r = a.request(&json!({"id": "p2", "type": "ping"}));
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn an_unusable_daemon_folder_means_serving_in_process() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    // A file where the daemon's folder should be.
    std::fs::create_dir_all(home.path().join("state")).unwrap();
    std::fs::write(home.path().join("state/daemon"), b"not a folder").unwrap();
    let mut a = relay(home.path(), &report, "3000");
    let pid = daemon_pid(&mut a, "h");
    assert_eq!(pid, u64::from(a.pid()), "the browser's own process answers");
}

#[test]
fn ps_shows_the_loaded_model_its_server_and_who_is_connected() {
    let (home, report) = host_home(host_bin(), standin_bin(), &[]);
    let report = report.to_str().unwrap().to_string();
    let ps = |args: &[&str]| {
        std::process::Command::new(host_bin())
            .arg("ps")
            .args(args)
            .env("BITNET_HOST_HOME", home.path())
            .output()
            .unwrap()
    };
    let o = ps(&[]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "no daemon is running\n");
    let mut a = relay_with(host_bin(), &chromium_args("abcdefghijklmnopabcdefghijklmnop"), home.path(), &report);
    let pid = daemon_pid(&mut a, "h");
    let text = String::from_utf8(ps(&[]).stdout).unwrap();
    assert!(text.starts_with(&format!("daemon {pid} (version ")), "{text}");
    assert!(
        text.contains("1 browser connection\n  chromium chrome-extension://abcdefghijklmnopabcdefghijklmnop/"),
        "{text}"
    );
    assert!(text.ends_with("no model loaded\n"), "{text}");
    // A model in the models folder, loaded by its name.
    let dir = home.path().join("data/models/bitnet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), dir.join("tiny.gguf")).unwrap();
    let r = a.request(&json!({"id": "l", "type": "load_model", "model": "bitnet/tiny.gguf"}));
    assert_eq!(r["ok"], true, "{r}");
    let server_pid = r["result"]["pid"].as_u64().unwrap();
    let v: Value = serde_json::from_slice(&ps(&["--json"]).stdout).unwrap();
    assert_eq!(v["daemon"]["pid"], pid, "{v}");
    let m = &v["model"];
    assert_eq!(m["name"], "bitnet/tiny.gguf", "{v}");
    assert_eq!(m["state"], "ready");
    assert_eq!(m["pid"], server_pid);
    assert!(m["backend"].as_str().is_some_and(|b| !b.is_empty()), "{v}");
    assert!(m["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    // Unused, it unloads after the keep-alive (5 minutes by default).
    let left = m["unload_in_ms"].as_u64().unwrap();
    assert!(left > 200_000 && left <= 300_000, "{v}");
    let text = String::from_utf8(ps(&[]).stdout).unwrap();
    let row = text.lines().last().unwrap();
    assert!(row.starts_with("bitnet/tiny.gguf ") && row.contains(&server_pid.to_string()), "{text}");
    assert!(row.contains(" MB ") && row.contains("ready") && row.contains("unloads in 4 minutes"), "{row}");
    // While a request runs it is in use.
    a.send(
        &json!({"id": "c", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 30]] [[slow 20]] go"}]}),
    );
    wait_for("the request to run", || String::from_utf8(ps(&[]).stdout).unwrap().ends_with("in use (1 request)\n"));
    let (_, fin) = a.collect("id", &json!("c"), T);
    assert_eq!(fin.value["ok"], true);
}
