//! Inference requests: `chat`, `complete`, `embed`, `tokenize`,
//! `detokenize`, `models`. Each waits for the loaded model's server (sending
//! `load` events meanwhile), takes a slot, and goes through the proxy. A
//! streamed answer is one `delta` event per piece the server sends, as soon
//! as it arrives; cancelling drops the upstream connection, which stops the
//! server generating.

use std::time::{Duration, Instant};

use bitnet_supervisor::{Endpoint, Job, ProxyError};
use serde_json::{json, Map, Value};

use crate::protocol::{ErrorCode, ProtoError};
use crate::session::Ctx;

type Params = Map<String, Value>;
type Outcome = Result<Value, ProtoError>;

/// Sampling and limit fields passed through to the server as they are.
const PASS_THROUGH: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "max_tokens",
];

/// Non-streaming calls (embeddings, tokenize) get this long in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

pub fn proxy_error(e: ProxyError) -> ProtoError {
    let code = match &e {
        ProxyError::Unreachable(_) | ProxyError::Disconnected(_) => ErrorCode::BackendCrashed,
        ProxyError::Stalled(_) => ErrorCode::Timeout,
        ProxyError::BadResponse(_) => ErrorCode::BackendError,
        ProxyError::Http { status, .. } => match status {
            400 | 422 => ErrorCode::InvalidRequest,
            401 | 403 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            429 | 503 => ErrorCode::Busy,
            _ => ErrorCode::BackendError,
        },
    };
    let details = match &e {
        ProxyError::Http { status, message } => Some(json!({"status": status, "backend_message": message})),
        _ => None,
    };
    let err = ProtoError::new(code, e.to_string());
    match details {
        Some(d) => err.with_details(d),
        None => err,
    }
}

/// The server for the loaded model, once ready; `load` events while it is
/// starting or reloading.
pub async fn ready_with_progress(ctx: &Ctx, job: &Job) -> Result<Endpoint, ProtoError> {
    let mut states = job.subscribe();
    let ready = job.ready();
    tokio::pin!(ready);
    let mut last_sent = String::new();
    loop {
        tokio::select! {
            r = &mut ready => {
                return r.map_err(|e| match e {
                    bitnet_supervisor::JobError::GaveUp { error, attempts, tail } => {
                        // A remote that refused our key is the user's to fix:
                        // say so with its own code.
                        let refused = attempts.last().is_some_and(|a| {
                            matches!(a.failure, bitnet_supervisor::Failure::Remote { status: Some(401 | 403), .. })
                        });
                        let code = if refused { ErrorCode::Unauthorized } else { ErrorCode::BackendCrashed };
                        ProtoError::new(code, error).with_details(json!({"attempts": attempts, "tail": tail}))
                    }
                    bitnet_supervisor::JobError::Stopped => {
                        ProtoError::new(ErrorCode::Cancelled, "the model was unloaded before it was ready")
                    }
                });
            }
            changed = states.changed() => {
                if changed.is_err() {
                    continue;
                }
                let s = states.borrow_and_update().clone();
                if s.name() == "ready" {
                    continue;
                }
                let fields = match serde_json::to_value(&s) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                let key = Value::Object(fields.clone()).to_string();
                if key != last_sent {
                    last_sent = key;
                    ctx.event("load", fields).await;
                }
            }
        }
    }
}

/// A server that died a moment ago can still be listed as ready when the
/// next request tries to connect. Nothing reached it, so the request may
/// go again: wait until the supervisor has seen the exit (the state leaves
/// that process), then take the restarted server's endpoint.
async fn restarted(ctx: &Ctx, job: &Job, dead: &Endpoint) -> Result<Endpoint, ProtoError> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        match job.state() {
            bitnet_supervisor::JobState::Ready { pid, .. } if pid == dead.pid => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => break,
        }
    }
    ready_with_progress(ctx, job).await
}

async fn loaded(ctx: &Ctx) -> Result<(Job, Endpoint), ProtoError> {
    let Some((job, _)) = ctx.app.backend.current().await else {
        let message = match ctx.app.backend.last_failure() {
            Some((path, why)) => format!(
                "no model is loaded: loading {} failed ({why}); send `load_model` again, or with another model",
                path.display()
            ),
            None => "no model is loaded: send `load_model` first".to_string(),
        };
        return Err(ProtoError::new(ErrorCode::NotAvailable, message));
    };
    let ep = ready_with_progress(ctx, &job).await?;
    Ok((job, ep))
}

/// Most tokens one request may ask for (`max_tokens`).
const MAX_TOKENS: u64 = 1 << 20;

