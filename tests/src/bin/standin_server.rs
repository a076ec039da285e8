//! A stand-in for llama-server: the HTTP subset the host uses (`/health` with
//! its loading state, `/v1/models`, `/v1/chat/completions` with and without
//! SSE), with faults injected on request, so that the supervisor and the
//! proxy are tested against real processes that fail the way real servers do.
//!
//! It takes llama-server's flags (`--model --host --port --api-key(-file) --threads
//! --ctx-size --n-gpu-layers`) and, from flags or the environment:
//!
//! | `--fault X` / `STANDIN_FAULT=X,Y` | behaviour |
//! |---|---|
//! | `crash-at-start`   | prints an error, exits 1 before listening |
//! | `crash-after=MS`   | serves, then exits 1 MS after becoming healthy |
//! | `crash-mid-stream` | exits 1 after the second streamed token |
//! | `hang`             | listens, never becomes healthy, never logs |
//! | `slow-load=MS`     | /health says 503 "Loading model" for MS while logging |
//! | `flood-stderr=N`   | writes N bytes to stderr before listening (blocks if undrained) |
//! | `sigill`           | dies of SIGILL, like a build using missing instructions |
//! | `oom`              | prints llama.cpp's allocation failure, exits 1 |
//! | `gpu-error`        | prints CUDA's "no CUDA-capable device", aborts |
//! | `ignore-sigterm`   | ignores SIGTERM (forces the supervisor's SIGKILL) |
//!
//! Per request, the last user message (or prompt) may carry triggers:
//! `[[tokens N]]` answer N tokens `t0 t1 ...`; `[[slow MS]]` MS between
//! tokens; `[[stall]]` stop sending after two tokens, connection open;
//! `[[crash]]` exit 1 after two tokens; `[[http NNN]]` answer that status
//! with an OpenAI-style error body; `[[clock]]` makes each token's text the
//! wall-clock time it was sent, in microseconds since the epoch (for
//! latency benchmarks through the host). `GET /standin/stats` counts tokens sent
//! and streams the client dropped (to check that cancel reaches upstream).
//!
//! `--fault-times N` (`STANDIN_FAULT_TIMES`) with `--fault-state FILE`
//! (`STANDIN_FAULT_STATE`) applies the faults only to the first N starts.
//! `STANDIN_TOKEN_DELAY_MS` paces streamed tokens. llama-server's native
//! `/completion` (not streamed) works at `STANDIN_SPEED=PROMPT,DECODE` tokens/s
//! (a prompt token per byte; default: as fast as it can) and reports what it
//! took in llama-server's `timings`, as calibration reads them. `STANDIN_ARGV_LOG=FILE`
//! appends the argv (one JSON array per line) for tests to inspect.

// Handlers return a ready Response as their error; one per request, never hot.
#![allow(clippy::result_large_err)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Default, Clone)]
struct Opts {
    model: String,
    host: String,
    port: u16,
    api_key: Option<String>,
    faults: Vec<String>,
    fault_times: Option<u64>,
    fault_state: Option<String>,
}

impl Opts {
    fn fault(&self, name: &str) -> Option<&str> {
        self.faults.iter().find_map(|f| match f.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if f == name => Some(""),
            _ => None,
        })
    }
    fn fault_ms(&self, name: &str) -> Option<u64> {
        self.fault(name).map(|v| v.parse().unwrap_or(0))
    }
}

fn parse_args() -> Opts {
    let mut o = Opts { host: "127.0.0.1".into(), port: 8080, ..Default::default() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--model" | "-m" => o.model = val(),
            "--host" => o.host = val(),
            "--port" => o.port = val().parse().unwrap_or(8080),
            "--api-key" => o.api_key = Some(val()),
            "--api-key-file" => {
                o.api_key = std::fs::read_to_string(val()).ok().map(|k| k.trim().to_string());
            }
            "--threads" | "-t" | "--ctx-size" | "-c" | "--n-gpu-layers" | "-ngl" | "--parallel" | "-np"
            | "--cache-type-k" | "-ctk" | "--cache-type-v" | "-ctv" => {
                val();
            }
            "--fault" => o.faults.push(val()),
            "--fault-times" => o.fault_times = val().parse().ok(),
            "--fault-state" => o.fault_state = Some(val()),
            other => {
                eprintln!("error: invalid argument: {other}");
                std::process::exit(1);
            }
        }
    }
    if let Ok(f) = std::env::var("STANDIN_FAULT") {
        o.faults.extend(f.split(',').filter(|s| !s.is_empty()).map(String::from));
    }
    if let Ok(n) = std::env::var("STANDIN_FAULT_TIMES") {
        o.fault_times = n.parse().ok();
    }
    if let Ok(p) = std::env::var("STANDIN_FAULT_STATE") {
        o.fault_state = Some(p);
    }
    o
}

