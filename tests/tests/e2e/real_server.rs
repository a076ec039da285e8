//! Real bitnet.cpp `llama-server` builds, when environment variables name
//! them (scripts/build-bitnet-server.sh makes them; RELEASING.md, "A server
//! build by hand", says how). CI skips these with a message: building
//! BitNet takes minutes and its source is not in this repository.
//!
//! - `BITNET_REAL_SERVER`: a CPU build, installed as the bundled
//!   `cpu/linux/llama-server`. `select` picks it, the supervisor starts it,
//!   the legacy `generate` and a streamed chat go through the proxy to it,
//!   its greedy answer on a fixture equals the independent references, and
//!   a model it cannot load falls back to the built-in engine with the
//!   server's own reason.
//! - `BITNET_REAL_VULKAN_SERVER`: a Vulkan build, forced by the config: it
//!   answers on whatever Vulkan device there is (lavapipe here), or the
//!   host falls back from it with a classified failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bitnet_host_tests::browser::{chromium_args, FakeBrowser};
use bitnet_host_tests::standin::recorded_avx2_home;
use bitnet_ternary::writer::{random_model_as, write_atomic, Shape, TernaryFormat};
use serde_json::{json, Value};

use crate::host_bin;
use crate::server::fixture_model;

/// Real servers load in seconds; lavapipe compiles its shaders first.
const T: Duration = Duration::from_secs(180);

const CPU_FILE: &str = "cpu/linux/llama-server";
const VULKAN_FILE: &str = "gpu/linux/llama-server-vulkan";

fn real_build(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipped: {var} is not set (a llama-server from scripts/build-bitnet-server.sh)");
            None
        }
    }
}

/// A host with `server` installed at `file` in its binaries dir, `config`
/// as its config.toml, and the recorded AVX2 report.
struct Setup {
    home: tempfile::TempDir,
    report: String,
    installed: PathBuf,
}

impl Setup {
    fn new(server: &Path, file: &str, config: &str) -> Setup {
        let (home, report) = recorded_avx2_home(host_bin());
        let installed = home.path().join("data/binaries").join(file);
        std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
        std::fs::copy(server, &installed).unwrap();
        std::fs::create_dir_all(home.path().join("config")).unwrap();
        std::fs::write(home.path().join("config/config.toml"), config).unwrap();
        Setup { home, report: report.to_str().unwrap().into(), installed }
    }

    /// A small random model with the original BitNet graph (`bitnet`),
    /// which every bitnet.cpp build knows, in `format`.
    fn tiny_model(&self, format: TernaryFormat) -> PathBuf {
        let path = self.home.path().join(format!("data/models/tiny-bitnet-{format:?}.gguf"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let shape = Shape { arch: "bitnet".into(), ..Shape::default_model() };
        write_atomic(&path, &random_model_as(&shape, 0xB17E7, format)).unwrap();
        path
    }

    fn explain(&self, model: &Path) -> String {
        let out = Command::new(host_bin())
            .args(["select", "--explain", "--model", model.to_str().unwrap()])
            .env("BITNET_HOST_HOME", self.home.path())
            .env("BITNET_HOST_HARDWARE", &self.report)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn host(self) -> (FakeBrowser, PathBuf) {
        let installed = self.installed.clone();
        let report = self.report.clone();
        let b = FakeBrowser::spawn_in_home(
            host_bin(),
            &chromium_args("abcdefghijklmnopabcdefghijklmnop"),
            &[("BITNET_HOST_HARDWARE", &report)],
            self.home,
        );
        (b, installed)
    }
}

fn load(b: &mut FakeBrowser, model: &Path) -> Value {
    b.send(&json!({"id": "load", "type": "load_model", "model": model}));
    b.collect("id", &json!("load"), T).1.value
}

/// The process `pid` runs the file at `path` (Linux: /proc/PID/exe).
fn runs(pid: &Value, path: &Path) -> bool {
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid.as_u64().unwrap())).unwrap();
    exe == path.canonicalize().unwrap()
}

/// A streamed chat: the deltas, in order, make the final text.
fn streamed_chat(b: &mut FakeBrowser, id: &str, text: &str) -> Value {
    b.send(&json!({"id": id, "type": "chat", "messages": [{"role": "user", "content": text}],
                   "temperature": 0, "max_tokens": 8}));
    let (events, last) = b.collect("id", &json!(id), T);
    let r = last.value;
    assert_eq!(r["ok"], true, "{r}");
    let deltas: String =
        events.iter().filter(|e| e["event"] == "delta").map(|e| e["text"].as_str().unwrap().to_string()).collect();
    assert!(events.iter().any(|e| e["event"] == "delta"), "{events:?}");
    assert_eq!(deltas, r["result"]["text"].as_str().unwrap(), "{r}");
    r
}

#[test]
fn a_real_cpu_build_is_selected_supervised_and_streams_legacy_generate_and_chat() {
    let Some(server) = real_build("BITNET_REAL_SERVER") else { return };
    let setup = Setup::new(&server, CPU_FILE, "");
    let model = setup.tiny_model(TernaryFormat::I2S);
    let text = setup.explain(&model);
    eprintln!("{text}");
    assert!(text.contains("1. bitnet-cpu-linux-x86_64"), "{text}");
    let (mut b, installed) = setup.host();

    let r = load(&mut b, &model);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["backend"], "bitnet-cpu-linux-x86_64", "{r}");
    assert_eq!(r["result"]["state"], "ready", "{r}");
    assert!(runs(&r["result"]["pid"], &installed), "{r}");
    eprintln!("ready in {} ms", r["result"]["load_ms"]);

