//! `install`, `uninstall` and `doctor` in a fake home: HOME, XDG_*,
//! APPDATA, LOCALAPPDATA and BITNET_HOST_HOME all point into a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bitnet_installer::locations::Os;
use bitnet_installer::{render, Family};
use serde_json::{json, Value};

use crate::host_bin;

const CHROMIUM_ID: &str = "abcdefghijklmnopabcdefghijklmnop";
const FIREFOX_ID: &str = "bitnet@example.org";

struct FakeHome {
    dir: tempfile::TempDir,
}

impl FakeHome {
    fn new() -> Self {
        FakeHome { dir: tempfile::tempdir().unwrap() }
    }
    fn home(&self) -> &Path {
        self.dir.path()
    }
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let h = self.home();
        Command::new(host_bin())
            .args(args)
            .env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join(".config"))
            .env("XDG_DATA_HOME", h.join(".local/share"))
            .env("XDG_STATE_HOME", h.join(".local/state"))
            .env("XDG_CACHE_HOME", h.join(".cache"))
            .env("APPDATA", h.join("AppData/Roaming"))
            .env("LOCALAPPDATA", h.join("AppData/Local"))
            .env("BITNET_HOST_HOME", h.join("bitnet"))
            .env_remove("BITNET_HOST_HARDWARE")
            .env_remove("BITNET_INSTALL_FAIL_AFTER")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let o = self.run(args, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// Every file under the home, except the host's own folders.
    fn files_outside_host_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.home().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.starts_with(self.home().join("bitnet")) {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

fn all_browsers() -> &'static str {
    "chrome,chromium,edge,brave,vivaldi,opera,firefox,librewolf,waterfox"
}

#[test]
fn install_for_every_browser_writes_the_tables_manifests_and_uninstall_removes_them() {
    let h = FakeHome::new();
    let args =
        ["install", "--browser", all_browsers(), "--extension-id", CHROMIUM_ID, "--extension-id", FIREFOX_ID, "--json"];
    let r = h.json(&args);
    let host = PathBuf::from(r["host_path"].as_str().unwrap());
    assert!(host.starts_with(h.home().join("bitnet/data/bin")), "{host:?}");
    assert_eq!(std::fs::read(&host).unwrap(), std::fs::read(host_bin()).unwrap());
    let configured = r["configured"].as_array().unwrap();
    assert_eq!(configured.len(), 9, "{r}");
    let cfg = h.home().join(".config");
    let expect = [
        (cfg.join("google-chrome/NativeMessagingHosts"), Family::Chromium),
        (cfg.join("chromium/NativeMessagingHosts"), Family::Chromium),
        (cfg.join("microsoft-edge/NativeMessagingHosts"), Family::Chromium),
        (cfg.join("BraveSoftware/Brave-Browser/NativeMessagingHosts"), Family::Chromium),
        (cfg.join("vivaldi/NativeMessagingHosts"), Family::Chromium),
        (cfg.join("opera/NativeMessagingHosts"), Family::Chromium),
        (h.home().join(".mozilla/native-messaging-hosts"), Family::Firefox),
        (h.home().join(".librewolf/native-messaging-hosts"), Family::Firefox),
        (h.home().join(".waterfox/native-messaging-hosts"), Family::Firefox),
    ];
    for (dir, family) in &expect {
        let file = dir.join("com.bitnet.host.json");
        let ids: &[&str] = if *family == Family::Chromium { &[CHROMIUM_ID] } else { &[FIREFOX_ID] };
        let want = render(Os::current(), *family, "com.bitnet.host", &host, ids).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), want, "{file:?}");
    }
    assert!(configured.iter().all(|c| c["change"] == "created"));

    // Again: nothing changes.
    let again = h.json(&args);
    assert!(again["configured"].as_array().unwrap().iter().all(|c| c["change"] == "unchanged"), "{again}");

    // The installed host answers a browser's handshake: doctor says so.
    let o = h.run(&["doctor", "--json"], &[]);
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{d}");
    assert_eq!(d["manifests"].as_array().unwrap().len(), 9);
    assert!(d["manifests"].as_array().unwrap().iter().all(|m| m["handshake"] == "ok"), "{d}");

    let u = h.json(&["uninstall", "--json"]);
    assert_eq!(u["removed"].as_array().unwrap().len(), 10, "{u}");
    assert_eq!(h.files_outside_host_dirs(), Vec::<PathBuf>::new());
    assert!(!host.exists());
}

