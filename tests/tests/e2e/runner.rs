//! `bitnet-host runner`, the built-in engine's server, held to the same
//! llama-server contract as the stand-in: health while loading, the key,
//! chat streamed and not, /completion with token ids, tokenize round trip.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitnet_supervisor::proxy::SseParser;
use serde_json::{json, Value};

use crate::host_bin;
use crate::server::fixture_model;

struct Runner {
    child: Child,
    url: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    fn start(model: &str) -> Runner {
        Runner::start_as(&[host_bin().to_str().unwrap()], model, Duration::from_secs(20), &[])
    }

    /// The runner started by `argv` (the host binary, or an emulator and
    /// a host built for another architecture), with `extra` flags.
    fn start_as(argv: &[&str], model: &str, deadline: Duration, extra: &[&str]) -> Runner {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .args(["runner", "--model", fixture_model(model).to_str().unwrap(), "--port", &port.to_string()])
            .args(["--api-key", "k", "--ctx-size", "256", "--threads", "1"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = Runner { child, url: format!("http://127.0.0.1:{port}"), http, rt };
        let t = Instant::now();
        loop {
            if r.get("/health", false).0 == 200 {
                return r;
            }
            assert!(t.elapsed() < deadline, "runner {argv:?} never healthy");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn get(&self, path: &str, key: bool) -> (u16, Value) {
        self.rt.block_on(async {
            let mut r = self.http.get(format!("{}{path}", self.url));
            if key {
                r = r.bearer_auth("k");
            }
            match r.send().await {
                Ok(resp) => (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            }
        })
    }

    fn post(&self, path: &str, body: Value) -> (u16, String) {
        self.rt.block_on(async {
            let resp = self.http.post(format!("{}{path}", self.url)).bearer_auth("k").json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }
}

#[test]
fn the_runner_speaks_the_llama_server_subset_with_the_engines_answers() {
    let r = Runner::start("bitnet-b1.58-i2_s.gguf");
    assert_eq!(r.get("/v1/models", false).0, 401);
    let (s, models) = r.get("/v1/models", true);
    assert_eq!(s, 200);
    assert_eq!(models["data"][0]["id"], "bitnet-b1.58-i2_s.gguf");

    // /completion with the fixture's prompt ids: greedy = the reference.
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture_model("bitnet-b1.58-i2_s.golden.json")).unwrap()).unwrap();
    let prompt = golden["prompts"][0]["tokens"].clone();
    let want: Vec<u64> =
        golden["greedy"]["p0"]["ref_i8tok"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let (s, body) = r.post(
        "/completion",
        json!({"prompt": prompt, "n_predict": 4, "temperature": 0, "return_tokens": true, "n_probs": 2}),
    );
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let got: Vec<u64> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(got[..], want[..got.len()], "{v}");
    assert_eq!(v["completion_probabilities"][0]["probs"][0]["id"], want[0], "{v}");

    // Chat, not streamed and streamed, give the same greedy text.
    let msgs = json!([{"role": "user", "content": "Hello"}]);
    let (s, body) = r.post("/v1/chat/completions", json!({"messages": msgs, "max_tokens": 6, "temperature": 0}));
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let (s, body) =
        r.post("/v1/chat/completions", json!({"messages": msgs, "max_tokens": 6, "temperature": 0, "stream": true}));
    assert_eq!(s, 200);
    let mut p = SseParser::default();
    p.feed(body.as_bytes());
    let mut streamed = String::new();
    let mut events = Vec::new();
    while let Some(d) = p.pop() {
        events.push(d.clone());
        if d != "[DONE]" {
            let c: Value = serde_json::from_str(&d).unwrap();
            streamed.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed, text);

    // Tokenize / detokenize round trip, special tokens parsed.
    let (_, body) = r.post("/tokenize", json!({"content": "<|eot_id|>Hi there"}));
    let toks: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(toks["tokens"][0], 370);
    let (_, body) = r.post("/detokenize", json!({"tokens": toks["tokens"]}));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["content"], "<|eot_id|>Hi there");

    // Bad requests are 400s with a message; the server keeps serving.
    let (s, body) = r.post("/v1/chat/completions", json!({"messages": "nope"}));
    assert_eq!(s, 400, "{body}");
    let (s, _) = r.post("/completion", json!({"prompt": [999_999], "n_predict": 1}));
    assert_eq!(s, 400);
    assert_eq!(r.get("/health", false).0, 200);
}

#[test]
fn the_runner_keeps_prompt_caches_so_a_conversations_next_turn_computes_only_what_is_new() {
    let r = Runner::start("bitnet-b1.58-i2_s.gguf");
    let turn = |msgs: &Value, cache: bool| -> Value {
        let body = json!({"messages": msgs, "max_tokens": 6, "temperature": 0, "cache_prompt": cache});
        let (s, body) = r.post("/v1/chat/completions", body);
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let mut msgs = json!([{"role": "user", "content": "Hello, who are you?"}]);
    let first = turn(&msgs, true);
    let t = &first["timings"];
    assert_eq!(t["cache_n"], 0, "{first}");
    assert_eq!(t["prompt_n"], first["usage"]["prompt_tokens"], "{first}");
    assert_eq!(t["predicted_n"], 6);
    assert!(t["prompt_ms"].as_f64().unwrap() > 0.0 && t["predicted_per_second"].as_f64().unwrap() > 0.0, "{t}");
    // Turn 2 resends turn 1: the cache answers it.
    let answer = first["choices"][0]["message"]["content"].clone();
    msgs.as_array_mut().unwrap().push(json!({"role": "assistant", "content": answer}));
    msgs.as_array_mut().unwrap().push(json!({"role": "user", "content": "And what can you do?"}));
    let cached = turn(&msgs, true);
    let prompt = cached["usage"]["prompt_tokens"].as_u64().unwrap();
    let hit = cached["timings"]["cache_n"].as_u64().unwrap();
    assert!(hit >= first["usage"]["prompt_tokens"].as_u64().unwrap(), "{cached}");
    assert_eq!(cached["timings"]["prompt_n"].as_u64().unwrap(), prompt - hit);
    assert_eq!(cached["usage"]["prompt_tokens_details"]["cached_tokens"], hit);
    // cache_prompt false: all computed again, the same greedy answer.
    let fresh = turn(&msgs, false);
    assert_eq!(fresh["timings"]["cache_n"], 0);
    assert_eq!(fresh["choices"][0]["message"]["content"], cached["choices"][0]["message"]["content"]);
}

#[test]
fn the_runners_kv_cache_type_is_f16_or_f32_for_both_or_q8_0_keys_with_f16_values() {
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let run = |extra: &[&str]| {
        Command::new(host_bin())
            .args(["runner", "--model", model.to_str().unwrap(), "--port", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--cache-type-k", "f32", "--cache-type-v", "f16"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be the same type"), "{o:?}");
    let o = run(&["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("q8_0 keys with f16 values"), "{o:?}");
    let o = run(&["--cache-type-k", "q4_0", "--cache-type-v", "q4_0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("f16, f32, or q8_0"), "{o:?}");
    // q8_0 keys with f16 values serve.
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture_model("bitnet-b1.58-i2_s.golden.json")).unwrap()).unwrap();
    let q8_kv = ["--cache-type-k", "q8_0", "--cache-type-v", "f16"];
    let r =
        Runner::start_as(&[host_bin().to_str().unwrap()], "bitnet-b1.58-i2_s.gguf", Duration::from_secs(20), &q8_kv);
    let tokens = greedy_tokens(&r, &golden["prompts"], 8);
    assert!(tokens.iter().all(|t| t.len() == 8), "{tokens:?}");
}

#[test]
fn a_runner_given_a_file_it_cannot_load_exits_with_llama_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0").unwrap();
    let out =
        Command::new(host_bin()).args(["runner", "--model", bad.to_str().unwrap(), "--port", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error loading model"));
}

/// The greedy tokens `r` generates for each of the fixture's prompts.
fn greedy_tokens(r: &Runner, prompts: &Value, n: usize) -> Vec<Vec<u64>> {
    let mut all = Vec::new();
    for p in prompts.as_array().unwrap() {
        let (s, body) = r.post(
            "/completion",
            json!({"prompt": p["tokens"], "n_predict": n, "temperature": 0, "return_tokens": true}),
        );
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        all.push(v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect());
    }
    all
}

/// `BITNET_FOREIGN_HOST` names a host built for another architecture and
/// how to run it (`scripts/cross-test` sets it to qemu-aarch64 and the
/// aarch64 build): its runner must answer every fixture model's prompts
/// with the same greedy tokens as this machine's, and both the golden
/// references' where the fixtures have them.
#[test]
fn a_runner_built_for_another_architecture_answers_with_the_same_greedy_tokens() {
    let Ok(foreign) = std::env::var("BITNET_FOREIGN_HOST") else {
        eprintln!("skipped: BITNET_FOREIGN_HOST is not set (scripts/cross-test sets it)");
        return;
    };
    let argv: Vec<&str> = foreign.split_whitespace().collect();
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture_model("bitnet-b1.58-i2_s.golden.json")).unwrap()).unwrap();
    let prompts = &golden["prompts"];
    let here_argv = [host_bin().to_str().unwrap()];
    for (model, reference) in [
        ("bitnet-b1.58-i2_s.gguf", Some(("bitnet-b1.58-i2_s.golden.json", "ref_i8tok"))),
        ("bitnet-tq2_0.gguf", Some(("bitnet-tq2_0.golden.json", "ref_q8k"))),
        ("bitnet-b1.58-tq2_0.gguf", None),
        ("bitnet-tq1_0.gguf", None),
    ] {
        // An f32 KV cache: the golden greedy tokens were computed with one
        // (with f16 they agree only up to the first small margin, as the
        // fixtures' README says).
        let f32_kv = ["--cache-type-k", "f32", "--cache-type-v", "f32"];
        let here = greedy_tokens(&Runner::start_as(&here_argv, model, Duration::from_secs(20), &f32_kv), prompts, 8);
        let there = greedy_tokens(&Runner::start_as(&argv, model, Duration::from_secs(300), &f32_kv), prompts, 8);
        assert_eq!(there, here, "{model}: {foreign} vs this machine");
        assert!(here.iter().all(|t| t.len() == 8), "{model}: {here:?}");
        if let Some((file, key)) = reference {
            let g: Value = serde_json::from_slice(&std::fs::read(fixture_model(file)).unwrap()).unwrap();
            let want: Vec<u64> =
                g["greedy"]["p0"][key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            let n = want.len().min(8);
            assert_eq!(there[0][..n], want[..n], "{model}: {foreign} vs the reference");
        }
        eprintln!("{model}: {} prompts, the same 8 greedy tokens each on both", here.len());
    }
    // q8_0 keys: integer scores, the same bits in every build (the
    // foreign build's scalar or NEON one too).
    let q8_kv = ["--cache-type-k", "q8_0", "--cache-type-v", "f16"];
    let model = "bitnet-b1.58-i2_s.gguf";
    let here = greedy_tokens(&Runner::start_as(&here_argv, model, Duration::from_secs(20), &q8_kv), prompts, 8);
    let there = greedy_tokens(&Runner::start_as(&argv, model, Duration::from_secs(300), &q8_kv), prompts, 8);
    assert_eq!(there, here, "{model}, q8_0 keys: {foreign} vs this machine");
}