/// Count this start; whether the faults apply to it.
fn faults_apply(o: &Opts) -> bool {
    let (Some(times), Some(state)) = (o.fault_times, &o.fault_state) else { return true };
    let n: u64 = std::fs::read_to_string(state).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let _ = std::fs::write(state, (n + 1).to_string());
    n < times
}

struct App {
    opts: Opts,
    loaded: AtomicBool,
    token_delay: Duration,
    tokens_sent: AtomicU64,
    streams_dropped: AtomicU64,
    requests: AtomicU64,
}

fn main() {
    let mut opts = parse_args();
    if let Ok(path) = std::env::var("STANDIN_ARGV_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let argv: Vec<String> = std::env::args().collect();
            let _ = writeln!(f, "{}", json!(argv));
        }
    }
    if !faults_apply(&opts) {
        opts.faults.clear();
    }
    eprintln!("build: 0 (stand-in) with rustc for {}", std::env::consts::ARCH);
    eprintln!("system info: n_threads = 1 | stand-in");

    if opts.fault("sigill").is_some() {
        eprintln!("llama_model_loader: loading model from {}", opts.model);
        // SAFETY: raising a signal on ourselves.
        unsafe {
            libc::signal(libc::SIGILL, libc::SIG_DFL);
            libc::raise(libc::SIGILL);
        }
    }
    if opts.fault("crash-at-start").is_some() {
        eprintln!("error: simulated crash at start");
        std::process::exit(1);
    }
    if opts.fault("oom").is_some() {
        eprintln!("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592");
        eprintln!("llama_model_load: error loading model: unable to allocate backend buffer");
        std::process::exit(1);
    }
    if opts.fault("gpu-error").is_some() {
        eprintln!("ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected");
        std::process::abort();
    }
    if let Some(n) = opts.fault_ms("flood-stderr") {
        let line = [b'#'; 1023];
        let mut err = std::io::stderr().lock();
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(1023);
            let _ = err.write_all(&line[..k]);
            let _ = err.write_all(b"\n");
            left = left.saturating_sub(1024);
        }
    }
    if opts.fault("ignore-sigterm").is_some() {
        // SAFETY: setting a signal disposition.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(serve(opts));
}

async fn serve(opts: Opts) {
    let listener = match tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("main: couldn't bind HTTP server socket, hostname: {}, port: {}: {e}", opts.host, opts.port);
            std::process::exit(1);
        }
    };
    eprintln!("main: HTTP server is listening, hostname: {}, port: {}", opts.host, opts.port);
    let token_delay =
        Duration::from_millis(std::env::var("STANDIN_TOKEN_DELAY_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
    let app = Arc::new(App {
        opts: opts.clone(),
        loaded: AtomicBool::new(false),
        token_delay,
        tokens_sent: AtomicU64::new(0),
        streams_dropped: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });

    let loader = app.clone();
    tokio::spawn(async move {
        let o = &loader.opts;
        if o.fault("hang").is_some() {
            return;
        }
        eprintln!("llama_model_loader: loading model from {}", o.model);
        if let Some(ms) = o.fault_ms("slow-load") {
            let start = tokio::time::Instant::now();
            let mut i = 0;
            while start.elapsed() < Duration::from_millis(ms) {
                eprintln!("llama_model_load: loading tensor {i}");
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        loader.loaded.store(true, Ordering::SeqCst);
        eprintln!("main: model loaded");
        if let Some(ms) = o.fault_ms("crash-after") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            eprintln!("error: simulated crash while serving");
            std::process::exit(1);
        }
    });

    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completion", post(native_completion))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/standin/stats", get(stats))
        .with_state(app);
    // Tokens are small writes: without TCP_NODELAY, Nagle + delayed ACK hold
    // each one back by ~40 ms.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    let _ = axum::serve(listener, router).await;
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "type": kind}}))).into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    if app.loaded.load(Ordering::SeqCst) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model")
    }
}

fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(key) = &app.opts.api_key else { return true };
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {key}").as_str())
}

fn model_id(app: &App) -> String {
    std::path::Path::new(&app.opts.model).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !authorized(&app, &headers) {
        return error(StatusCode::UNAUTHORIZED, "authentication_error", "Invalid API Key");
    }
    Json(json!({"object": "list", "data": [{"id": model_id(&app), "object": "model", "created": 0, "owned_by": "llamacpp"}]}))
        .into_response()
}

