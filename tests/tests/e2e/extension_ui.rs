//! The example extension's chat page in real headless browsers, driven the
//! way a person would use it (type, send, cancel, read the panels): Chromium
//! over CDP, Firefox ESR over WebDriver BiDi (a temporary add-on). The host
//! is installed with `bitnet-host install` into a fake home and relays to
//! the per-user daemon, so both browsers share one daemon and one model.
//!
//! Needs Debian's chromium and firefox-esr (.ci/run installs them; under CI
//! a missing browser fails, elsewhere the test is skipped with a note).
//! A screenshot of the Chromium page is written to
//! target/browser-artifacts/chromium-chat.png.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitnet_host_tests::devtools::{Bidi, Cdp};
use serde_json::{json, Value};

use crate::server::fixture_model;
use crate::{host_bin, standin_bin};

const CHROMIUM_ID: &str = "ajfafeeehiplopkdafabhmgnehgdopcn";
const GECKO_ID: &str = "bitnet-example@bitnet-host.org";
/// The moz-extension:// host Firefox gives the example (set in prefs).
const GECKO_UUID: &str = "5c3b3c1e-4b7a-4f0e-9a51-0b17e7000001";

fn tool(paths: &[&str], package: &str) -> Option<PathBuf> {
    let skip = std::env::var("BITNET_SKIP_BROWSERS").is_ok_and(|v| v == "1");
    match paths.iter().map(PathBuf::from).find(|p| p.exists()) {
        Some(p) if !skip => Some(p),
        _ if skip || std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: needs {package} (apt-get install {package}; .ci/run does this)");
            None
        }
        _ => panic!("Debian's {package} is not installed (.ci/run installs it)"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A fake home with the host installed for Chromium and Firefox, the
/// example extension, and the environment every process there gets.
struct Home {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Home {
    fn new(install: bool, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), h.display().to_string()),
            ("XDG_CONFIG_HOME".into(), h.join(".config").display().to_string()),
            ("XDG_CACHE_HOME".into(), h.join(".cache").display().to_string()),
            ("BITNET_HOST_HOME".into(), h.join("bitnet").display().to_string()),
            ("BITNET_HOST_DAEMON".into(), "1".into()),
            ("BITNET_DAEMON_IDLE_MS".into(), "3000".into()),
            ("MOZ_HEADLESS".into(), "1".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let home = Self { dir, env };
        if install {
            let o = home
                .cmd(host_bin())
                .args(["install", "--browser", "chromium,firefox", "--extension-id", CHROMIUM_ID])
                .args(["--extension-id", GECKO_ID])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/extension"), &home.ext());
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ext(&self) -> PathBuf {
        self.path().join("extension")
    }

    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_remove("BITNET_HOST_HARDWARE");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// A browser process killed (with its children) when dropped.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium(home: &Home, exe: &Path) -> (Browser, Cdp) {
    let user_data = home.path().join(".config/chromium");
    let child = home
        .cmd(exe)
        .args(bitnet_host_tests::browser::CHROMIUM_HEADLESS)
        .args(["--remote-debugging-port=0", "--window-size=900,700"])
        .arg(format!("--user-data-dir={}", user_data.display()))
        .arg(format!("--load-extension={}", home.ext().display()))
        .arg(format!("--disable-extensions-except={}", home.ext().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = Browser(child);
    let cdp = Cdp::connect(&user_data);
    (b, cdp)
}

fn firefox(home: &Home, exe: &Path) -> (Browser, Bidi) {
    let profile = home.path().join("ff-profile");
    std::fs::create_dir_all(&profile).unwrap();
    // No background traffic (the machine has no internet), a fixed
    // moz-extension:// host for the example.
    let prefs = [
        ("app.update.enabled", "false".to_string()),
        ("app.normandy.enabled", "false".into()),
        ("browser.shell.checkDefaultBrowser", "false".into()),
        ("datareporting.policy.dataSubmissionEnabled", "false".into()),
        ("toolkit.telemetry.enabled", "false".into()),
        ("network.captive-portal-service.enabled", "false".into()),
        ("network.connectivity-service.enabled", "false".into()),
        ("browser.safebrowsing.malware.enabled", "false".into()),
        ("browser.safebrowsing.phishing.enabled", "false".into()),
        ("extensions.update.enabled", "false".into()),
        ("extensions.getAddons.cache.enabled", "false".into()),
        ("messaging-system.rsexperimentloader.enabled", "false".into()),
        ("services.settings.server", "\"http://127.0.0.1:9/\"".into()),
        ("browser.newtabpage.enabled", "false".into()),
        ("extensions.webextensions.uuids", serde_json::to_string(&json!({GECKO_ID: GECKO_UUID}).to_string()).unwrap()),
    ];
    let user_js: String = prefs.iter().map(|(k, v)| format!("user_pref(\"{k}\", {v});\n")).collect();
    std::fs::write(profile.join("user.js"), user_js).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = home
        .cmd(exe)
        .args(["--headless", "--no-remote", "--profile"])
        .arg(&profile)
        .args(["--remote-debugging-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = Browser(child);
    let mut bidi = Bidi::connect(port);
    assert_eq!(bidi.install_extension(&home.ext()), GECKO_ID);
    (b, bidi)
}

/// The page's visible state, as JSON text.
/// "null" while the page is still loading.
const STATE: &str = r##"(() => { try { return JSON.stringify({
  ready: document.body.dataset.ready === "1",
  host: document.getElementById("st-host").textContent,
  hardware: document.getElementById("st-hardware").textContent,
  backend: document.getElementById("st-backend").textContent,
  model: document.getElementById("st-model").textContent,
  speed: document.getElementById("st-speed").textContent,
  turns: [...document.querySelectorAll("#log .turn")].map(d => d.textContent),
  error: document.getElementById("error").hidden ? null : document.getElementById("error").textContent,
  hint: document.getElementById("hint").hidden ? null : document.getElementById("hint").textContent,
  sending: document.getElementById("send").disabled,
  options: document.getElementById("model").options.length,
  offer: document.getElementById("offer").hidden ? null : document.getElementById("offer").textContent,
  input: document.getElementById("input").value,
  log_scroll_width: document.getElementById("log").scrollWidth,
  log_client_width: document.getElementById("log").clientWidth,
}) } catch (e) { return "null" } })()"##;

fn send_js(text: &str) -> String {
    format!(
        r#"(() => {{ document.getElementById("input").value = {}; document.getElementById("send").click(); return "sent"; }})()"#,
        json!(text)
    )
}

const CANCEL_JS: &str = r#"(() => { document.getElementById("cancel").click(); return "clicked"; })()"#;

/// A page driven the same way in either browser.
trait Page {
    fn js(&mut self, expr: &str) -> Value;
    fn state(&mut self) -> Value {
        let v = self.js(STATE);
        serde_json::from_str(v.as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }
    /// Waits for the page's state to satisfy `f`; a timeout shows the last state.
    fn until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let s = self.state();
            if f(&s) {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for {what}; the page: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// Sends `text` and waits for the answer to finish streaming.
    fn chat(&mut self, text: &str) -> Value {
        let before = self.state()["turns"].as_array().map(Vec::len).unwrap_or(0);
        self.js(&send_js(text));
        self.until("the answer", |s| s["turns"].as_array().map(Vec::len) == Some(before + 2) && s["sending"] == false)
    }
}

struct ChromiumPage<'a>(&'a mut Cdp, String);
impl Page for ChromiumPage<'_> {
    fn js(&mut self, expr: &str) -> Value {
        self.0.eval(&self.1, expr)
    }
}

struct FirefoxPage<'a>(&'a mut Bidi, String);
impl Page for FirefoxPage<'_> {
    fn js(&mut self, expr: &str) -> Value {
        self.0.eval(&self.1, expr)
    }
}

fn status_of(home: &Home) -> Value {
    // The daemon's own view, from a relay of the installed binary (another
    // build would make the daemon retire in its favour).
    let installed = home.path().join("bitnet/data/bin").join(host_bin().file_name().unwrap());
    let mut env: Vec<(&str, &str)> = home.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.retain(|(k, _)| *k != "BITNET_HOST_HOME" && *k != "HOME");
    let mut b = bitnet_host_tests::browser::FakeBrowser::spawn_shared(
        &installed,
        &bitnet_host_tests::browser::chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &env,
        &home.path().join("bitnet"),
    );
    b.request(&json!({"id": "s", "type": "status"}))["result"].clone()
}

#[test]
fn chromium_and_firefox_share_one_daemon_and_model_and_chat_from_the_example_page() {
    let Some(chromium_exe) = tool(&["/usr/bin/chromium"], "chromium") else { return };
    let Some(firefox_exe) = tool(&["/usr/bin/firefox-esr"], "firefox-esr") else { return };
    let home = Home::new(true, &[]);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let query = format!("chat.html?model={}", model.display());

    let (_c, mut cdp) = chromium(&home, &chromium_exe);
    let session = cdp.open_page(&format!("chrome-extension://{CHROMIUM_ID}/{query}"));
    let mut chrome = ChromiumPage(&mut cdp, session.clone());
    let s = chrome.until("the page to load the model", |s| s["ready"] == true);
    assert_eq!(s["options"], 1, "the model picker lists the loaded model: {s}");
    assert!(s["host"].as_str().unwrap().starts_with("bitnet-host "), "{s}");
    assert!(s["backend"].as_str().unwrap().starts_with("builtin (pid "), "{s}");
    assert!(s["model"].as_str().unwrap().starts_with("bitnet-b1.58-i2_s.gguf (i2_s)"), "{s}");
    assert!(s["hardware"].as_str().unwrap().contains("GiB"), "{s}");
    let s = chrome.chat("Hello");
    let answer = s["turns"][1].as_str().unwrap();
    assert!(!answer.is_empty(), "{s}");
    assert!(s["speed"].as_str().unwrap().contains("tokens/s"), "{s}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chromium-chat.png"), cdp.screenshot(&session)).unwrap();

    // Firefox does not let automation navigate to an extension page: the
    // extension opens it (config.json `open`).
    // Its background also runs the connectNative -> first token round trip
    // and reports it here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let report_url = format!("http://127.0.0.1:{}/report", listener.local_addr().unwrap().port());
    let config = json!({"open": query, "report": report_url, "model": model});
    std::fs::write(home.ext().join("config.json"), config.to_string()).unwrap();
    let (_f, mut bidi) = firefox(&home, &firefox_exe);
    let report =
        crate::browser::receive_report(listener, Duration::from_secs(60)).expect("Firefox's background reported");
    assert_eq!(report["ok"], true, "{report}");
    let ms = report["connect_to_first_token_ms"].as_f64().unwrap();
    // A figure for the notes, not an assertion.
    eprintln!(
        "firefox: connectNative -> first token {ms:.0} ms (through the daemon, model already loaded by Chromium)"
    );
    let ctx = bidi.find_page(&format!("moz-extension://{GECKO_UUID}/chat.html"));
    let mut fox = FirefoxPage(&mut bidi, ctx);
    let s = fox.until("the Firefox page to be ready", |s| s["ready"] == true);
    assert!(s["backend"].as_str().unwrap().starts_with("builtin (pid "), "{s}");
    let s2 = fox.chat("Hello");
    // The same greedy answer from the same loaded model.
    assert_eq!(s2["turns"][1].as_str().unwrap(), answer, "{s2}");

    // One daemon, one server, both browsers on it.
    let st = status_of(&home);
    let browsers: Vec<&str> =
        st["connections"].as_array().unwrap().iter().filter_map(|c| c["browser"].as_str()).collect();
    assert!(browsers.contains(&"chromium") && browsers.contains(&"firefox"), "{st}");
    let chrome_backend = ChromiumPage(&mut cdp, session).state()["backend"].clone();
    assert_eq!(chrome_backend, s["backend"], "both pages show the same server process");
    assert_eq!(st["server"]["model"]["path"], model.to_str().unwrap(), "{st}");
}

