//! `install`, `uninstall` and `doctor`: the thin edge over
//! bitnet-installer's table, transaction and checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bitnet_installer::install::{install as do_install, uninstall as do_uninstall, InstallOptions};
use bitnet_installer::locations::{target, Browser, Os, Roots, Scope, Target, ALL_BROWSERS};
use bitnet_installer::{DEFAULT_NAME, TABAGENT_EXTENSION_ID, TABAGENT_NAME};
use serde_json::{json, Value};

use crate::cli::out;
use crate::dirs::HostDirs;
use crate::protocol::frame::{push_frame, BlockingFrameReader, Inbound, MAX_OUTBOUND};

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Browsers to configure: all (those found here), or a list of chrome, chromium, edge,
    /// brave, vivaldi, opera, firefox, librewolf, waterfox
    #[arg(long, value_delimiter = ',', default_value = "all")]
    browser: Vec<String>,
    /// user (your profile only) or system (every user; needs admin rights)
    #[arg(long, default_value = "user")]
    scope: String,
    /// An extension allowed to connect: a Chromium id (32 letters a-p) or a Firefox add-on id
    #[arg(long = "extension-id")]
    extension_ids: Vec<String>,
    /// The host name extensions pass to connectNative
    #[arg(long)]
    name: Option<String>,
    /// Register as TabAgent's host (com.tabagent.host, TabAgent's extension id): a drop-in
    #[arg(long)]
    tabagent: bool,
    /// Register this binary where it is instead of copying it to the data folder
    #[arg(long)]
    in_place: bool,
    /// Show what would be written, write nothing
    #[arg(long)]
    dry_run: bool,
    /// Print what was written (or would be) as JSON
    #[arg(long)]
    json: bool,
}

fn roots(dirs: &HostDirs) -> anyhow::Result<Roots> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf()))
        .context("no home directory")?;
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or(home.join(".config"));
    Ok(Roots { home, config_home, manifest_dir: dirs.data.join("manifests") })
}

fn record_path(dirs: &HostDirs) -> PathBuf {
    dirs.state.join("install-record.json")
}

pub fn install(a: InstallArgs) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().context("no home directory for the host's folders")?;
    let browsers: Vec<Browser> = if a.browser.iter().any(|b| b == "all") {
        Vec::new()
    } else {
        a.browser
            .iter()
            .map(|b| Browser::parse(b).with_context(|| format!("unknown browser `{b}`")))
            .collect::<anyhow::Result<_>>()?
    };
    let scope = match a.scope.as_str() {
        "user" => Scope::User,
        "system" => Scope::System,
        other => anyhow::bail!("--scope must be user or system, not `{other}`"),
    };
    let mut ids = a.extension_ids.clone();
    if a.tabagent {
        ids.push(TABAGENT_EXTENSION_ID.into());
    }
    if ids.is_empty() {
        anyhow::bail!("name the extension that will connect: --extension-id <id> (or --tabagent)");
    }
    let is_chromium = |id: &str| id.len() == 32 && id.bytes().all(|b| (b'a'..=b'p').contains(&b));
    let (chromium_ids, firefox_ids): (Vec<String>, Vec<String>) = ids.into_iter().partition(|i| is_chromium(i));
    let name = a.name.clone().unwrap_or_else(|| if a.tabagent { TABAGENT_NAME } else { DEFAULT_NAME }.to_string());
    let opts = InstallOptions {
        os: Os::current(),
        browsers,
        scope,
        name,
        chromium_ids,
        firefox_ids,
        host_source: std::env::current_exe()?,
        in_place: a.in_place,
        roots: roots(&dirs)?,
        bin_dir: dirs.data.join("bin"),
        record_path: record_path(&dirs),
        dry_run: a.dry_run,
        fail_after: std::env::var("BITNET_INSTALL_FAIL_AFTER").ok().and_then(|v| v.parse().ok()),
    };
    let report = do_install(&opts)?;
    if a.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
        return Ok(());
    }
    let mut text = format!(
        "{}host: {}\n",
        if report.dry_run { "(dry run: nothing written)\n" } else { "" },
        report.host_path.display()
    );
    for c in &report.configured {
        let where_ = match &c.target {
            Target::File { path } => path.display().to_string(),
            Target::Registry { hive, key, .. } => format!(r"{hive}\{key}"),
        };
        let change = format!("{:?}", c.change).to_lowercase();
        // A dry run changes nothing: say what it would do.
        let change = if report.dry_run { format!("would be {change}") } else { change };
        text.push_str(&format!("  {:<10} {:<18} {where_}\n", c.browser.name(), change));
    }
    for s in &report.skipped {
        text.push_str(&format!("  {:<10} {:<18} {}\n", s.browser.name(), "skipped", s.reason));
    }
    out(&text);
    Ok(())
}

