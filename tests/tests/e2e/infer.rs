//! The request path through the real host to the stand-in server: streamed
//! chat with interleaved ids, cancel reaching upstream, crash mid-stream,
//! stall timeout, HTTP error mapping, the legacy `generate`, the remote
//! backend, queueing, and the small requests (embed, tokenize, models).

use std::time::{Duration, Instant};

use bitnet_host_tests::browser::FakeBrowser;
use serde_json::{json, Value};

use crate::server::{fixture_model, host, host_with_config, load};

const T: Duration = Duration::from_secs(20);

fn loaded(faults: &[&str], config: &str) -> FakeBrowser {
    let mut b = host_with_config(faults, config);
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["ok"], true, "{r}");
    b
}

fn say(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The stand-in's counters, asked directly.
fn standin_stats(b: &mut FakeBrowser) -> Value {
    let st = b.request(&json!({"id": "st", "type": "status"}));
    let url = st["result"]["server"]["url"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        c.get(format!("{url}/standin/stats")).send().await.unwrap().json().await.unwrap()
    })
}

fn expected(n: usize) -> String {
    (0..n).map(|i| if i == 0 { "t0".to_string() } else { format!(" t{i}") }).collect()
}

#[test]
fn twenty_concurrent_streamed_chats_arrive_interleaved_and_whole() {
    let mut b = loaded(&[], "");
    for i in 0..20 {
        b.send(&json!({"id": format!("c{i}"), "type": "chat", "messages": say("[[tokens 25]] [[slow 2]]"), "temperature": 0.2}));
    }
    let mut texts: Vec<String> = vec![String::new(); 20];
    let mut done = 0;
    let mut order: Vec<usize> = Vec::new();
    let deadline = Instant::now() + T;
    while done < 20 {
        let m = b.recv(deadline.saturating_duration_since(Instant::now()));
        let i: usize = m["id"].as_str().unwrap()[1..].parse().unwrap();
        match m["event"].as_str() {
            Some("delta") => {
                texts[i].push_str(m["text"].as_str().unwrap());
                order.push(i);
            }
            Some(_) => {}
            None => {
                assert_eq!(m["ok"], true, "{m}");
                let r = &m["result"];
                assert_eq!(r["text"], texts[i], "final text = the deltas, for c{i}");
                assert_eq!(r["text"], expected(25));
                assert_eq!(r["finish_reason"], "stop");
                assert_eq!(r["usage"]["completion_tokens"], 25);
                assert!(r["timings"]["ttft_ms"].as_f64().unwrap() >= 0.0);
                assert!(r["timings"]["tokens_per_s"].as_f64().unwrap() > 0.0);
                assert_eq!(r["backend"], "bitnet-cpu-linux-x86_64");
                done += 1;
            }
        }
    }
    // Deltas of different requests interleave (4 server slots at once).
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches > 20, "deltas came in blocks: {switches} switches");
}

#[test]
fn cancel_aborts_the_upstream_request_so_the_server_stops_generating() {
    let mut b = loaded(&[], "");
    b.send(&json!({"id": "long", "type": "chat", "messages": say("[[tokens 100000]] [[slow 5]]")}));
    for _ in 0..5 {
        let m = b.recv(T);
        assert_eq!(m["id"], "long");
    }
    let r = b.request(&json!({"id": "x", "type": "cancel", "target": "long"}));
    assert_eq!(r["result"]["cancelled"], 1, "{r}");
    let (_, last) = b.collect("id", &json!("long"), T);
    assert_eq!(last.value["error"]["code"], "cancelled");
    std::thread::sleep(Duration::from_millis(200));
    let a = standin_stats(&mut b);
    std::thread::sleep(Duration::from_millis(300));
    let c = standin_stats(&mut b);
    assert_eq!(a["streams_dropped"], 1, "the server saw the client go: {a}");
    assert_eq!(a["tokens_sent"], c["tokens_sent"], "the server kept generating: {a} then {c}");
    // The connection and the server still serve.
    let r = b.request(&json!({"id": "after", "type": "chat", "messages": say("hi"), "stream": false}));
    assert_eq!(r["result"]["text"], "You said: hi", "{r}");
}

