//! The engine behind llama-server's HTTP subset, so the supervisor runs it
//! like any bundled build: `/health` (503 while loading), `/v1/models`,
//! `/v1/chat/completions` and `/v1/completions` (streamed or not),
//! `/completion` (prompt as text or token ids; `n_predict`, `temperature`,
//! `seed`, `n_probs`, `return_tokens`), `/tokenize`, `/detokenize`.
//! Generation runs on blocking threads, up to `parallel` at once; a client
//! that goes away stops its generation at the next token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::batch::Batcher;
use crate::engine::{Engine, Generate, Message, Outcome};
use crate::sampler::SamplerConfig;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub ctx_size: usize,
    pub parallel: usize,
    /// How the KV caches store keys and values.
    pub kv_type: crate::model::KvType,
}

struct App {
    engine: OnceLock<Result<Arc<Engine>, String>>,
    /// Runs every request's generation, all of them in one pass per step.
    batcher: OnceLock<Batcher>,
    opts: ServerOptions,
    slots: Arc<tokio::sync::Semaphore>,
}

type Shared = Arc<App>;

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "type": kind}}))).into_response()
}

/// Serve until the process ends. Binding failures print llama-server's
/// message (the supervisor reads it to retry on another port).
pub async fn serve(opts: ServerOptions) -> std::io::Result<()> {
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad address: {e}")))?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("main: couldn't bind HTTP server socket, hostname: {}, port: {}: {e}", opts.host, opts.port);
            return Err(e);
        }
    };
    eprintln!("main: HTTP server is listening, hostname: {}, port: {}", opts.host, opts.port);
    let app = Arc::new(App {
        engine: OnceLock::new(),
        batcher: OnceLock::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1))),
        opts: opts.clone(),
    });
    let loader = app.clone();
    tokio::task::spawn_blocking(move || {
        eprintln!("llama_model_loader: loading model from {}", loader.opts.model.display());
        let r = Engine::load(&loader.opts.model, loader.opts.ctx_size)
            .map(|mut e| {
                e.model.kv_type = loader.opts.kv_type;
                // One kept prompt cache per slot, as llama-server keeps one per slot.
                e.prompt_cache.set_slots(loader.opts.parallel.max(1));
                Arc::new(e)
            })
            .map_err(|e| e.to_string());
        match &r {
            Ok(e) => eprintln!(
                "main: model loaded: {} {} layers, {} format, n_ctx {}, KV cache {}",
                e.model.hp.arch,
                e.model.hp.n_layer,
                e.model.format,
                e.n_ctx,
                e.model.kv_type.name()
            ),
            Err(e) => eprintln!("llama_model_load: error loading model: {e}"),
        }
        let failed = r.is_err();
        if let Ok(e) = &r {
            let _ = loader.batcher.set(Batcher::start(e.clone()));
        }
        let _ = loader.engine.set(r);
        if failed {
            // As llama-server: a model that cannot load ends the process.
            std::process::exit(1);
        }
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completion", post(completion))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(app);
    // Tokens are small writes: without TCP_NODELAY, Nagle + delayed ACK hold
    // each one back by ~40 ms.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    axum::serve(listener, router).await
}

async fn health(State(app): State<Shared>) -> Response {
    match app.engine.get() {
        Some(Ok(_)) => Json(json!({"status": "ok"})).into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model"),
    }
}

/// Auth and readiness; the engine when both pass.
#[allow(clippy::result_large_err)] // a ready Response, once per request
fn admit(app: &App, headers: &HeaderMap) -> Result<Arc<Engine>, Response> {
    if let Some(key) = &app.opts.api_key {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {key}").as_str());
        if !ok {
            return Err(error(StatusCode::UNAUTHORIZED, "authentication_error", "Invalid API Key"));
        }
    }
    match app.engine.get() {
        Some(Ok(e)) => Ok(e.clone()),
        _ => Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model")),
    }
}

#[allow(clippy::result_large_err)]
fn body_json(body: &str) -> Result<Value, Response> {
    serde_json::from_str(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("invalid JSON: {e}")))
}

/// [`admit`] then the JSON body: what every POST handler starts with.
#[allow(clippy::result_large_err)]
fn admit_json(app: &App, headers: &HeaderMap, body: &str) -> Result<(Arc<Engine>, Value), Response> {
    let engine = admit(app, headers)?;
    Ok((engine, body_json(body)?))
}

fn model_id(app: &App) -> String {
    app.opts.model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

async fn models(State(app): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&app, &headers) {
        return r;
    }
    Json(json!({"object": "list", "data": [{"id": model_id(&app), "object": "model", "created": 0, "owned_by": "bitnet-host"}]}))
        .into_response()
}