pub fn uninstall(json: bool) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().context("no home directory for the host's folders")?;
    let r = do_uninstall(&record_path(&dirs), &dirs.data.join("bin"));
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&r)?));
    } else if r.removed.is_empty() && r.registry_removed.is_empty() {
        out("nothing to remove: no install record\n");
    } else {
        let mut t = String::new();
        for f in &r.removed {
            t.push_str(&format!("removed {}\n", f.display()));
        }
        for k in &r.registry_removed {
            t.push_str(&format!("removed {k}\n"));
        }
        for f in &r.refused {
            t.push_str(&format!("left {} alone: install does not write it\n", f.display()));
        }
        out(&t);
    }
    Ok(())
}

/// Start `host` as Chromium would and ask `hello`; the reply or why not.
fn handshake(host: &Path) -> Result<Value, String> {
    let mut child = Command::new(host)
        .arg(format!("chrome-extension://{TABAGENT_EXTENSION_ID}/"))
        // The handshake checks the registration, in-process: it must not
        // leave a daemon behind.
        .env("BITNET_HOST_DAEMON", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", host.display()))?;
    let mut frame = Vec::new();
    push_frame(&mut frame, json!({"id": "doctor", "type": "hello"}).to_string().as_bytes());
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(&frame).map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = match BlockingFrameReader::new(stdout, MAX_OUTBOUND).read_frame() {
            Ok(Inbound::Frame(body)) => serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("no reply frame: {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| Err("no answer within 10 s".into()));
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    r
}

pub fn doctor(json_out: bool) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().context("no home directory for the host's folders")?;
    let _guard = crate::logging::init(Some(&dirs), "warn");
    let roots = roots(&dirs)?;
    let mut problems: Vec<Value> = Vec::new();
    let mut manifests: Vec<Value> = Vec::new();
    for name in [DEFAULT_NAME, TABAGENT_NAME] {
        for b in ALL_BROWSERS {
            let Some(t) = target(Os::current(), b, Scope::User, &roots, name) else { continue };
            let path = match &t {
                Target::File { path } | Target::Registry { manifest: path, .. } => path.clone(),
            };
            if !path.exists() {
                continue;
            }
            let found = bitnet_installer::check::check_manifest(&path, b.family());
            let mut entry = json!({"browser": b.name(), "name": name, "manifest": path, "problems": found});
            if found.is_empty() {
                let host = bitnet_safefs::read(&path, 1 << 20)
                    .ok()
                    .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
                    .and_then(|v| v["path"].as_str().map(PathBuf::from));
                if let Some(host) = host {
                    match handshake(&host) {
                        Ok(v) if v["ok"] == true => entry["handshake"] = json!("ok"),
                        Ok(v) => problems.push(json!({"problem": format!("{}: the host answered hello with an error: {}", path.display(), v["error"]["message"].as_str().unwrap_or("?")), "fix": "run `bitnet-host install` again"})),
                        Err(e) => problems.push(json!({"problem": format!("{}: the host does not answer: {e}", path.display()), "fix": "run `bitnet-host install` again"})),
                    }
                }
            }
            for p in &found {
                problems.push(
                    json!({"problem": format!("{} ({}): {}", path.display(), b.name(), p.problem), "fix": p.fix}),
                );
            }
            manifests.push(entry);
        }
    }
    if manifests.is_empty() {
        problems.push(json!({"problem": "no browser has a manifest for this host", "fix": "bitnet-host install --extension-id <your extension id>"}));
    }
    let (config, config_error) = crate::backend::load_config(Some(&dirs));
    if let Some(e) = &config_error {
        problems.push(
            json!({"problem": e, "fix": format!("fix or remove {}", crate::backend::config_path(&dirs).display())}),
        );
    }
    let report = crate::hardware::prober(Some(&dirs)).report(false);
    let (hardware, selection) = match &report {
        Ok(r) => {
            let sel = crate::backend::selection(Some(&dirs), &config, r, None);
            (
                json!({"os": r.os.family, "cpu": r.cpu.brand, "features": r.cpu.features.len(), "feature_list": r.cpu.features, "memory_bytes": r.memory.total_bytes}),
                json!({"candidates": sel.candidates.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                       "skipped": sel.skipped.iter().map(|s| format!("{}: {}", s.id, s.reason)).collect::<Vec<_>>()}),
            )
        }
        Err(e) => {
            problems.push(
                json!({"problem": format!("hardware probe failed: {e}"), "fix": "bitnet-host hardware --refresh"}),
            );
            (Value::Null, Value::Null)
        }
    };
    let models: Vec<Value> = crate::backend::scan_models(&dirs.data.join("models"))
        .into_iter()
        .map(|p| {
            let fmt = bitnet_ternary::Gguf::open(&p).map(|g| g.weight_format()).map_err(|e| e.to_string());
            json!({"path": p, "format": fmt.as_ref().ok().cloned().flatten(), "error": fmt.err()})
        })
        .collect();
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let free = disks
        .list()
        .iter()
        .filter(|d| dirs.data.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space());
    if free.is_some_and(|f| f < 2 << 30) {
        problems.push(json!({"problem": format!("only {} MiB free where models live", free.unwrap_or(0) >> 20), "fix": "free disk space before downloading a model"}));
    }
    let errors = last_errors(&dirs.logs(), 5);
    let daemon = daemon_check(&dirs);
    let doc = json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "manifests": manifests,
        "hardware": hardware,
        "selection": selection,
        "models": models,
        "disk_free_bytes": free,
        "daemon": daemon,
        "recent_errors": errors,
    });
    if json_out {
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?));
    } else {
        let mut t = String::new();
        for m in &manifests {
            let status = if m["problems"].as_array().is_some_and(|p| p.is_empty()) { "ok" } else { "PROBLEM" };
            let answers = if m["handshake"] == "ok" { ", the host answers" } else { "" };
            t.push_str(&format!(
                "manifest  {:<10} {status}{answers}: {}\n",
                m["browser"].as_str().unwrap_or(""),
                m["manifest"].as_str().unwrap_or("")
            ));
        }
        t.push_str(&format!("hardware  {}\n", hardware_line(&doc["hardware"])));
        let candidates: Vec<&str> =
            doc["selection"]["candidates"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        t.push_str(&format!(
            "backends  {}\n",
            if candidates.is_empty() {
                "none can run here".to_string()
            } else {
                candidates.join(", ") + " (best first)"
            }
        ));
        t.push_str(&format!("daemon    {}\n", daemon_line(&doc["daemon"])));
        let names: Vec<String> = models
            .iter()
            .map(|m| {
                let path = Path::new(m["path"].as_str().unwrap_or(""));
                crate::backend::model_name(&dirs.data.join("models"), path)
            })
            .collect();
        t.push_str(&format!(
            "models    {}\n",
            if names.is_empty() {
                format!("none yet (bitnet-host pull {})", crate::catalog::CATALOG[0].name)
            } else {
                format!("{}: {}", names.len(), names.join(", "))
            }
        ));
        if let Some(f) = free {
            t.push_str(&format!("disk      {:.1} GiB free where models live\n", f as f64 / (1u64 << 30) as f64));
        }
        for e in &errors {
            t.push_str(&format!("log error {e}\n"));
        }
        for p in doc["problems"].as_array().into_iter().flatten() {
            t.push_str(&format!(
                "PROBLEM   {}\n  fix:    {}\n",
                p["problem"].as_str().unwrap_or(""),
                p["fix"].as_str().unwrap_or("")
            ));
        }
        if doc["ok"] == true {
            t.push_str("no problems found\n");
        }
        out(&t);
    }
    if doc["ok"] != true {
        std::process::exit(1);
    }
    Ok(())
}