#[test]
fn a_server_crash_mid_stream_ends_that_request_and_the_next_one_is_served_by_the_restart() {
    let mut b = loaded(&[], "");
    b.send(&json!({"id": "c", "type": "chat", "messages": say("[[crash]] [[tokens 10]]")}));
    let (events, last) = b.collect("id", &json!("c"), T);
    let deltas = events.iter().filter(|e| e["event"] == "delta").count();
    // It dies before its third token; what it had buffered may die with it.
    assert!((1..=2).contains(&deltas), "{events:?}");
    assert_eq!(last.value["error"]["code"], "backend_crashed", "{}", last.value);
    // The supervisor restarts the server; the next request waits for it.
    let r = b.request(&json!({"id": "next", "type": "chat", "messages": say("again"), "stream": false}));
    assert_eq!(r["result"]["text"], "You said: again", "{r}");
    let st = b.request(&json!({"id": "st", "type": "status"}));
    let failures = st["result"]["server"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{st}");
    assert_eq!(failures[0]["failure"]["kind"], "crashed");
}

#[test]
fn a_stalled_stream_times_out_and_http_errors_keep_the_servers_message() {
    let mut b = loaded(&[], "");
    let r = b.request(
        &json!({"id": "s", "type": "chat", "messages": say("[[stall]] [[tokens 10]]"), "idle_timeout_ms": 300}),
    );
    assert_eq!(r["error"]["code"], "timeout", "{r}");
    for (status, code) in [(400, "invalid_request"), (429, "busy"), (500, "backend_error"), (401, "unauthorized")] {
        let id = format!("h{status}");
        let r = b.request(&json!({"id": id, "type": "chat", "messages": say(&format!("[[http {status}]]"))}));
        assert_eq!(r["error"]["code"], code, "{r}");
        assert_eq!(r["error"]["details"]["status"], status, "{r}");
        assert_eq!(r["error"]["details"]["backend_message"], format!("stand-in refuses with {status} as asked"));
    }
    let r = b.request(&json!({"id": "bad", "type": "chat", "messages": [{"role": "wizard", "content": "x"}]}));
    assert_eq!(r["error"]["code"], "invalid_request");
    let r = b.request(&json!({"id": "bad2", "type": "chat", "messages": say("x"), "idle_timeout_ms": 0}));
    assert_eq!(r["error"]["code"], "invalid_request");
}

#[test]
fn legacy_generate_streams_generation_updates_with_the_message_id() {
    let mut b = loaded(&[], "");
    b.send(&json!({"action": "generate", "messageId": "g1", "messages": say("[[tokens 6]]"),
                   "settings": {"temperature": 0.5, "max_new_tokens": 4}}));
    let (events, last) = b.collect("messageId", &json!("g1"), T);
    assert_eq!(events.len(), 4, "{events:?}");
    for e in &events {
        assert_eq!(e["type"], "generationUpdate", "{e}");
        assert_eq!(e["messageId"], "g1");
    }
    assert_eq!(events[0]["payload"]["token"], "t0");
    let r = last.value;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["type"], "generationComplete");
    assert_eq!(r["payload"]["output"], "t0 t1 t2 t3");
    assert_eq!(r["payload"]["numTokens"], 4);
}

#[test]
fn a_remote_backend_is_used_with_its_key_and_a_wrong_key_is_an_auth_error() {
    // A "remote" server: the stand-in on its own port with a fixed key.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut remote = std::process::Command::new(crate::standin_bin())
        .args(["--model", "/srv/remote-model.gguf", "--port", &port.to_string(), "--api-key", "s3cret"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < T);
        std::thread::sleep(Duration::from_millis(10));
    }
    let config = |key: &str| {
        format!("[server]\nvariant = \"remote\"\n[remote]\nurl = \"http://127.0.0.1:{port}\"\napi_key = \"{key}\"\n")
    };

    let mut b = host_with_config(&[], &config("s3cret"));
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["result"]["backend"], "remote", "{r}");
    assert_eq!(r["result"]["pid"], Value::Null);
    let r = b.request(&json!({"id": "c", "type": "chat", "messages": say("far away")}));
    assert_eq!(r["result"]["text"], "You said: far away", "{r}");
    assert_eq!(r["result"]["backend"], "remote");
    drop(b);

    let mut b = host_with_config(&[], &config("wrong"));
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("refused the API key"), "{r}");
    let _ = remote.kill();
    let _ = remote.wait();
}