#[test]
fn the_example_page_cancels_a_stream_and_recovers_from_a_crash() {
    let Some(chromium_exe) = tool(&["/usr/bin/chromium"], "chromium") else { return };
    // The stand-in as the bitnet.cpp build, on a recorded AVX2 machine.
    let (standin_home, report) = bitnet_host_tests::standin::host_home(host_bin(), standin_bin(), &[]);
    let report = report.display().to_string();
    let home = Home::new(true, &[("BITNET_HOST_HARDWARE", &report)]);
    copy_dir(&standin_home.path().join("data/binaries/cpu/linux"), &home.path().join("bitnet/data/binaries/cpu/linux"));
    let mut home = home;
    home.env.push(("BITNET_HOST_HARDWARE".into(), report.clone()));
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let (_c, mut cdp) = chromium(&home, &chromium_exe);
    let session = cdp.open_page(&format!("chrome-extension://{CHROMIUM_ID}/chat.html?model={}", model.display()));
    let mut page = ChromiumPage(&mut cdp, session);
    let s = page.until("the page to load the model", |s| s["ready"] == true);
    assert!(s["backend"].as_str().unwrap().starts_with("bitnet-cpu-linux-x86_64"), "{s}");

    // Cancel a long stream once it has started.
    page.js(&send_js("[[tokens 500]] [[slow 20]] a long one"));
    page.until("the first tokens", |s| s["turns"][1].as_str().is_some_and(|t| !t.is_empty()));
    page.js(CANCEL_JS);
    let s = page.until("the cancel", |s| s["sending"] == false);
    let text = s["turns"][1].as_str().unwrap();
    assert!(text.ends_with("[cancelled]"), "{s}");
    assert!(s["error"].is_null(), "{s}");

    // The server dies mid-stream: an error in the page, and the next message works.
    page.js(&send_js("[[tokens 50]] [[crash]] boom"));
    let s = page.until("the crash to show", |s| s["sending"] == false);
    let error = s["error"].as_str().unwrap_or("");
    assert!(error.starts_with("The model server stopped unexpectedly") && error.ends_with("[backend_crashed]"), "{s}");
    let s = page.chat("[[tokens 5]] again");
    let last = s["turns"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    assert!(!last.is_empty() && s["error"].is_null(), "{s}");
}

#[test]
fn the_example_page_says_how_to_install_when_the_host_is_missing() {
    let Some(chromium_exe) = tool(&["/usr/bin/chromium"], "chromium") else { return };
    let home = Home::new(false, &[]);
    let (_c, mut cdp) = chromium(&home, &chromium_exe);
    let session = cdp.open_page(&format!("chrome-extension://{CHROMIUM_ID}/chat.html"));
    let mut page = ChromiumPage(&mut cdp, session);
    let s = page.until("the page to give up", |s| s["ready"] == true);
    let hint = s["hint"].as_str().expect("the install hint is shown");
    assert!(hint.contains(&format!("bitnet-host install --extension-id {CHROMIUM_ID}")), "{s}");
    assert_eq!(s["host"], "not installed", "{s}");
}

fn stop_daemon(home: &Home) {
    let o = home.cmd(host_bin()).arg("stop").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("stopped daemon "), "{o:?}");
}