/// Whether this user's daemon runs, and what it serves (never starts one).
fn daemon_check(dirs: &HostDirs) -> Value {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return Value::Null };
    let reply = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), crate::daemon::control_request(dirs, "status")).await
    });
    match reply {
        Ok(Some(r)) => json!({
            "running": true,
            "pid": r["result"]["pid"],
            "version": r["result"]["version"],
            "model": r["result"]["server"].get("name").or(r["result"]["server"]["model"].get("path")),
        }),
        Ok(None) => json!({"running": false}),
        Err(_) => json!({"running": null, "error": "the daemon did not answer within 5 s"}),
    }
}

fn daemon_line(d: &Value) -> String {
    match d["running"].as_bool() {
        Some(true) => format!(
            "running, pid {}, version {}, {}",
            d["pid"],
            d["version"].as_str().unwrap_or("?"),
            match d["model"].as_str() {
                Some(m) => format!("serving {m}"),
                None => "no model loaded".into(),
            }
        ),
        Some(false) => "not running (the first browser connection starts it)".into(),
        None => d["error"].as_str().unwrap_or("unknown").into(),
    }
}

fn hardware_line(h: &Value) -> String {
    if h.is_null() {
        return "unknown (the probe failed)".into();
    }
    let features: Vec<&str> = h["feature_list"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    format!(
        "{} ({}), {:.1} GiB memory, {}",
        h["cpu"].as_str().unwrap_or("unknown CPU"),
        if features.is_empty() { "no SIMD features found".to_string() } else { features.join(" ") },
        h["memory_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64,
        h["os"].as_str().unwrap_or("?")
    )
}

/// The last `n` ERROR lines of the newest host log.
fn last_errors(dir: &Path, n: usize) -> Vec<String> {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("bitnet-host")))
        .max();
    let Some(p) = newest else { return Vec::new() };
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let errs: Vec<String> = text.lines().filter(|l| l.contains("ERROR")).map(String::from).collect();
    errs[errs.len().saturating_sub(n)..].to_vec()
}