#[test]
fn uninstall_deletes_only_what_install_writes_whatever_the_record_says() {
    let h = FakeHome::new();
    h.json(&["install", "--browser", "chromium", "--extension-id", CHROMIUM_ID, "--json"]);
    let manifest = h.home().join(".config/chromium/NativeMessagingHosts/com.bitnet.host.json");
    // Someone with our uid edits the record to name files install never wrote.
    let victim = h.home().join("thesis.json");
    std::fs::write(&victim, b"{\"type\": \"stdio\", \"path\": \"/usr/bin/other\"}").unwrap();
    let doc = h.home().join("notes.txt");
    std::fs::write(&doc, b"mine").unwrap();
    let record = h.home().join("bitnet/state/install-record.json");
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    r["files"].as_array_mut().unwrap().extend([json!(victim), json!(doc)]);
    r["registry"] = json!([["HKCU", "Software\\Microsoft\\Windows\\CurrentVersion\\Run"]]);
    std::fs::write(&record, r.to_string()).unwrap();
    let u = h.json(&["uninstall", "--json"]);
    assert!(victim.exists() && doc.exists(), "{u}");
    assert!(!manifest.exists(), "{u}");
    let refused = u["refused"].to_string();
    assert!(
        refused.contains("thesis.json") && refused.contains("notes.txt") && refused.contains("CurrentVersion"),
        "{u}"
    );
}

#[test]
fn an_injected_failure_half_way_leaves_the_previous_state() {
    let h = FakeHome::new();
    // A previous install for chromium with one id.
    h.json(&["install", "--browser", "chromium", "--extension-id", CHROMIUM_ID, "--json"]);
    let file = h.home().join(".config/chromium/NativeMessagingHosts/com.bitnet.host.json");
    let before = std::fs::read(&file).unwrap();
    let before_files = h.files_outside_host_dirs();
    // Now a bigger install that fails after two writes.
    let other = "ponmlkjihgfedcbaponmlkjihgfedcba";
    let o = h.run(
        &["install", "--browser", all_browsers(), "--extension-id", other, "--extension-id", FIREFOX_ID],
        &[("BITNET_INSTALL_FAIL_AFTER", "2")],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("injected failure"));
    assert_eq!(std::fs::read(&file).unwrap(), before, "the old manifest is back");
    assert_eq!(h.files_outside_host_dirs(), before_files, "nothing new is left behind");
}