/// Per-request triggers found in the text, e.g. `[[tokens 5]]`.
#[derive(Debug, Default)]
struct Triggers {
    tokens: Option<usize>,
    slow_ms: Option<u64>,
    stall: bool,
    crash: bool,
    clock: bool,
    http: Option<u16>,
}

fn triggers(text: &str) -> Triggers {
    let mut t = Triggers::default();
    for part in text.split("[[").skip(1) {
        let Some((inner, _)) = part.split_once("]]") else { continue };
        let mut w = inner.split_whitespace();
        match (w.next(), w.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("tokens"), Some(n)) => t.tokens = Some(n as usize),
            (Some("slow"), Some(n)) => t.slow_ms = Some(n),
            (Some("http"), Some(n)) => t.http = Some(n as u16),
            (Some("stall"), _) => t.stall = true,
            (Some("crash"), _) => t.crash = true,
            (Some("clock"), _) => t.clock = true,
            _ => {}
        }
    }
    t
}

/// The reply: `You said: <words>` or, with `[[tokens N]]`, `t0 t1 ...`.
fn reply_tokens(text: &str, max: Option<u64>) -> Vec<String> {
    let mut words = match triggers(text).tokens {
        Some(n) => (0..n).map(|i| if i == 0 { format!("t{i}") } else { format!(" t{i}") }).collect(),
        None => {
            let mut w = vec!["You".to_string(), " said:".to_string()];
            w.extend(text.split_whitespace().filter(|x| !x.starts_with("[[")).map(|x| format!(" {x}")));
            w
        }
    };
    words.truncate(max.unwrap_or(u64::MAX) as usize);
    words
}

fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Common checks; Err is the response to send.
fn admit(app: &App, headers: &HeaderMap) -> Result<(), Response> {
    app.requests.fetch_add(1, Ordering::SeqCst);
    if !authorized(app, headers) {
        return Err(error(StatusCode::UNAUTHORIZED, "authentication_error", "Invalid API Key"));
    }
    if !app.loaded.load(Ordering::SeqCst) {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model"));
    }
    Ok(())
}

fn parse_body(body: &str) -> Result<Value, Response> {
    serde_json::from_str::<Value>(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid JSON body"))
}

fn http_trigger(t: &Triggers) -> Option<Response> {
    let code = t.http?;
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(error(status, "server_error", &format!("stand-in refuses with {code} as asked")))
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !body["messages"].is_array() {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'messages' is required");
    }
    let text = last_user(&body);
    generate(app, &body, &text, true)
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(prompt) = body["prompt"].as_str().map(String::from) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'prompt' is required");
    };
    generate(app, &body, &prompt, false)
}

/// llama-server's own completion endpoint: the prompt read and the tokens
/// made at `STANDIN_SPEED`, each phase timed, `timings` as llama-server
/// reports them.
async fn native_completion(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Text, or token ids as llama-server takes them (one byte each here).
    let prompt = match &body["prompt"] {
        Value::String(p) => p.clone(),
        Value::Array(ids) => ids.iter().filter_map(Value::as_u64).map(|b| char::from(b as u8)).collect(),
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'prompt' is required"),
    };
    let (pp, tg) = std::env::var("STANDIN_SPEED")
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once(',')?;
            Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?))
        })
        .unwrap_or((f64::INFINITY, f64::INFINITY));
    let n = body["n_predict"].as_u64().unwrap_or(16) as usize;
    let mut tokens = reply_tokens(&prompt, Some(n as u64));
    if body["ignore_eos"] == true {
        tokens.extend((tokens.len()..n).map(|i| format!(" t{i}")));
    }
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(prompt.len() as f64 / pp)).await;
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = std::time::Instant::now();
    // One sleep for all of them (the answer is not streamed): timers are
    // too coarse for one per token at high speeds.
    tokio::time::sleep(Duration::from_secs_f64(tokens.len() as f64 / tg)).await;
    let predicted_ms = t1.elapsed().as_secs_f64() * 1e3;
    app.tokens_sent.fetch_add(tokens.len() as u64, Ordering::SeqCst);
    let per_s = |n: usize, ms: f64| n as f64 / (ms.max(1e-3) / 1e3);
    Json(json!({
        "content": tokens.concat(), "stop": true, "tokens_predicted": tokens.len(), "model": model_id(&app),
        "timings": {
            "prompt_n": prompt.len(), "prompt_ms": prompt_ms, "prompt_per_second": per_s(prompt.len(), prompt_ms),
            "predicted_n": tokens.len(), "predicted_ms": predicted_ms,
            "predicted_per_second": per_s(tokens.len(), predicted_ms),
        }
    }))
    .into_response()
}

