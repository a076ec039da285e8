//! `update` against a GitHub-style release server on 127.0.0.1, with
//! releases made by the real dist program (`xtask::dist`) and signed with a
//! key generated for the test: install + keep the old one, resume after a
//! cut, refuse any flipped byte or a foreign signature leaving everything as
//! it was, roll back a server that fails its health check, leave nothing on
//! a disk-full error, and a running daemon moves to the new servers without
//! cutting a stream.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use serde_json::{json, Value};

use crate::server::fixture_model;
use crate::{host_bin, standin_bin};

const TARGET: &str = "x86_64-unknown-linux-gnu";
const MARK: &[u8] = b"\n#bitnet-host test build ";

/// Releases the server lists: (version, folder with its assets).
#[derive(Default)]
struct Releases {
    list: Mutex<Vec<(String, PathBuf)>>,
    base: Mutex<String>,
    /// Cut the next full download of an asset whose name contains this.
    cut_next: Mutex<Option<String>>,
    ranges: AtomicUsize,
    listed: AtomicBool,
}

async fn listing(State(s): State<Arc<Releases>>) -> Response {
    s.listed.store(true, Ordering::SeqCst);
    let base = s.base.lock().unwrap().clone();
    let list: Vec<Value> = s
        .list
        .lock()
        .unwrap()
        .iter()
        .rev()
        .map(|(v, dir)| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "SHA256SUMS")
                .collect();
            names.sort();
            let assets: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "url": format!("{base}/dl/{v}/{n}"), "browser_download_url": "unused"}))
                .collect();
            json!({"tag_name": format!("v{v}"), "created_at": "2026-11-29T00:00:00Z", "name": v, "assets": assets})
        })
        .collect();
    axum::Json(list).into_response()
}

async fn download(
    State(s): State<Arc<Releases>>,
    UrlPath((v, name)): UrlPath<(String, String)>,
    h: HeaderMap,
) -> Response {
    let dir = s.list.lock().unwrap().iter().find(|(x, _)| *x == v).map(|(_, d)| d.clone());
    let Some(bytes) = dir.and_then(|d| std::fs::read(d.join(&name)).ok()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if bitnet_host_tests::files::range_start(&h).is_some() {
        s.ranges.fetch_add(1, Ordering::SeqCst);
        return bitnet_host_tests::files::respond(&bytes, &h, false, &[]);
    }
    let cut = {
        let mut c = s.cut_next.lock().unwrap();
        match c.as_deref() {
            Some(pat) if name.contains(pat) => c.take().is_some(),
            _ => false,
        }
    };
    bitnet_host_tests::files::respond(&bytes, &h, cut, &[])
}

fn start_server(s: Arc<Releases>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *s.base.lock().unwrap() = base.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/repos/{o}/{r}/releases", get(listing))
                .route("/dl/{v}/{name}", get(download))
                .with_state(s);
            axum::serve(l, app).await.unwrap();
        });
    });
    base
}