/// The generation parameters a request may set, each checked by type and
/// range: a bad one is `invalid_request` naming it, never a silent default
/// (`max_tokens: -5` or `"16"` used to mean "unlimited").
fn check_params(params: &Params) -> Result<(), ProtoError> {
    let bad = |field: &str, want: &str| {
        ProtoError::new(ErrorCode::InvalidRequest, format!("`{field}` must be {want}"))
            .with_details(json!({"field": field}))
    };
    let number = |field: &str, lo: f64, hi: f64| -> Result<(), ProtoError> {
        match params.get(field) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_f64().is_some_and(|x| (lo..=hi).contains(&x)) => Ok(()),
            Some(_) => Err(bad(field, &format!("a number from {lo} to {hi}"))),
        }
    };
    let integer = |field: &str, lo: i64, hi: i64| -> Result<(), ProtoError> {
        match params.get(field) {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_i64().is_some_and(|x| (lo..=hi).contains(&x)) => Ok(()),
            Some(_) => Err(bad(field, &format!("an integer from {lo} to {hi}"))),
        }
    };
    number("temperature", 0.0, 10.0)?;
    number("top_p", 0.0, 1.0)?;
    number("min_p", 0.0, 1.0)?;
    number("repeat_penalty", 0.0, 10.0)?;
    number("presence_penalty", -2.0, 2.0)?;
    number("frequency_penalty", -2.0, 2.0)?;
    integer("top_k", 0, 1_000_000)?;
    integer("seed", -1, i64::from(u32::MAX))?;
    integer("max_tokens", 1, MAX_TOKENS as i64)?;
    match params.get("stop") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.len() <= 16 && a.iter().all(Value::is_string) => {}
        Some(_) => return Err(bad("stop", "a string or an array of at most 16 strings")),
    }
    match params.get("stream") {
        None | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(bad("stream", "true or false")),
    }
}

fn validate_messages(params: &Params) -> Result<Value, ProtoError> {
    let bad = |m: &str| ProtoError::new(ErrorCode::InvalidRequest, m.to_string());
    let Some(Value::Array(msgs)) = params.get("messages") else {
        return Err(bad("`messages` must be an array of {role, content}"));
    };
    if msgs.is_empty() {
        return Err(bad("`messages` is empty"));
    }
    for m in msgs {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("system" | "user" | "assistant" | "tool")) {
            return Err(bad("each message needs `role`: system, user, assistant or tool"));
        }
        if !matches!(m.get("content"), Some(Value::String(_) | Value::Array(_))) {
            return Err(bad("each message needs `content` (a string or content parts)"));
        }
    }
    Ok(Value::Array(msgs.clone()))
}

/// The upstream body: the request's fields that the server understands.
fn upstream_body(params: &Params, first: (&str, Value), stream: bool) -> Value {
    let mut body = Map::new();
    body.insert(first.0.into(), first.1);
    for k in PASS_THROUGH {
        if let Some(v) = params.get(*k) {
            body.insert((*k).into(), v.clone());
        }
    }
    body.insert("stream".into(), Value::Bool(stream));
    if stream {
        // Ask OpenAI-style servers for usage in the last chunk.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn idle_timeout(ctx: &Ctx, params: &Params) -> Result<Duration, ProtoError> {
    match params.get("idle_timeout_ms") {
        None => Ok(ctx.app.backend.settings().request_timeout),
        Some(v) => match v.as_u64() {
            Some(ms) if (1..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(ProtoError::new(ErrorCode::InvalidRequest, "`idle_timeout_ms` must be 1 to 3600000")),
        },
    }
}

pub async fn chat(ctx: &Ctx, params: &Params) -> Outcome {
    let messages = validate_messages(params)?;
    generate(ctx, params, "/v1/chat/completions", ("messages", messages)).await
}

pub async fn complete(ctx: &Ctx, params: &Params) -> Outcome {
    let Some(prompt) = params.get("prompt").and_then(Value::as_str) else {
        return Err(ProtoError::new(ErrorCode::InvalidRequest, "`prompt` must be a string"));
    };
    generate(ctx, params, "/v1/completions", ("prompt", Value::from(prompt))).await
}

/// The text of a reply or streamed chunk: a chat message or delta, an
/// OpenAI completion's text, or llama-server's native `content`. Servers
/// from before llama.cpp shaped `/v1/completions` like OpenAI's (late 2024;
/// bitnet.cpp's 2024 builds among them) answer it in the native shape:
/// `content`, `stop`, `stopped_limit`, `tokens_evaluated`, `tokens_predicted`.
fn text_of(chunk: &Value) -> Option<&str> {
    let c = &chunk["choices"][0];
    c["message"]["content"]
        .as_str()
        .or(c["delta"]["content"].as_str())
        .or(c["text"].as_str())
        .or(chunk["content"].as_str())
}

/// The text piece of one streamed chunk, when it carries any.
fn piece(chunk: &Value) -> Option<&str> {
    text_of(chunk).filter(|s| !s.is_empty())
}

/// Why the answer ended, once a chunk says so (null until then).
fn finish_of(chunk: &Value) -> Value {
    match chunk["choices"][0].get("finish_reason").filter(|v| !v.is_null()) {
        Some(fr) => fr.clone(),
        None if chunk["stop"] == true => Value::from(if chunk["stopped_limit"] == true { "length" } else { "stop" }),
        None => Value::Null,
    }
}

/// Token counts, when a chunk carries them (OpenAI `usage` or the native
/// counters of the last chunk).
fn usage_of(chunk: &Value) -> Option<Value> {
    if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
        return Some(u.clone());
    }
    let (Some(prompt), Some(completion)) = (chunk["tokens_evaluated"].as_u64(), chunk["tokens_predicted"].as_u64())
    else {
        return None;
    };
    Some(json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}))
}