/// Chat (`chat = true`) or text completion, streamed or not.
fn generate(app: Arc<App>, body: &Value, text: &str, chat: bool) -> Response {
    let trig = triggers(text);
    if let Some(r) = http_trigger(&trig) {
        return r;
    }
    let max = body["max_tokens"].as_u64().or(body["n_predict"].as_u64());
    let tokens = reply_tokens(text, max);
    let model = model_id(&app);
    let finish = if max.is_some_and(|m| tokens.len() as u64 >= m) { "length" } else { "stop" };
    let (object, chunk_object) =
        if chat { ("chat.completion", "chat.completion.chunk") } else { ("text_completion", "text_completion") };
    let usage = json!({"prompt_tokens": text.len(), "completion_tokens": tokens.len(), "total_tokens": text.len() + tokens.len()});
    if body["stream"] != true {
        app.tokens_sent.fetch_add(tokens.len() as u64, Ordering::SeqCst);
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": tokens.concat()}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": tokens.concat(), "finish_reason": finish})
        };
        return Json(json!({"id": "cmpl-standin", "object": object, "created": 0, "model": model,
                           "choices": [choice], "usage": usage}))
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
    let crash_mid = app.opts.fault("crash-mid-stream").is_some() || trig.crash;
    let delay = trig.slow_ms.map(Duration::from_millis).unwrap_or(app.token_delay);
    tokio::spawn(async move {
        let chunk = |piece: Value, finish: Value, extra: Option<Value>| {
            let choice = if chat {
                json!({"index": 0, "delta": piece, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": piece.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish})
            };
            let mut v = json!({"id": "cmpl-standin", "object": chunk_object, "created": 0, "model": model, "choices": [choice]});
            if let Some(u) = extra {
                v["usage"] = u;
            }
            format!("data: {v}\n\n")
        };
        if chat && tx.send(Ok(chunk(json!({"role": "assistant", "content": null}), Value::Null, None))).await.is_err() {
            return;
        }
        for (i, t) in tokens.iter().enumerate() {
            if i == 2 && crash_mid {
                eprintln!("error: simulated crash mid-stream");
                std::process::exit(1);
            }
            if i == 2 && trig.stall {
                eprintln!("stand-in: stalling mid-stream");
                std::future::pending::<()>().await;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let text = if trig.clock {
                let us =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
                format!("{}{us}", if i == 0 { "" } else { " " })
            } else {
                t.clone()
            };
            if tx.send(Ok(chunk(json!({"content": text}), Value::Null, None))).await.is_err() {
                app.streams_dropped.fetch_add(1, Ordering::SeqCst);
                eprintln!("srv  stop: cancel task, client disconnected after {i} tokens");
                return;
            }
            app.tokens_sent.fetch_add(1, Ordering::SeqCst);
        }
        let _ = tx.send(Ok(chunk(json!({}), json!(finish), Some(usage)))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A deterministic 8-dimensional embedding of `text` (FNV-1a per dimension).
fn embedding(text: &str) -> Vec<f32> {
    (0..8u64)
        .map(|d| {
            let mut h: u64 = 0xcbf29ce484222325 ^ d;
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
            }
            (h % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

async fn embeddings(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'input' is required"),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding(s)}))
        .collect();
    let n: usize = inputs.iter().map(|s| s.len()).sum();
    Json(json!({"object": "list", "model": model_id(&app), "data": data, "usage": {"prompt_tokens": n, "total_tokens": n}}))
        .into_response()
}

/// Byte-level tokens: one token per byte.
async fn tokenize(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let content = body["content"].as_str().unwrap_or("");
    Json(json!({"tokens": content.bytes().collect::<Vec<u8>>()})).into_response()
}

async fn detokenize(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bytes: Vec<u8> = body["tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_u64()).map(|t| t as u8).collect())
        .unwrap_or_default();
    Json(json!({"content": String::from_utf8_lossy(&bytes)})).into_response()
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(json!({
        "tokens_sent": app.tokens_sent.load(Ordering::SeqCst),
        "streams_dropped": app.streams_dropped.load(Ordering::SeqCst),
        "requests": app.requests.load(Ordering::SeqCst),
    }))
    .into_response()
}