/// Sampling settings from an OpenAI or llama-server body.
fn sampler(body: &Value) -> SamplerConfig {
    let d = SamplerConfig::default();
    let f = |k: &str, def: f32| body[k].as_f64().map(|v| v as f32).unwrap_or(def);
    SamplerConfig {
        temperature: f("temperature", d.temperature),
        top_k: body["top_k"].as_u64().map(|v| v as usize).unwrap_or(d.top_k),
        top_p: f("top_p", d.top_p),
        min_p: f("min_p", d.min_p),
        repeat_penalty: f("repeat_penalty", d.repeat_penalty),
        repeat_last_n: body["repeat_last_n"].as_u64().map(|v| v as usize).unwrap_or(d.repeat_last_n),
        presence_penalty: f("presence_penalty", d.presence_penalty),
        frequency_penalty: f("frequency_penalty", d.frequency_penalty),
        seed: body["seed"].as_u64().unwrap_or(d.seed),
    }
}

fn stops(body: &Value) -> Vec<String> {
    match &body["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

fn max_tokens(body: &Value, engine: &Engine) -> usize {
    let v = body["max_tokens"].as_i64().or(body["n_predict"].as_i64()).unwrap_or(-1);
    if v < 0 {
        engine.n_ctx
    } else {
        v as usize
    }
}

/// What kind of answer a generation produces.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Chat,
    OpenAiText,
    LlamaCompletion,
}

async fn chat(State(app): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (engine, body) = match admit_json(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(msgs) = body["messages"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'messages' is required");
    };
    let mut messages = Vec::new();
    for m in msgs {
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            // Content parts: the text ones.
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
            _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "message content must be text"),
        };
        messages.push(Message { role: m["role"].as_str().unwrap_or("user").to_string(), content });
    }
    let prompt = engine.chat_tokens(&messages);
    run(app, engine, &body, prompt, Shape::Chat).await
}

async fn completions(State(app): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (engine, body) = match admit_json(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(p) = body["prompt"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'prompt' must be a string");
    };
    let prompt = engine.tokenizer.encode(p, true, true);
    run(app, engine, &body, prompt, Shape::OpenAiText).await
}

async fn completion(State(app): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (engine, body) = match admit_json(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let prompt = match &body["prompt"] {
        Value::String(s) => engine.tokenizer.encode(s, true, true),
        Value::Array(ids) if ids.iter().all(|v| v.as_u64().is_some()) => {
            ids.iter().filter_map(Value::as_u64).map(|v| v as u32).collect()
        }
        _ => return error(StatusCode::BAD_REQUEST, "invalid_request_error", "'prompt' must be a string or token ids"),
    };
    run(app, engine, &body, prompt, Shape::LlamaCompletion).await
}

/// One generation: streamed as SSE when `stream` is true, else one JSON.
async fn run(app: Shared, engine: Arc<Engine>, body: &Value, prompt: Vec<u32>, shape: Shape) -> Response {
    let n_probs =
        if shape == Shape::LlamaCompletion { body["n_probs"].as_u64().unwrap_or(0).min(100) as usize } else { 0 };
    // Refused before anything streams, with llama-server's error type and
    // figures, so the client learns why (a stream would have to end in an
    // error event instead).
    if prompt.is_empty() || prompt.len() >= engine.n_ctx {
        let (n, ctx) = (prompt.len(), engine.n_ctx);
        let message = if n == 0 {
            "the prompt is empty".to_string()
        } else {
            format!("the request exceeds the available context size: the prompt is {n} tokens, the context {ctx}")
        };
        let body = json!({"error": {"code": 400, "message": message, "type": "exceed_context_size_error",
            "n_prompt_tokens": n, "n_ctx": ctx}});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let req = Generate {
        prompt,
        max_tokens: max_tokens(body, &engine),
        sampler: sampler(body),
        stop: stops(body),
        n_probs,
        // On unless the client says no, as in llama-server.
        cache_prompt: body["cache_prompt"].as_bool().unwrap_or(true),
    };
    let stream = body["stream"] == true;
    let return_tokens = body["return_tokens"] == true;
    let model = model_id(&app);
    let Ok(permit) = app.slots.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "shutting down");
    };
    let Some(batcher) = app.batcher.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "Loading model");
    };
    // Unbounded: the batcher thread serves every request and must never
    // wait on one slow client (a piece is at most max_tokens long in all).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
    let done = batcher.submit(req, Box::new(move |piece, tok| tx.send((piece.to_string(), tok)).is_ok()));
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        done.recv().unwrap_or(Err(crate::engine::EngineError::Closed))
    });
    let chunk = move |piece: Option<&str>, finish: Option<&str>, extra: Option<Value>| -> Value {
        let mut v = match shape {
            Shape::Chat => {
                json!({"id": "chatcmpl-bitnet", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": piece.map(|p| json!({"content": p})).unwrap_or(json!({})), "finish_reason": finish}]})
            }
            Shape::OpenAiText => json!({"id": "cmpl-bitnet", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": piece.unwrap_or(""), "finish_reason": finish}]}),
            Shape::LlamaCompletion => json!({"content": piece.unwrap_or(""), "stop": finish.is_some()}),
        };
        if let Some(Value::Object(e)) = extra {
            if let Value::Object(m) = &mut v {
                m.extend(e);
            }
        }
        v
    };
    if stream {
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
        tokio::spawn(async move {
            let mut rx = rx;
            if shape == Shape::Chat {
                let first = json!({"id": "chatcmpl-bitnet", "object": "chat.completion.chunk", "created": 0,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}]});
                if out_tx.send(Ok(format!("data: {first}\n\n"))).await.is_err() {
                    return;
                }
            }
            while let Some((piece, tok)) = rx.recv().await {
                let mut c = chunk(Some(&piece), None, None);
                if shape == Shape::LlamaCompletion && return_tokens {
                    c["tokens"] = json!([tok]);
                }
                if out_tx.send(Ok(format!("data: {c}\n\n"))).await.is_err() {
                    // Client gone: dropping rx makes the generator stop.
                    return;
                }
            }
            let outcome = job.await;
            let (finish, usage, timings) = match outcome {
                Ok(Ok(o)) => (o.finish.as_str(), usage(&o), timings(&o)),
                Ok(Err(e)) => {
                    let _ =
                        out_tx.send(Ok(format!("data: {}\n\n", json!({"error": {"message": e.to_string()}})))).await;
                    return;
                }
                Err(_) => return,
            };
            let last = chunk(None, Some(finish), Some(json!({"usage": usage, "timings": timings})));
            let _ = out_tx.send(Ok(format!("data: {last}\n\n"))).await;
            if shape != Shape::LlamaCompletion {
                let _ = out_tx.send(Ok("data: [DONE]\n\n".to_string())).await;
            }
        });
        let s = futures_util::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Body::from_stream(s))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut rx = rx;
    let mut text = String::new();
    let mut toks = Vec::new();
    while let Some((piece, tok)) = rx.recv().await {
        text.push_str(&piece);
        toks.push(tok);
    }
    let o = match job.await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", &e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    };
    let usage = usage(&o);
    let finish = o.finish.as_str();
    let v = match shape {
        Shape::Chat => {
            json!({"id": "chatcmpl-bitnet", "object": "chat.completion", "created": 0, "model": model_id(&app),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}], "usage": usage, "timings": timings(&o)})
        }
        Shape::OpenAiText => {
            json!({"id": "cmpl-bitnet", "object": "text_completion", "created": 0, "model": model_id(&app),
            "choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": usage, "timings": timings(&o)})
        }
        Shape::LlamaCompletion => {
            let mut v = json!({"content": text, "stop": true, "stop_type": if finish == "length" { "limit" } else { "eos" },
                "tokens_predicted": o.tokens.len(), "tokens_evaluated": o.prompt_tokens, "tokens_cached": o.cached_tokens,
                "timings": timings(&o)});
            if return_tokens {
                v["tokens"] = json!(o.tokens);
            }
            if n_probs > 0 {
                let tok = &engine.tokenizer;
                let piece = |t: u32| String::from_utf8_lossy(&tok.piece(t, true)).into_owned();
                let probs: Vec<Value> = o
                    .tokens
                    .iter()
                    .zip(&o.probs)
                    .map(|(t, top)| {
                        let list: Vec<Value> =
                            top.iter().map(|(id, p)| json!({"id": id, "tok_str": piece(*id), "prob": p})).collect();
                        json!({"id": t, "content": piece(*t), "probs": list})
                    })
                    .collect();
                v["completion_probabilities"] = json!(probs);
            }
            v
        }
    };
    Json(v).into_response()
}