/// `bitnet-host service install|uninstall|status`. Linux: a systemd user
/// unit, enabled with `systemctl --user` when systemd runs; Windows: a
/// logon task registered with `schtasks`; macOS: the launchd agent is
/// written and the command to load it printed.
pub fn service(action: &str) -> anyhow::Result<()> {
    use bitnet_installer::service;
    let dirs = HostDirs::resolve().context("no home directory for the host's folders")?;
    let roots = roots(&dirs)?;
    let os = Os::current();
    let path = service::location(os, &roots);
    // The service runs the installed copy (placed now if `install` has not
    // put one there), never whatever build tree this command ran from.
    let exec = || -> anyhow::Result<PathBuf> {
        Ok(bitnet_installer::install::place_binary(
            &std::env::current_exe()?,
            &dirs.data.join("bin"),
            &record_path(&dirs),
        )?)
    };
    // The OS's service manager; None when there is none to ask. Tests (and
    // anyone) can keep the real one out of it.
    let manager = |program: &str, args: &[&str]| -> Option<bool> {
        if std::env::var("BITNET_SERVICE_MANAGER").is_ok_and(|v| v == "none") {
            return None;
        }
        which::which(program).ok()?;
        Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().ok().map(|s| s.success())
    };
    let systemctl = |args: &[&str]| -> Option<bool> {
        let args: Vec<&str> = std::iter::once("--user").chain(args.iter().copied()).collect();
        manager("systemctl", &args)
    };
    let task = service::WINDOWS_TASK_NAME;
    match action {
        "install" => {
            let exec = exec()?;
            let text = match os {
                Os::Linux => service::systemd_unit(&exec)?,
                Os::Macos => service::launchd_plist(&exec)?,
                Os::Windows => service::windows_task(&exec, &std::env::var("USERNAME").unwrap_or_default())?,
            };
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            // Task Scheduler reads the XML it declares: UTF-16.
            let bytes = if os == Os::Windows { service::utf16le_with_bom(&text) } else { text.into_bytes() };
            std::fs::write(&path, bytes)?;
            let mut msg = format!("wrote {}\n", path.display());
            match os {
                Os::Linux => match (systemctl(&["daemon-reload"]), systemctl(&["enable", "--now", service::SYSTEMD_UNIT])) {
                    (Some(true), Some(true)) => msg.push_str("enabled and started with systemctl --user\n"),
                    _ => msg.push_str(&format!("systemd is not running for this user: start it with `systemctl --user enable --now {}` when it is\n", service::SYSTEMD_UNIT)),
                },
                Os::Macos => msg.push_str(&format!("load it: launchctl bootstrap gui/$(id -u) '{}'\n", path.display())),
                Os::Windows => {
                    let xml = path.to_string_lossy();
                    match manager("schtasks", &["/Create", "/TN", task, "/XML", &xml, "/F"]) {
                        Some(true) => msg.push_str(&format!("registered the logon task \"{task}\"\n")),
                        _ => msg.push_str(&format!("register it: schtasks /Create /TN \"{task}\" /XML \"{xml}\"\n")),
                    }
                }
            }
            out(&msg);
        }
        "uninstall" => {
            match os {
                Os::Linux => {
                    let _ = systemctl(&["disable", "--now", service::SYSTEMD_UNIT]);
                }
                Os::Windows => {
                    if manager("schtasks", &["/Delete", "/TN", task, "/F"]) == Some(true) {
                        out(&format!("removed the logon task \"{task}\"\n"));
                    }
                }
                Os::Macos => {}
            }
            match std::fs::remove_file(&path) {
                Ok(()) => out(&format!("removed {}\n", path.display())),
                Err(_) => out("no service registration to remove\n"),
            }
        }
        "status" => {
            let active =
                if os == Os::Linux { systemctl(&["is-active", "--quiet", service::SYSTEMD_UNIT]) } else { None };
            out(&format!(
                "registration: {}\nrunning: {}\n",
                if path.is_file() { path.display().to_string() } else { "none".into() },
                match active {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "unknown (no service manager to ask)",
                }
            ));
        }
        other => anyhow::bail!("`service {other}`: use install, uninstall or status"),
    }
    Ok(())
}