/// A test world: a release server, a signing key, a home with a copy of
/// the host (so self-replacement replaces the copy), a recorded AVX2 report.
struct World {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    exe: PathBuf,
    report: PathBuf,
    releases: Arc<Releases>,
    base: String,
    secret: String,
    public: String,
    pid_log: PathBuf,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        let exe = home.join("bin/bitnet-host");
        std::fs::copy(host_bin(), &exe).unwrap();
        let (secret, public) = xtask::keygen().unwrap();
        let report = record_report(&home);
        let releases = Arc::new(Releases::default());
        let base = start_server(releases.clone());
        let pid_log = tmp.path().join("server-pids.log");
        Self { _tmp: tmp, home, exe, report, releases, base, secret, public, pid_log }
    }

    fn tmp(&self) -> &Path {
        self._tmp.path()
    }

    /// Make release `version` with dist: the stand-in as the bitnet.cpp CPU
    /// build (with `faults`) and the host as `host` says.
    fn release(&self, version: &str, faults: &[&str], host: HostBuild) -> PathBuf {
        let servers = self.tmp().join(format!("servers-{version}"));
        let bin = servers.join("cpu/linux/llama-server");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        let fault_args: String = faults.iter().map(|f| format!(" --fault '{f}'")).collect();
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho \"{version} $$\" >> '{log}'\nexec '{standin}'{fault_args} \"$@\"\n",
                log = self.pid_log.display(),
                standin = standin_bin().display()
            ),
        )
        .unwrap();
        let mut bytes = match host {
            HostBuild::None => Vec::new(),
            // A debug host is ~200 MB: only the test that runs the new host
            // ships a real one.
            HostBuild::Small => b"#!/bin/sh\necho bitnet-host\n".to_vec(),
            HostBuild::Real => std::fs::read(host_bin()).unwrap(),
        };
        bytes.extend_from_slice(MARK);
        bytes.extend_from_slice(version.as_bytes());
        let host_path = self.tmp().join(format!("host-{version}"));
        std::fs::write(&host_path, bytes).unwrap();
        let hosts = if host == HostBuild::None { vec![] } else { vec![(TARGET.into(), host_path)] };
        let out = self.tmp().join(format!("dist-{version}"));
        let report = xtask::dist(&xtask::DistOptions {
            version: version.into(),
            servers: Some(servers),
            hosts,
            catalog: Path::new(env!("CARGO_MANIFEST_DIR")).join("../binaries/variants.toml"),
            secret_key: self.secret.clone(),
            out: out.clone(),
        })
        .unwrap();
        assert_eq!(report.manifest.files.len(), 1);
        assert!(report.missing.iter().any(|(id, _)| id == "cuda-linux-x86_64"), "missing builds are reported");
        out
    }

    fn publish(&self, version: &str, dir: &Path) {
        self.releases.list.lock().unwrap().push((version.into(), dir.to_path_buf()));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("BITNET_HOST_HOME", &self.home)
            .env("BITNET_HOST_HARDWARE", &self.report)
            .env("BITNET_UPDATE_API", &self.base)
            .env("BITNET_UPDATE_PUBLIC_KEY", &self.public)
            .env_remove("BITNET_UPDATE_FAIL_AFTER");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn update(&self, extra: &[&str]) -> Output {
        let model = fixture_model("bitnet-b1.58-i2_s.gguf");
        let mut args = vec!["update", "--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn bins(&self) -> PathBuf {
        self.home.join("data/binaries")
    }

    fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.bins().join("current")).ok().map(|s| s.trim().to_string())
    }

    /// Every file under the host's data dir and the host binary, with contents.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = vec![(self.exe.clone(), std::fs::read(&self.exe).unwrap())];
        let mut stack = vec![self.home.join("data")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !p.starts_with(self.home.join("data/models")) {
                    out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
                }
            }
        }
        out.sort();
        out
    }

    fn server_pids(&self, version: &str) -> Vec<u32> {
        std::fs::read_to_string(&self.pid_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{version} "))?.parse().ok())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HostBuild {
    None,
    Small,
    Real,
}

fn record_report(home: &Path) -> PathBuf {
    bitnet_host_tests::standin::record_avx2_report(host_bin(), home)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn update_installs_a_signed_release_resumes_after_a_cut_and_rolls_back_on_request() {
    let w = World::new();
    let v2 = w.release("0.2.0", &[], HostBuild::Real);
    w.publish("0.2.0", &v2);
    let old_host = std::fs::read(&w.exe).unwrap();

    let o = w.run(&["update", "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("host 0.1.0 -> 0.2.0"), "{t}");
    assert!(t.contains("servers none -> 0.2.0 (1 files for this machine)"), "{t}");
    assert_eq!(w.current(), None, "--check changes nothing");

    let o = w.update(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("servers 0.2.0 installed (1 files)"), "{}", text(&o));
    assert_eq!(w.current().as_deref(), Some("0.2.0"));
    let installed = w.bins().join("0.2.0/cpu/linux/llama-server");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(w.tmp().join("servers-0.2.0/cpu/linux/llama-server")).unwrap()
    );
    assert!(w.bins().join("0.2.0/variants.toml").is_file() && w.bins().join("0.2.0/manifest.json.minisig").is_file());
    assert_eq!(w.server_pids("0.2.0").len(), 1, "the health check started the new server once");
    // The host replaced itself; the old one is kept.
    let new_host = std::fs::read(&w.exe).unwrap();
    assert!(new_host.ends_with(b"0.2.0") && new_host.len() > old_host.len());
    assert_eq!(std::fs::read(w.home.join("data/previous/bitnet-host")).unwrap(), old_host);
    let o = w.run(&["--version"]);
    assert!(o.status.success(), "the new host runs: {}", text(&o));
    assert!(!w.home.join("data/updates").exists() && !w.bins().join(".downloads").exists());
    // Selection now finds the server in the installed bundle.
    let o = w.run(&["select", "--json", "--format", "i2_s"]);
    let sel: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(sel["candidates"][0]["launch"]["path"], installed.to_str().unwrap(), "{sel}");

    // 0.3.0: its bundle download is cut half-way; the next run resumes.
    let v3 = w.release("0.3.0", &[], HostBuild::None);
    w.publish("0.3.0", &v3);
    *w.releases.cut_next.lock().unwrap() = Some("BitNet-Release".into());
    let o = w.update(&["--servers-only"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("run it again to resume"), "{}", text(&o));
    assert_eq!(w.current().as_deref(), Some("0.2.0"), "an interrupted update changes nothing");
    let o = w.update(&["--servers-only"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.releases.ranges.load(Ordering::SeqCst), 1, "resumed with one Range request");
    assert_eq!(w.current().as_deref(), Some("0.3.0"));
    assert!(w.bins().join("0.2.0").is_dir(), "the previous version is kept");
    assert!(std::fs::read(&w.exe).unwrap().ends_with(b"0.2.0"), "--servers-only leaves the host alone");

    let o = w.run(&["update", "--rollback"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rolled back to 0.2.0"), "{}", text(&o));
    assert_eq!(w.current().as_deref(), Some("0.2.0"));
}

#[test]
fn a_flipped_byte_in_any_release_file_or_a_foreign_signature_changes_nothing() {
    let w = World::new();
    let good = w.release("0.2.0", &[], HostBuild::Small);
    let before = w.snapshot();
    let names: Vec<String> = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in &names {
        let bad = w.tmp().join(format!("flip-{name}"));
        std::fs::create_dir_all(&bad).unwrap();
        for n in &names {
            std::fs::copy(good.join(n), bad.join(n)).unwrap();
        }
        let mut bytes = std::fs::read(bad.join(name)).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(bad.join(name), bytes).unwrap();
        w.releases.list.lock().unwrap().clear();
        w.publish("0.2.0", &bad);
        let o = w.update(&[]);
        assert!(!o.status.success(), "flipped {name} was accepted: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("signature") || t.contains("checksum") || t.contains("sha256") || t.contains("not valid"),
            "flipped {name}: {t}"
        );
        assert_eq!(w.snapshot(), before, "flipped {name} changed something");
    }
    // The bundle zip alone, flipped, refused the same way.
    let zip = w.tmp().join("flip-BitNet-Release.zip/BitNet-Release.zip");
    let o = w.run(&["update", "--bundle", zip.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(w.snapshot(), before);
    // Signed with another key.
    let (other_secret, _) = xtask::keygen().unwrap();
    let foreign = World { secret: other_secret, ..World::new() };
    let dir = foreign.release("0.2.0", &[], HostBuild::Small);
    w.releases.list.lock().unwrap().clear();
    w.publish("0.2.0", &dir);
    let o = w.update(&[]);
    assert!(text(&o).contains("signature does not verify"), "{}", text(&o));
    assert_eq!(w.snapshot(), before);
    let o = w.run(&["update", "--bundle", dir.join("BitNet-Release.zip").to_str().unwrap()]);
    assert!(text(&o).contains("signature does not verify"), "{}", text(&o));
    assert_eq!(w.snapshot(), before);
    // And the good release still installs.
    w.releases.list.lock().unwrap().clear();
    w.publish("0.2.0", &good);
    let o = w.update(&["--servers-only"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_server_failing_its_health_check_is_rolled_back_and_disk_full_leaves_nothing() {
    let w = World::new();
    let v2 = w.release("0.2.0", &[], HostBuild::None);
    let o = w.run(&[
        "update",
        "--bundle",
        v2.join("BitNet-Release.zip").to_str().unwrap(),
        "--model",
        fixture_model("bitnet-b1.58-i2_s.gguf").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.current().as_deref(), Some("0.2.0"));
    let before = w.snapshot();

    let v3 = w.release("0.3.0", &["crash-at-start"], HostBuild::None);
    w.publish("0.3.0", &v3);
    let o = w.update(&["--servers-only"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("failed their health check"), "{}", text(&o));
    assert!(!w.server_pids("0.3.0").is_empty(), "the new server was tried");
    assert_eq!(w.current().as_deref(), Some("0.2.0"));
    assert!(!w.bins().join("0.3.0").exists());
    assert_eq!(w.snapshot(), before, "the rollback put everything back");

    // Disk full while unpacking: nothing staged, nothing downloaded left.
    let v4 = w.release("0.4.0", &[], HostBuild::None);
    w.publish("0.4.0", &v4);
    let o = w.cmd(&["update", "--servers-only"]).env("BITNET_UPDATE_FAIL_AFTER", "0").output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("no space left"), "{}", text(&o));
    assert_eq!(w.snapshot(), before, "no partial files");

    // The release server is down: a clear error.
    let o = w.cmd(&["update", "--check"]).env("BITNET_UPDATE_API", "http://127.0.0.1:9").output().unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("cannot list releases at http://127.0.0.1:9/repos/bitnet-host/bitnet-host/releases"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_running_daemon_moves_to_new_servers_without_cutting_a_stream() {
    let w = World::new();
    let v2 = w.release("0.2.0", &[], HostBuild::None);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let o = w.run(&["update", "--bundle", v2.join("BitNet-Release.zip").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let report = w.report.to_str().unwrap().to_string();
    let mut b = FakeBrowser::spawn_shared(
        &w.exe,
        &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_HOST_HARDWARE", report.as_str()), ("BITNET_HOST_DAEMON", "1"), ("BITNET_DAEMON_IDLE_MS", "2000")],
        &w.home,
    );
    let r = b.request(&json!({"id": "l", "type": "load_model", "model": model}));
    assert!(r["result"]["pid"].is_u64(), "{r}");
    let old_pid = w.server_pids("0.2.0")[0];
    // A long stream, then the update while it runs.
    b.send(
        &json!({"id": "s", "type": "chat", "messages": [{"role": "user", "content": "[[tokens 60]] [[slow 20]] go"}]}),
    );
    std::thread::sleep(Duration::from_millis(200));
    let v3 = w.release("0.3.0", &[], HostBuild::None);
    let o = w.run(&[
        "update",
        "--bundle",
        v3.join("BitNet-Release.zip").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("the running daemon moved its model to bitnet-cpu-linux-x86_64"), "{}", text(&o));
    let (events, fin) = b.collect("id", &json!("s"), Duration::from_secs(30));
    assert!(fin.value.get("error").is_none(), "the stream was cut: {:?}", fin.value);
    let deltas = events.iter().filter(|e| e["event"] == "delta").count();
    assert_eq!(deltas, 60, "{:?}", fin.value);
    // The next request runs on the new server, the old one is gone.
    let r = b.request(&json!({"id": "n", "type": "chat", "stream": false, "messages": [{"role": "user", "content": "[[tokens 3]] again"}]}));
    assert!(r.get("result").is_some(), "{r}");
    let new_pids = w.server_pids("0.3.0");
    // One for the health check, one for the daemon.
    assert_eq!(new_pids.len(), 2, "{new_pids:?}");
    let status = b.request(&json!({"id": "st", "type": "status"}));
    assert_eq!(status["result"]["server"]["pid"].as_u64(), Some(u64::from(new_pids[1])), "{status}");
    assert!(!crate::server::alive(old_pid), "the old server was stopped");
}

/// This machine's report, recorded as another machine (os, arch, features, CUDA).
fn machine(os: &str, arch: &str, features: &[&str], cuda_cc: Option<&str>) -> bitnet_probe::HardwareReport {
    let home = tempfile::tempdir().unwrap();
    let file = record_report(home.path());
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    r["os"]["family"] = json!(os);
    r["os"]["arch"] = json!(arch);
    r["cpu"]["arch"] = json!(arch);
    r["cpu"]["features"] = json!(features);
    r["vulkan"] = json!({"status": "unavailable", "reason": "recorded without Vulkan"});
    r["metal"] = if os == "macos" {
        json!({"status": "available", "device_name": "Apple M2", "unified_memory": true, "recommended_working_set_bytes": 11u64 << 30})
    } else {
        json!({"status": "unavailable", "reason": "not macOS"})
    };
    r["cuda"] = match cuda_cc {
        Some(cc) => json!({"status": "available", "driver_version": "551.61", "cuda_driver_version": "12.4",
            "devices": [{"index": 0, "name": "NVIDIA GeForce RTX 3060", "uuid": null, "pci_bus_id": null,
                "memory_total_bytes": 12u64 << 30, "memory_free_bytes": null, "compute_capability": cc}]}),
        None => json!({"status": "unavailable", "reason": "no NVIDIA driver"}),
    };
    serde_json::from_value(r).expect("a report")
}

#[test]
fn a_dist_bundle_installs_per_platform_and_selection_picks_the_right_file() {
    use bitnet_installer::release::BinariesDir;
    use bitnet_supervisor::{select, Catalog, Inputs, Launch, Preferences};
    let w = World::new();
    let catalog_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../binaries/variants.toml");
    let catalog = Catalog::parse(&std::fs::read_to_string(&catalog_path).unwrap()).unwrap();
    // A build for every catalog entry, plus a shared library no variant names.
    let servers = w.tmp().join("all-servers");
    for v in &catalog.variants {
        let p = servers.join(&v.file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("build of {}", v.id)).unwrap();
    }
    std::fs::write(servers.join("cpu/linux/libggml-extra.so"), b"lib").unwrap();
    let out = w.tmp().join("dist-all");
    let report = xtask::dist(&xtask::DistOptions {
        version: "1.0.0".into(),
        servers: Some(servers),
        hosts: vec![],
        catalog: catalog_path,
        secret_key: w.secret.clone(),
        out: out.clone(),
    })
    .unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    let zip = out.join("BitNet-Release.zip");

    type Case<'a> = (&'a str, &'a str, &'a [&'a str], Option<&'a str>, &'a str);
    let cases: [Case; 5] = [
        ("linux", "x86_64", &["sse4.2", "avx", "avx2", "fma", "f16c"], None, "cpu/linux/llama-server"),
        ("linux", "x86_64", &["sse4.2", "avx", "avx2", "fma", "f16c"], Some("8.6"), "gpu/linux/llama-server-cuda"),
        (
            "windows",
            "x86_64",
            &["sse4.2", "avx", "avx2", "fma", "f16c"],
            Some("8.6"),
            "gpu/windows/llama-server-cuda.exe",
        ),
        ("macos", "aarch64", &["neon", "dotprod"], None, "gpu/macos/llama-server-metal"),
        ("linux", "aarch64", &["neon", "dotprod"], None, "cpu/linux/llama-server-arm64"),
    ];
    for (os, arch, features, cuda, want) in cases {
        let bins = BinariesDir::new(w.tmp().join(format!("bins-{os}-{arch}-{}", cuda.is_some())));
        let inst = bins.install(&zip, &w.public, (os, arch), None, |_| Ok(())).unwrap();
        // Only this platform's files (and arch-neutral ones of its OS) are installed.
        for f in &inst.files {
            assert!(f.contains(&format!("/{os}/")), "{os}/{arch} got {f}");
        }
        assert_eq!(inst.files.iter().any(|f| f.ends_with(".so")), os == "linux", "{:?}", inst.files);
        let installed_catalog = Catalog::parse(&bins.active_variants().unwrap()).unwrap();
        let dir = bins.active_dir();
        let installed = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
        let r = machine(os, arch, features, cuda);
        // A q8_0 model where a GPU build should win (GPU builds do not list
        // the ternary formats), a ternary one elsewhere.
        let format = if cuda.is_some() || os == "macos" { "q8_0" } else { "i2_s" };
        let sel = select(&Inputs {
            report: &r,
            catalog: &installed_catalog,
            installed: &installed,
            model_format: Some(format),
            prefs: &Preferences::default(),
            path_server: None,
            cpu_family: None,
            calibrated: &[],
        });
        let first = sel.candidates.first().unwrap_or_else(|| panic!("{os}/{arch}: nothing selected: {sel:?}"));
        match &first.launch {
            Launch::Bundled { path } => assert_eq!(path, &dir.join(want), "{os}/{arch} cuda={cuda:?}: {sel:?}"),
            other => panic!("{os}/{arch}: {other:?} {:?}", sel.skipped),
        }
    }
}

fn daemon_relay(w: &World, extra: &[(&str, &str)]) -> FakeBrowser {
    let report = w.report.to_str().unwrap().to_string();
    let mut env = vec![
        ("BITNET_HOST_HARDWARE", report.as_str()),
        ("BITNET_HOST_DAEMON", "1"),
        ("BITNET_DAEMON_IDLE_MS", "1000"),
        ("BITNET_UPDATE_API", w.base.as_str()),
        ("BITNET_UPDATE_PUBLIC_KEY", w.public.as_str()),
        ("BITNET_UPDATE_CHECK_INTERVAL_MS", "300"),
    ];
    env.extend_from_slice(extra);
    FakeBrowser::spawn_shared(&w.exe, &chromium_args("abcdefghijklmnopabcdefghijklmnop"), &env, &w.home)
}

fn wait_status(b: &mut FakeBrowser, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t = std::time::Instant::now();
    loop {
        let s = b.request(&json!({"id": "st", "type": "status"}));
        if f(&s["result"]) {
            return s["result"].clone();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_checks_for_updates_reports_them_and_applies_only_when_asked() {
    // Report only.
    let w = World::new();
    let v2 = w.release("0.2.0", &[], HostBuild::None);
    w.publish("0.2.0", &v2);
    let mut b = daemon_relay(&w, &[]);
    let st = wait_status(&mut b, "an available update", |s| s["update"]["available"] == "0.2.0");
    assert_eq!(st["update"]["servers"], true, "{st}");
    assert!(st["update"]["applied"].is_null(), "{st}");
    assert_eq!(w.current(), None, "reported, not applied");

    // auto_apply = true: the servers are installed by the daemon.
    let w = World::new();
    let v2 = w.release("0.2.0", &[], HostBuild::None);
    w.publish("0.2.0", &v2);
    std::fs::create_dir_all(w.home.join("config")).unwrap();
    std::fs::write(w.home.join("config/config.toml"), "[update]\nauto_apply = true\n").unwrap();
    let mut b = daemon_relay(&w, &[]);
    let st = wait_status(&mut b, "the update applied", |s| s["update"]["applied"] == "0.2.0");
    assert_eq!(w.current().as_deref(), Some("0.2.0"), "{st}");

    // check = false: the release server is never asked.
    let w = World::new();
    w.publish("0.2.0", &v2);
    std::fs::create_dir_all(w.home.join("config")).unwrap();
    std::fs::write(w.home.join("config/config.toml"), "[update]\ncheck = false\n").unwrap();
    let mut b = daemon_relay(&w, &[]);
    assert_eq!(b.request(&json!({"id": "p", "type": "ping"}))["ok"], true);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!w.releases.listed.load(Ordering::SeqCst), "checked although check = false");
    let st = b.request(&json!({"id": "st", "type": "status"}));
    assert!(st["result"]["update"].is_null(), "{st}");
}