/// OpenAI's usage, with the prompt tokens a kept cache answered
/// (`prompt_tokens_details.cached_tokens`, as OpenAI names them).
fn usage(o: &Outcome) -> Value {
    json!({"prompt_tokens": o.prompt_tokens, "completion_tokens": o.tokens.len(),
        "total_tokens": o.prompt_tokens + o.tokens.len(),
        "prompt_tokens_details": {"cached_tokens": o.cached_tokens}})
}

/// llama-server's `timings`: the prompt tokens computed (`prompt_n`, the
/// cached ones in `cache_n`) and the generated ones, with their times.
fn timings(o: &Outcome) -> Value {
    let prompt_n = o.prompt_tokens - o.cached_tokens;
    let predicted_n = o.tokens.len();
    let per = |ms: f64, n: usize| if n > 0 { ms / n as f64 } else { 0.0 };
    let rate = |ms: f64, n: usize| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    json!({
        "cache_n": o.cached_tokens,
        "prompt_n": prompt_n, "prompt_ms": o.prompt_ms,
        "prompt_per_token_ms": per(o.prompt_ms, prompt_n), "prompt_per_second": rate(o.prompt_ms, prompt_n),
        "predicted_n": predicted_n, "predicted_ms": o.decode_ms,
        "predicted_per_token_ms": per(o.decode_ms, predicted_n), "predicted_per_second": rate(o.decode_ms, predicted_n),
    })
}

async fn tokenize(State(app): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (engine, body) = match admit_json(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let content = body["content"].as_str().unwrap_or("");
    let add_special = body["add_special"].as_bool().unwrap_or(false);
    Json(json!({"tokens": engine.tokenizer.encode(content, add_special, true)})).into_response()
}

async fn detokenize(State(app): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (engine, body) = match admit_json(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ids: Vec<u32> = body["tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect())
        .unwrap_or_default();
    Json(json!({"content": engine.tokenizer.decode(&ids, true)})).into_response()
}