    // TabAgent's legacy generate, streamed as generationUpdate events.
    b.send(&json!({"action": "generate", "messageId": "g1", "messages": [{"role": "user", "content": "Hello"}],
                   "settings": {"temperature": 0, "max_new_tokens": 8}}));
    let (events, last) = b.collect("messageId", &json!("g1"), T);
    let r = last.value;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["type"], "generationComplete", "{r}");
    assert!(events.iter().all(|e| e["type"] == "generationUpdate"), "{events:?}");
    let streamed: String = events.iter().map(|e| e["payload"]["token"].as_str().unwrap().to_string()).collect();
    assert_eq!(streamed, r["payload"]["output"].as_str().unwrap(), "{r}");
    let n = r["payload"]["numTokens"].as_u64().unwrap();
    assert!((1..=8).contains(&n), "{r}");
    eprintln!("legacy generate: {n} tokens, {:?}", r["payload"]["output"]);

    // The v1 chat.
    let r = streamed_chat(&mut b, "c1", "The quick brown fox");
    assert_eq!(r["result"]["backend"], "bitnet-cpu-linux-x86_64", "{r}");
    eprintln!("chat: {:?}, {} tok/s", r["result"]["text"], r["result"]["timings"]["tokens_per_s"]);

    let st = b.request(&json!({"id": "st", "type": "status"}));
    assert_eq!(st["result"]["server"]["state"], "ready", "{st}");
    assert!(runs(&st["result"]["server"]["pid"], &installed), "{st}");
}

/// The fixture's greedy continuation, from the real server through the
/// host, is the one the independent references computed.
#[test]
fn a_real_cpu_build_answers_the_fixture_with_the_reference_greedy_tokens() {
    let Some(server) = real_build("BITNET_REAL_SERVER") else { return };
    let (mut b, _) = Setup::new(&server, CPU_FILE, "").host();
    let r = load(&mut b, &fixture_model("bitnet-tq2_0.gguf"));
    assert_eq!(r["result"]["backend"], "bitnet-cpu-linux-x86_64", "{r}");
    let (prompt, expected) = reference_answer(&mut b, "bitnet-tq2_0.golden.json");
    let prompt = prompt.as_str();
    // Whole and streamed (a 2024 build answers /v1/completions in
    // llama-server's native shape, not OpenAI's).
    let r = b.request(&json!({"id": "c", "type": "complete", "prompt": prompt, "temperature": 0,
                              "max_tokens": 3, "stream": false}));
    assert_eq!(r["result"]["text"].as_str().unwrap(), expected, "{r}");
    assert_eq!(r["result"]["finish_reason"], "length", "{r}");
    assert_eq!(r["result"]["usage"]["completion_tokens"], 3, "{r}");
    b.send(&json!({"id": "s", "type": "complete", "prompt": prompt, "temperature": 0, "max_tokens": 3}));
    let (events, last) = b.collect("id", &json!("s"), T);
    let r = last.value;
    let deltas: String = events.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(deltas, expected, "{events:?}");
    assert_eq!(r["result"]["text"].as_str().unwrap(), expected, "{r}");
    assert_eq!(r["result"]["finish_reason"], "length", "{r}");
    assert_eq!(r["result"]["usage"]["completion_tokens"], 3, "{r}");
    eprintln!("real server: {expected:?} = the references' greedy tokens");
}