#[test]
fn the_example_page_loads_a_model_by_itself_for_the_first_message_in_both_browsers() {
    let Some(chromium_exe) = tool(&["/usr/bin/chromium"], "chromium") else { return };
    let Some(firefox_exe) = tool(&["/usr/bin/firefox-esr"], "firefox-esr") else { return };
    let home = Home::new(true, &[]);
    // A model in the models folder; nothing loaded, no ?model= in the URL,
    // Load never pressed.
    let dir = home.path().join("bitnet/data/models/bitnet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model("bitnet-b1.58-i2_s.gguf"), dir.join("tiny.gguf")).unwrap();

    let (_c, mut cdp) = chromium(&home, &chromium_exe);
    let session = cdp.open_page(&format!("chrome-extension://{CHROMIUM_ID}/chat.html"));
    let mut chrome = ChromiumPage(&mut cdp, session.clone());
    let s = chrome.until("the page", |s| s["ready"] == true);
    assert_eq!(s["model"], "none", "{s}");
    assert!(s["offer"].is_null(), "a model is here: no download offer: {s}");
    let s = chrome.chat("Hello");
    let answer = s["turns"][1].as_str().unwrap().to_string();
    assert!(!answer.is_empty() && !answer.starts_with("loading"), "{s}");
    assert!(s["error"].is_null(), "{s}");
    assert!(s["backend"].as_str().unwrap().starts_with("builtin (pid "), "{s}");
    assert!(s["model"].as_str().unwrap().starts_with("bitnet/tiny.gguf (i2_s)"), "{s}");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("chromium-first-message.png"), cdp.screenshot(&session)).unwrap();

    // A long word (a URL, a hash) wraps instead of widening the page. (The
    // fixture's context is 256 tokens: the page may leave the first
    // exchange out to fit, and add its note.)
    let mut chrome = ChromiumPage(&mut cdp, session.clone());
    chrome.js(&send_js(&"x".repeat(120)));
    let s = chrome.until("the long word's answer", |s| {
        let turns = s["turns"].as_array().cloned().unwrap_or_default();
        s["sending"] == false && turns.len() >= 4 && turns.last().and_then(Value::as_str).is_some_and(|t| !t.is_empty())
    });
    assert!(s["error"].is_null(), "{s}");
    assert!(s["log_scroll_width"].as_u64() <= s["log_client_width"].as_u64(), "{s}");

    // The daemon goes (stop, an update, its idle exit): the next message
    // starts a new one and loads the model used last, by itself.
    stop_daemon(&home);
    chrome.js(&send_js("Hello again"));
    let s = chrome.until("the answer after the restart", |s| {
        let turns = s["turns"].as_array().cloned().unwrap_or_default();
        let asked = turns.len() >= 2 && turns[turns.len() - 2] == "Hello again";
        s["sending"] == false && asked && turns.last().and_then(Value::as_str).is_some_and(|t| !t.is_empty())
    });
    assert!(s["error"].is_null(), "{s}");
    assert!(s["model"].as_str().unwrap().starts_with("bitnet/tiny.gguf"), "{s}");
    // The conversation no longer fits the fixture's 256-token context: the
    // page left the oldest exchange out, and said so.
    let turns: Vec<&str> = s["turns"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(turns.iter().any(|t| t.contains("no longer fit the model's context")), "{s}");
    assert_eq!(turns[turns.len() - 2], "Hello again", "{s}");

    // Firefox, on a fresh daemon and with nothing remembered: the host's
    // default (the folder's one model), the same greedy answer.
    stop_daemon(&home);
    std::fs::write(home.ext().join("config.json"), json!({"open": "chat.html"}).to_string()).unwrap();
    let (_f, mut bidi) = firefox(&home, &firefox_exe);
    let ctx = bidi.find_page(&format!("moz-extension://{GECKO_UUID}/chat.html"));
    let mut fox = FirefoxPage(&mut bidi, ctx);
    let s = fox.until("the Firefox page", |s| s["ready"] == true);
    assert_eq!(s["model"], "none", "{s}");
    let s = fox.chat("Hello");
    assert!(s["error"].is_null(), "{s}");
    assert_eq!(s["turns"][1].as_str().unwrap(), answer, "{s}");
}

#[test]
fn with_no_model_the_example_page_offers_the_catalog_model_and_downloads_it() {
    let Some(chromium_exe) = tool(&["/usr/bin/chromium"], "chromium") else { return };
    // Hugging Face on 127.0.0.1, serving a small model as the catalog's file.
    let files = std::sync::Arc::new(bitnet_host_tests::files::ModelFiles::default());
    files.add("ggml-model-i2_s.gguf", std::fs::read(fixture_model("bitnet-b1.58-i2_s.gguf")).unwrap());
    let base = bitnet_host_tests::files::start_model_server(files);
    let home = Home::new(true, &[("BITNET_MODELS_BASE", &base)]);
    let (_c, mut cdp) = chromium(&home, &chromium_exe);
    let session = cdp.open_page(&format!("chrome-extension://{CHROMIUM_ID}/chat.html"));
    let mut page = ChromiumPage(&mut cdp, session);
    let s = page.until("the page", |s| s["ready"] == true);
    let offer = s["offer"].as_str().expect("the download offer is shown");
    assert!(offer.contains("BitNet b1.58 2B4T") && offer.contains("bitnet-2b"), "{s}");
    // Sending first: an error that says what to do; no empty turn left; the
    // message is back in the box.
    page.js(&send_js("Hello"));
    let s = page.until("the refusal", |s| s["error"].is_string() && s["sending"] == false);
    assert!(s["error"].as_str().unwrap().contains("download one above"), "{s}");
    assert_eq!(s["turns"], json!([]), "{s}");
    assert_eq!(s["input"], "Hello", "{s}");
    // Download: progress, then the model is loaded and the offer gone.
    page.js(r#"(() => { document.getElementById("pull").click(); return "clicked"; })()"#);
    let s = page.until("the download and load", |s| s["offer"].is_null() && s["model"] != "none");
    assert!(s["model"].as_str().unwrap().starts_with("bitnet-2b/ggml-model-i2_s.gguf"), "{s}");
    assert!(home.path().join("bitnet/data/models/bitnet-2b/ggml-model-i2_s.gguf").is_file());
    let s = page.chat("Hello");
    assert!(s["error"].is_null() && !s["turns"][1].as_str().unwrap().is_empty(), "{s}");
}