async fn generate(ctx: &Ctx, params: &Params, path: &str, first: (&str, Value)) -> Outcome {
    check_params(params)?;
    let stream = params.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let idle = idle_timeout(ctx, params)?;
    // The slot first: a server swap (reload_binaries) holds every slot, so
    // no request holds an endpoint that is about to go away.
    let _slot = ctx.app.backend.slot().await?;
    let (job, mut ep) = loaded(ctx).await?;
    // In use until the answer is done: the keep-alive never stops it mid-stream.
    let _lease = job.lease();
    job.touch();
    let body = upstream_body(params, first, stream);
    let proxy = &ctx.app.backend.proxy;
    let started = Instant::now();
    if !stream {
        let r = match proxy.post_json(&ep, path, &body, idle.max(CALL_TIMEOUT)).await {
            Err(ProxyError::Unreachable(_)) => {
                ep = restarted(ctx, &job, &ep).await?;
                proxy.post_json(&ep, path, &body, idle.max(CALL_TIMEOUT)).await
            }
            r => r,
        }
        .map_err(proxy_error)?;
        job.touch();
        let mut timings = json!({"total_ms": started.elapsed().as_secs_f64() * 1e3});
        merge_server_timings(&mut timings, &r["timings"]);
        return Ok(json!({
            "text": text_of(&r).unwrap_or(""),
            "finish_reason": finish_of(&r),
            "usage": usage_of(&r),
            "timings": timings,
            "backend": ep.candidate,
        }));
    }
    let mut sse = match proxy.post_sse(&ep, path, &body, idle).await {
        Err(ProxyError::Unreachable(_)) => {
            ep = restarted(ctx, &job, &ep).await?;
            proxy.post_sse(&ep, path, &body, idle).await
        }
        r => r,
    }
    .map_err(proxy_error)?;
    let mut text = String::new();
    let mut pieces: u64 = 0;
    let mut first_at: Option<Instant> = None;
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    let mut server_timings = Value::Null;
    while let Some(chunk) = sse.next().await {
        let chunk = chunk.map_err(proxy_error)?;
        if let Some(p) = piece(&chunk) {
            pieces += 1;
            let first = *first_at.get_or_insert_with(Instant::now);
            let secs = first.elapsed().as_secs_f64();
            let tps = if pieces > 1 && secs > 0.0 { (pieces - 1) as f64 / secs } else { 0.0 };
            text.push_str(p);
            let mut f = Map::new();
            f.insert("text".into(), Value::from(p));
            f.insert("tokens".into(), Value::from(pieces));
            f.insert("tps".into(), Value::from((tps * 10.0).round() / 10.0));
            if !ctx.event("delta", f).await {
                break;
            }
        }
        let fr = finish_of(&chunk);
        if !fr.is_null() {
            finish = fr;
        }
        if let Some(u) = usage_of(&chunk) {
            usage = u;
        }
        if chunk.get("timings").is_some_and(Value::is_object) {
            server_timings = chunk["timings"].clone();
        }
    }
    job.touch();
    let total = started.elapsed();
    let ttft = first_at.map(|t| (t - started).as_secs_f64() * 1e3);
    let gen_secs = first_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    if usage.is_null() {
        usage = json!({"completion_tokens": pieces});
    }
    let mut timings = json!({
        "ttft_ms": ttft,
        "total_ms": total.as_secs_f64() * 1e3,
        "tokens_per_s": if pieces > 1 && gen_secs > 0.0 { Some((pieces - 1) as f64 / gen_secs) } else { None },
    });
    merge_server_timings(&mut timings, &server_timings);
    Ok(json!({
        "text": text,
        "finish_reason": finish,
        "usage": usage,
        "timings": timings,
        "backend": ep.candidate,
    }))
}