#[test]
fn a_model_the_real_build_cannot_load_falls_back_with_the_servers_reason() {
    let Some(server) = real_build("BITNET_REAL_SERVER") else { return };
    let (mut b, _) = Setup::new(&server, CPU_FILE, "").host();
    // BitNet b1.58 2B4T's graph: builds from before 2B4T do not know it.
    let r = load(&mut b, &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["ok"], true, "{r}");
    let st = b.request(&json!({"id": "st", "type": "status"}));
    let failures = &st["result"]["server"]["failures"];
    match r["result"]["backend"].as_str().unwrap() {
        "bitnet-cpu-linux-x86_64" => eprintln!("this build loads bitnet-b1.58 models"),
        "builtin" => {
            let f = failures.as_array().unwrap().iter().find(|f| f["candidate"] == "bitnet-cpu-linux-x86_64");
            let f = f.unwrap_or_else(|| panic!("no failure recorded: {st}"));
            assert_eq!(f["failure"]["kind"], "model_load", "{st}");
            assert!(f["failure"]["line"].as_str().unwrap().contains("unknown model architecture"), "{st}");
            eprintln!("fell back to the built-in engine: {}", f["failure"]["line"]);
        }
        other => panic!("backend {other}: {r}"),
    }
    let r = streamed_chat(&mut b, "c", "Hello");
    assert!(r["result"]["text"].is_string(), "{r}");
}

/// The fixture's prompt and its first three greedy tokens (margins 0.03 to
/// 0.2 in the references: numeric noise cannot flip them), as text.
fn reference_answer(b: &mut FakeBrowser, golden: &str) -> (String, String) {
    let golden: Value = serde_json::from_slice(&std::fs::read(fixture_model(golden)).unwrap()).unwrap();
    let want: Vec<u64> =
        golden["greedy"]["p0"]["llamacpp"].as_array().unwrap()[..3].iter().map(|t| t.as_u64().unwrap()).collect();
    let text = b.request(&json!({"id": "d", "type": "detokenize", "tokens": want}));
    (golden["prompts"][0]["text"].as_str().unwrap().into(), text["result"]["text"].as_str().unwrap().into())
}

#[test]
fn a_forced_real_vulkan_build_answers_or_is_fallen_back_from_with_a_reason() {
    let Some(server) = real_build("BITNET_REAL_VULKAN_SERVER") else { return };
    let setup = Setup::new(&server, VULKAN_FILE, "[server]\nvariant = \"vulkan-linux-x86_64\"\ngpu_layers = 99\n");
    // An F16 model: GPU builds run f32/f16/q4_0..q6_k (not the ternary formats).
    let model = setup.tiny_model(TernaryFormat::F16);
    eprintln!("{}", setup.explain(&model));
    let (mut b, installed) = setup.host();
    let r = load(&mut b, &model);
    eprintln!("{r}");
    if r["ok"] == true {
        assert_eq!(r["result"]["backend"], "vulkan-linux-x86_64", "{r}");
        assert!(runs(&r["result"]["pid"], &installed), "{r}");
        let r = streamed_chat(&mut b, "c", "Hello");
        eprintln!("vulkan chat: {:?}, {} tok/s", r["result"]["text"], r["result"]["timings"]["tokens_per_s"]);
    } else {
        // Forced and failed: the reply carries every attempt, classified.
        let st = b.request(&json!({"id": "st", "type": "status"}));
        let attempts = r["error"]["details"]["attempts"].as_array().unwrap_or_else(|| panic!("{r}\n{st}"));
        assert!(!attempts.is_empty(), "{r}");
        for a in attempts {
            assert!(a["failure"]["kind"].is_string(), "{a}");
        }
        eprintln!("vulkan build failed, classified: {attempts:?}");
    }
}