#[test]
fn all_means_the_browsers_found_here_and_sandboxed_ones_are_explained() {
    let h = FakeHome::new();
    std::fs::create_dir_all(h.home().join(".config/chromium")).unwrap();
    std::fs::create_dir_all(h.home().join(".var/app/org.mozilla.firefox")).unwrap();
    let r = h.json(&["install", "--extension-id", CHROMIUM_ID, "--extension-id", FIREFOX_ID, "--json"]);
    let configured: Vec<&str> =
        r["configured"].as_array().unwrap().iter().map(|c| c["browser"].as_str().unwrap()).collect();
    assert_eq!(configured, ["chromium"]);
    let skipped = r["skipped"].as_array().unwrap();
    let firefox = skipped.iter().find(|s| s["browser"] == "firefox").unwrap();
    assert!(firefox["reason"].as_str().unwrap().contains("Flatpak"), "{firefox}");
    let vivaldi = skipped.iter().find(|s| s["browser"] == "vivaldi").unwrap();
    assert_eq!(vivaldi["reason"], "not found on this machine");
    // Installed but never started (no profile folder yet): found by the
    // executable on PATH, as Debian's chromium and firefox-esr install them.
    let h3 = FakeHome::new();
    let bin = h3.home().join("usr-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for exe in ["chromium", "firefox-esr"] {
        std::fs::write(bin.join(exe), "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join(exe), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let path = bin.display().to_string();
    let o = h3.run(
        &["install", "--extension-id", CHROMIUM_ID, "--extension-id", FIREFOX_ID, "--json"],
        &[("PATH", path.as_str())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let configured: Vec<&str> =
        r["configured"].as_array().unwrap().iter().map(|c| c["browser"].as_str().unwrap()).collect();
    assert!(configured.contains(&"chromium") && configured.contains(&"firefox"), "{r}");
    assert!(h3.home().join(".config/chromium/NativeMessagingHosts/com.bitnet.host.json").is_file());
    assert!(h3.home().join(".mozilla/native-messaging-hosts/com.bitnet.host.json").is_file());
    let h4 = FakeHome::new();
    // Dry run writes nothing, and says so.
    let o = h4.run(&["install", "--browser", "firefox", "--extension-id", FIREFOX_ID, "--dry-run"], &[]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("(dry run: nothing written)") && text.contains("would be created"), "{text}");
    assert!(!text.lines().any(|l| l.split_whitespace().nth(1) == Some("created")), "{text}");
    let h2 = FakeHome::new();
    let r = h2.json(&["install", "--browser", "firefox", "--extension-id", FIREFOX_ID, "--dry-run", "--json"]);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["configured"][0]["change"], "created");
    assert_eq!(h2.files_outside_host_dirs(), Vec::<PathBuf>::new());
    // TabAgent drop-in: its name and id.
    let r = h2.json(&["install", "--browser", "chrome", "--tabagent", "--json"]);
    let path = r["configured"][0]["target"]["path"].as_str().unwrap();
    assert!(path.ends_with("google-chrome/NativeMessagingHosts/com.tabagent.host.json"), "{path}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(m["allowed_origins"][0], "chrome-extension://fkkeoobeahalebjpbockfedlncckobjb/");
}

#[test]
fn doctor_names_each_problem_of_a_broken_install_with_its_fix() {
    let h = FakeHome::new();
    let r = h.json(&[
        "install",
        "--browser",
        "chromium,firefox",
        "--extension-id",
        CHROMIUM_ID,
        "--extension-id",
        FIREFOX_ID,
        "--json",
    ]);
    let host = PathBuf::from(r["host_path"].as_str().unwrap());
    // Break it three ways.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644)).unwrap();
    let chromium = h.home().join(".config/chromium/NativeMessagingHosts/com.bitnet.host.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&chromium).unwrap()).unwrap();
    m["name"] = "com.other.host".into();
    std::fs::write(&chromium, m.to_string()).unwrap();
    let firefox = h.home().join(".mozilla/native-messaging-hosts/com.bitnet.host.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&firefox).unwrap()).unwrap();
    m["path"] = "bin/bitnet-host".into();
    std::fs::write(&firefox, m.to_string()).unwrap();

    let o = h.run(&["doctor", "--json"], &[]);
    assert!(!o.status.success());
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = d["problems"].to_string();
    assert!(problems.contains("is not executable") && problems.contains("chmod +x"), "{problems}");
    assert!(problems.contains("browsers look the host up by file name"), "{problems}");
    assert!(problems.contains("is relative"), "{problems}");
    // The text form says the same, one fix per problem.
    let o = h.run(&["doctor"], &[]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("PROBLEM   ").count(), text.matches("  fix:    ").count());
    assert!(text.matches("PROBLEM   ").count() >= 3, "{text}");
}

#[test]
fn doctor_names_a_manifest_that_is_a_device_or_a_fifo_without_reading_it() {
    // 'static, so that a doctor that hangs fails the test instead of
    // holding it (the thread is left behind).
    let h: &'static FakeHome = Box::leak(Box::new(FakeHome::new()));
    h.json(&[
        "install",
        "--browser",
        "chromium,firefox",
        "--extension-id",
        CHROMIUM_ID,
        "--extension-id",
        FIREFOX_ID,
        "--json",
    ]);
    // One manifest a symlink to an endless device, the other a FIFO no one
    // writes: reading either would grow without end or block for ever.
    let chromium = h.home().join(".config/chromium/NativeMessagingHosts/com.bitnet.host.json");
    std::fs::remove_file(&chromium).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &chromium).unwrap();
    let firefox = h.home().join(".mozilla/native-messaging-hosts/com.bitnet.host.json");
    std::fs::remove_file(&firefox).unwrap();
    let c = std::ffi::CString::new(firefox.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(h.run(&["doctor", "--json"], &[])));
    let o = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("doctor answers");
    assert!(!o.status.success());
    let d: Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = d["problems"].to_string();
    assert!(problems.contains("is a device, not a regular file"), "{problems}");
    assert!(problems.contains("is a FIFO, not a regular file"), "{problems}");
    let _ = std::fs::remove_dir_all(h.home());
}

#[test]
fn service_install_writes_the_systemd_user_unit_and_uninstall_removes_it() {
    let h = FakeHome::new();
    // Never the real user's systemd: the unit is written and the next step named.
    let env = [("BITNET_SERVICE_MANAGER", "none")];
    let o = h.run(&["service", "install"], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let unit = h.home().join(".config/systemd/user/bitnet-host.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    // The installed copy, placed by `service install` itself, never the
    // build tree's binary (which `cargo clean` or a rebuild takes away).
    let placed = h.home().join("bitnet/data/bin").join(host_bin().file_name().unwrap());
    assert!(text.contains(&format!("ExecStart=\"{}\" daemon", placed.display())), "{text}");
    assert_eq!(std::fs::read(&placed).unwrap(), std::fs::read(host_bin()).unwrap());
    assert!(text.contains("BITNET_DAEMON_IDLE_MS=0"));
    let status = String::from_utf8(h.run(&["service", "status"], &env).stdout).unwrap();
    assert!(status.contains(&unit.display().to_string()), "{status}");
    let o = h.run(&["service", "uninstall"], &env);
    assert!(o.status.success());
    assert!(!unit.exists());
    let o = h.run(&["service", "restart"], &env);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values: install, uninstall, status"));
    // `uninstall` removes the copy the service used.
    assert!(h.run(&["uninstall"], &[]).status.success());
    assert!(!placed.exists());
}

/// systemd-analyze, or None where it is not installed (then the test is
/// skipped, except under CI, which installs it).
fn systemd_analyze() -> Option<&'static str> {
    let found = std::process::Command::new("systemd-analyze").arg("--version").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must install systemd (systemd-analyze)");
        eprintln!("systemd-analyze not installed: skipped");
        return None;
    }
    Some("systemd-analyze")
}

#[test]
fn the_rendered_systemd_unit_passes_systemd_analyze_verify() {
    let Some(tool) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A path with a space and a percent sign, which the unit must quote/escape.
    let bin_dir = dir.path().join("my apps 100%");
    std::fs::create_dir(&bin_dir).unwrap();
    let exe = bin_dir.join("bitnet-host");
    std::fs::copy(crate::host_bin(), &exe).unwrap();
    let verify = |unit: &str| {
        let path = dir.path().join("bitnet-host.service");
        std::fs::write(&path, unit).unwrap();
        std::process::Command::new(tool)
            .args(["--user", "verify", "--man=no"])
            .arg(&path)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap()
    };
    let unit = bitnet_installer::service::systemd_unit(&exe).unwrap();
    let o = verify(&unit);
    assert!(o.status.success(), "{unit}\n{}", String::from_utf8_lossy(&o.stderr));
    // The check can fail: a unit whose program is missing does not verify.
    let missing = bitnet_installer::service::systemd_unit(&dir.path().join("gone/bitnet-host")).unwrap();
    let o = verify(&missing);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not executable"), "{}", String::from_utf8_lossy(&o.stderr));
}