/// The server's own figures (llama-server's `timings`: prompt tokens
/// computed and taken from its cache, prompt and decode time and speed)
/// beside the host's, when the server gives them.
fn merge_server_timings(ours: &mut Value, server: &Value) {
    const KEYS: [&str; 8] = [
        "cache_n",
        "prompt_n",
        "prompt_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_second",
        "predicted_per_token_ms",
    ];
    if let (Value::Object(o), Value::Object(s)) = (ours, server) {
        for k in KEYS {
            if let Some(v) = s.get(k).filter(|v| v.is_number()) {
                o.insert(k.into(), v.clone());
            }
        }
    }
}

pub async fn embed(ctx: &Ctx, params: &Params) -> Outcome {
    let input = match params.get("input") {
        Some(v @ Value::String(_)) => v.clone(),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => Value::Array(a.clone()),
        _ => return Err(ProtoError::new(ErrorCode::InvalidRequest, "`input` must be a string or an array of strings")),
    };
    let _slot = ctx.app.backend.slot().await?;
    let (job, ep) = loaded(ctx).await?;
    let _lease = job.lease();
    job.touch();
    let r = ctx
        .app
        .backend
        .proxy
        .post_json(&ep, "/v1/embeddings", &json!({"input": input}), CALL_TIMEOUT)
        .await
        .map_err(|e| match e {
            // No such endpoint (the built-in engine; llama-server without
            // --embeddings): say what is missing, not "not found".
            ProxyError::Http { status: 404 | 501, .. } => ProtoError::new(
                ErrorCode::NotAvailable,
                format!("the loaded backend ({}) does not serve embeddings; load the model on a llama-server build started with embeddings on", ep.candidate),
            ),
            e => proxy_error(e),
        })?;
    let mut data: Vec<Value> = r["data"].as_array().cloned().unwrap_or_default();
    data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
    let embeddings: Vec<Value> = data.into_iter().map(|d| d["embedding"].clone()).collect();
    Ok(json!({"embeddings": embeddings, "usage": r["usage"], "backend": ep.candidate}))
}

pub async fn tokenize(ctx: &Ctx, params: &Params) -> Outcome {
    let Some(text) = params.get("text").and_then(Value::as_str) else {
        return Err(ProtoError::new(ErrorCode::InvalidRequest, "`text` must be a string"));
    };
    let mut body = json!({"content": text});
    if let Some(b) = params.get("add_special").and_then(Value::as_bool) {
        body["add_special"] = Value::Bool(b);
    }
    let (_, ep) = loaded(ctx).await?;
    let r = ctx.app.backend.proxy.post_json(&ep, "/tokenize", &body, CALL_TIMEOUT).await.map_err(proxy_error)?;
    Ok(json!({"tokens": r["tokens"]}))
}

pub async fn detokenize(ctx: &Ctx, params: &Params) -> Outcome {
    let tokens = match params.get("tokens") {
        Some(Value::Array(a)) if a.iter().all(|t| t.as_u64().is_some()) => a.clone(),
        _ => return Err(ProtoError::new(ErrorCode::InvalidRequest, "`tokens` must be an array of token ids")),
    };
    let (_, ep) = loaded(ctx).await?;
    let r = ctx
        .app
        .backend
        .proxy
        .post_json(&ep, "/detokenize", &json!({"tokens": tokens}), CALL_TIMEOUT)
        .await
        .map_err(proxy_error)?;
    Ok(json!({"text": r["content"]}))
}