#[test]
fn requests_past_the_queue_limit_are_busy_and_queued_ones_run_in_turn() {
    let mut b = loaded(&[], "[server]\nparallel = 1\nmax_queue = 1\n");
    let slow = say("[[tokens 20]] [[slow 20]]");
    b.send(&json!({"id": "a", "type": "chat", "messages": slow}));
    // Wait until `a` is streaming, so it holds the only slot.
    assert_eq!(b.recv(T)["id"], "a");
    b.send(&json!({"id": "b", "type": "chat", "messages": slow}));
    let t = Instant::now();
    loop {
        let st = b.request(&json!({"id": "st", "type": "status"}));
        if st["result"]["queued"] == 1 {
            break;
        }
        assert!(t.elapsed() < T, "b never queued");
    }
    let r = b.request(&json!({"id": "c", "type": "chat", "messages": slow}));
    assert_eq!(r["error"]["code"], "busy", "{r}");
    let (_, a) = b.collect("id", &json!("a"), T);
    let (_, bb) = b.collect("id", &json!("b"), T);
    assert_eq!(a.value["ok"], true);
    assert_eq!(bb.value["ok"], true);
}

#[test]
fn embed_tokenize_detokenize_complete_and_models() {
    let mut b = host(&[]);
    // Before any load: a clear error, not a hang.
    let r = b.request(&json!({"id": "e0", "type": "embed", "input": "x"}));
    assert_eq!(r["error"]["code"], "not_available", "{r}");
    let models_dir = b.home().join("data/models/bitnet");
    std::fs::create_dir_all(&models_dir).unwrap();
    std::fs::copy(fixture_model("bitnet-tq2_0.gguf"), models_dir.join("tiny-tq2.gguf")).unwrap();
    std::fs::write(models_dir.join("broken.gguf"), b"GGUF").unwrap();
    let (_, r) = load(&mut b, "load", &fixture_model("bitnet-b1.58-i2_s.gguf"));
    assert_eq!(r["ok"], true);

    let r = b.request(&json!({"id": "e", "type": "embed", "input": ["a", "b"]}));
    let e = r["result"]["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].as_array().unwrap().len(), 8);
    assert_ne!(e[0], e[1]);
    let r = b.request(&json!({"id": "t", "type": "tokenize", "text": "héllo"}));
    let toks = r["result"]["tokens"].clone();
    assert_eq!(toks.as_array().unwrap().len(), 6);
    let r = b.request(&json!({"id": "d", "type": "detokenize", "tokens": toks}));
    assert_eq!(r["result"]["text"], "héllo");
    let r = b.request(&json!({"id": "p", "type": "complete", "prompt": "[[tokens 3]]"}));
    assert_eq!(r["result"]["text"], "t0 t1 t2", "{r}");

    let r = b.request(&json!({"id": "m", "type": "models"}));
    let models = r["result"]["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "{r}");
    assert_eq!(models[0]["loaded"], true);
    assert_eq!(models[0]["format"], "i2_s");
    // Names as `models` lists them: inside the models folder.
    let tiny = models.iter().find(|m| m["name"] == "bitnet/tiny-tq2.gguf").unwrap();
    assert_eq!(tiny["format"], "tq2_0");
    assert_eq!(tiny["bytes"], 521_632);
    let broken = models.iter().find(|m| m["name"] == "bitnet/broken.gguf").unwrap();
    assert!(broken["error"].as_str().is_some(), "{broken}");
    // Nothing pulled: the default is the folder's first usable model (the
    // broken file is passed over); the catalog says what can be pulled.
    assert_eq!(r["result"]["default"], "bitnet/tiny-tq2.gguf", "{r}");
    assert_eq!(r["result"]["catalog"][0]["name"], "bitnet-2b");
    assert_eq!(r["result"]["catalog"][0]["pulled"], false);
    let r = b.request(&json!({"id": "m2", "type": "models", "loaded_only": true}));
    assert_eq!(r["result"]["models"].as_array().unwrap().len(), 1);
}