/// Loaded and available models: the loaded one, and every .gguf under the
/// data dir's `models/` (two levels deep), each with size, format and
/// architecture read from its header.
/// The models folder's files (and a loaded file from elsewhere), named as
/// `models` lists them; `default`: what to load when the user has not
/// chosen (a pulled catalog model, else the generated default); `catalog`:
/// the models `pull` knows by short name, and whether each is here.
pub async fn models(ctx: &Ctx, params: &Params) -> Outcome {
    let loaded_only = params.get("loaded_only").and_then(Value::as_bool).unwrap_or(false);
    let current = ctx.app.backend.current().await;
    let root = ctx.app.dirs.as_ref().map(|d| d.data.join("models"));
    let name = |p: &std::path::Path| match &root {
        Some(r) => crate::backend::model_name(r, p),
        None => file_name(p),
    };
    let mut out = Vec::new();
    if let Some((job, info)) = &current {
        out.push(json!({
            "path": info.path, "name": name(&info.path), "bytes": info.bytes, "format": info.format,
            "architecture": info.architecture, "loaded": true, "state": job.state().name(),
        }));
    }
    let mut reply = Map::new();
    if let (false, Some(root)) = (loaded_only, root.clone()) {
        let loaded_path = current.as_ref().map(|(_, i)| i.path.clone());
        // Reading headers is file I/O: off the async threads.
        let app = ctx.app.clone();
        let scan = root.clone();
        let found = tokio::task::spawn_blocking(move || app.backend.found_models(&scan)).await.unwrap_or_default();
        for m in found {
            if Some(&m.path) == loaded_path.as_ref() {
                continue;
            }
            out.push(json!({
                "path": m.path, "name": name(&m.path), "bytes": m.bytes, "format": m.format,
                "architecture": m.architecture, "loaded": false, "error": m.error,
            }));
        }
        let default = crate::backend::default_model(&root).map(|p| name(&p));
        reply.insert("default".into(), json!(default));
        let catalog: Vec<Value> = crate::catalog::CATALOG
            .iter()
            .map(|m| {
                json!({"name": m.name, "title": m.title, "bytes": m.approx_bytes, "format": m.format,
                       "pulled": m.path(&root).is_file()})
            })
            .collect();
        reply.insert("catalog".into(), json!(catalog));
    }
    reply.insert("models".into(), json!(out));
    Ok(Value::Object(reply))
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_servers_own_timings_join_the_hosts_and_nothing_else_does() {
        let mut ours = json!({"ttft_ms": 12.0, "total_ms": 40.0});
        let server = json!({"cache_n": 30, "prompt_n": 5, "prompt_ms": 9.5, "predicted_per_second": 21.0,
                            "ttft_ms": 1, "prompt_per_second": "fast", "evil": true});
        super::merge_server_timings(&mut ours, &server);
        assert_eq!(
            ours,
            json!({"ttft_ms": 12.0, "total_ms": 40.0, "cache_n": 30, "prompt_n": 5, "prompt_ms": 9.5,
                   "predicted_per_second": 21.0})
        );
        // A server without timings changes nothing.
        let before = ours.clone();
        super::merge_server_timings(&mut ours, &serde_json::Value::Null);
        assert_eq!(ours, before);
    }

    #[test]
    fn completions_are_read_in_the_openai_shape_and_in_llama_servers_native_one() {
        use super::{finish_of, piece, text_of, usage_of};
        // OpenAI chat, streamed and whole, and an OpenAI completion.
        let delta = json!({"choices": [{"delta": {"content": "Hi"}, "finish_reason": null}]});
        assert_eq!(piece(&delta), Some("Hi"));
        assert!(finish_of(&delta).is_null());
        let whole = json!({"choices": [{"message": {"content": "Hi there"}, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
        assert_eq!(text_of(&whole), Some("Hi there"));
        assert_eq!(finish_of(&whole), "length");
        assert_eq!(usage_of(&whole).unwrap()["completion_tokens"], 2);
        assert_eq!(piece(&json!({"choices": [{"text": " fox", "finish_reason": "stop"}]})), Some(" fox"));
        // The native shape (what bitnet.cpp's 2024 llama-server answered on /v1/completions).
        let chunk = json!({"content": "v#", "stop": false, "id_slot": 0, "multimodal": false});
        assert_eq!(piece(&chunk), Some("v#"));
        assert!(finish_of(&chunk).is_null());
        assert_eq!(usage_of(&chunk), None);
        let last = json!({"content": "", "stop": true, "stopped_limit": true, "stopped_eos": false,
                          "tokens_evaluated": 21, "tokens_predicted": 3});
        assert_eq!(piece(&last), None);
        assert_eq!(finish_of(&last), "length");
        assert_eq!(usage_of(&last).unwrap(), json!({"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}));
        let eos = json!({"content": "end", "stop": true, "stopped_eos": true, "stopped_limit": false});
        assert_eq!(finish_of(&eos), "stop");
        // Nothing to read is no text, not a panic.
        assert_eq!(text_of(&json!({"choices": []})), None);
    }
}
