//! Request handlers, one function per v1 request type.
//!
//! A handler returns the final result; it sends events through [`Ctx`] while
//! it runs. Cancellation is handled by the session (the handler's future is
//! dropped), so handlers only need to be cancel-safe at their await points.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::protocol::message::PROTOCOL_VERSIONS;
use crate::protocol::{ErrorCode, ProtoError, RequestId};
use crate::session::{Ctx, Role};

pub mod infer;
pub mod server;

type Params = Map<String, Value>;
type Outcome = Result<Value, ProtoError>;

/// Request types that exist in protocol v1 but whose backend is not part of
/// this build yet, with what is missing. They answer `not_available`, never a
/// made-up success.
const NOT_YET: &[(&str, &str)] = &[("settings", "settings are not available yet")];

/// Requests only this user's CLI may send the daemon (not in `hello`'s
/// capabilities: an extension gets `forbidden`).
pub const CONTROLS: &[&str] = &["retire", "reload_binaries"];

/// Request types this host answers an extension (`hello`'s capabilities).
pub const IMPLEMENTED: &[&str] = &[
    "hello",
    "ping",
    "status",
    "cancel",
    "hardware",
    "model_state",
    "load_model",
    "unload_model",
    "logs",
    "chat",
    "complete",
    "embed",
    "tokenize",
    "detokenize",
    "models",
    "pull",
    "echo",
];

pub async fn handle(ctx: &Ctx, kind: &str, params: &Params) -> Outcome {
    match kind {
        "hello" => hello(ctx, params).await,
        "ping" => Ok(ping()),
        "status" => Ok(status(ctx).await),
        "cancel" => cancel(ctx, params),
        "hardware" => hardware(ctx).await,
        "model_state" => Ok(model_state(ctx).await),
        "load_model" => crate::session::handlers::server::load_model(ctx, params).await,
        "unload_model" => crate::session::handlers::server::unload_model(ctx).await,
        "relay_hello" => Err(ProtoError::new(ErrorCode::Forbidden, "`relay_hello` is only a relay's first message")),
        "retire" | "reload_binaries" if ctx.role != Role::Control => Err(ProtoError::new(
            ErrorCode::Forbidden,
            format!("`{kind}` is a daemon control: only this user's bitnet-host CLI may send it"),
        )),
        "retire" => Ok(retire(ctx).await),
        "reload_binaries" => crate::session::handlers::server::reload_binaries(ctx).await,
        "logs" => crate::session::handlers::server::logs(ctx, params).await,
        "chat" => crate::session::handlers::infer::chat(ctx, params).await,
        "complete" => crate::session::handlers::infer::complete(ctx, params).await,
        "embed" => crate::session::handlers::infer::embed(ctx, params).await,
        "tokenize" => crate::session::handlers::infer::tokenize(ctx, params).await,
        "detokenize" => crate::session::handlers::infer::detokenize(ctx, params).await,
        "models" => crate::session::handlers::infer::models(ctx, params).await,
        "pull" => pull(ctx, params).await,
        "echo" => echo(ctx, params).await,
        other => match NOT_YET.iter().find(|(k, _)| *k == other) {
            Some((_, why)) => Err(ProtoError::new(ErrorCode::NotAvailable, format!("`{other}`: {why}"))),
            None => Err(ProtoError::new(ErrorCode::UnknownType, format!("unknown request type `{other}`"))
                .with_details(json!({"known": known_types()}))),
        },
    }
}

/// The backend's errors as the wire says them.
impl From<crate::backend::BackendError> for ProtoError {
    fn from(e: crate::backend::BackendError) -> Self {
        use crate::backend::BackendError as B;
        let code = match &e {
            B::NotAbsolute | B::Unusable { .. } => ErrorCode::InvalidRequest,
            B::NotFound(_) => ErrorCode::NotFound,
            B::Busy { .. } => ErrorCode::Busy,
            B::NothingCanRun { .. } => ErrorCode::NotAvailable,
            B::Internal(_) => ErrorCode::Internal,
        };
        let error = ProtoError::new(code, e.to_string());
        match e {
            B::NothingCanRun { skipped, .. } => error.with_details(json!({"skipped": skipped})),
            _ => error,
        }
    }
}

fn known_types() -> Vec<&'static str> {
    IMPLEMENTED.iter().chain(CONTROLS).copied().chain(NOT_YET.iter().map(|(k, _)| *k)).collect()
}

async fn hello(ctx: &Ctx, params: &Params) -> Outcome {
    let selected = match params.get("protocol_versions") {
        None => PROTOCOL_VERSIONS.iter().max().copied(),
        Some(Value::Array(offered)) => {
            let offered: Vec<u64> = offered.iter().filter_map(Value::as_u64).collect();
            PROTOCOL_VERSIONS.iter().copied().filter(|v| offered.contains(&u64::from(*v))).max()
        }
        Some(_) => {
            return Err(ProtoError::new(ErrorCode::InvalidRequest, "`protocol_versions` must be an array of integers"))
        }
    };
    let Some(selected) = selected else {
        return Err(ProtoError::new(ErrorCode::UnsupportedVersion, "no protocol version in common")
            .with_details(json!({"supported": PROTOCOL_VERSIONS})));
    };
    Ok(json!({
        "protocol": {"versions": PROTOCOL_VERSIONS, "selected": selected},
        "host": {"name": "bitnet-host", "version": crate::VERSION, "pid": std::process::id()},
        "capabilities": IMPLEMENTED,
        "limits": {
            "max_inbound_frame": crate::protocol::frame::MAX_INBOUND,
            "max_outbound_frame": crate::protocol::frame::MAX_OUTBOUND,
        },
        "hardware": hardware_or_null(ctx).await,
        "backends": [],
    }))
}

fn ping() -> Value {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    json!({"pong": true, "version": crate::VERSION, "pid": std::process::id(), "time_ms": now_ms})
}

async fn status(ctx: &Ctx) -> Value {
    json!({
        "hardware": hardware_or_null(ctx).await,
        "version": crate::VERSION,
        "pid": std::process::id(),
        "uptime_ms": ctx.app.started.elapsed().as_millis() as u64,
        // The status request itself is one of them.
        "requests_in_flight": ctx.in_flight_count(),
        "server": crate::session::handlers::server::server_status(ctx).await,
        "queued": ctx.app.backend.queued(),
        "config_error": ctx.app.backend.config_error(),
        "update": ctx.app.dirs.as_ref().and_then(crate::update::last_check),
        "connections": ctx.app.connections(),
    })
}

/// Stop taking connections, finish what runs, exit (a daemon; `stop` and
/// relays of a newer build send it). Answers once the socket and the lock
/// are free, so a new daemon can start at once.
async fn retire(ctx: &Ctx) -> Value {
    ctx.app.retire.cancel();
    let released = tokio::time::timeout(Duration::from_secs(5), ctx.app.released.cancelled()).await.is_ok();
    json!({"retiring": true, "pid": std::process::id(), "released": released})
}

/// Download a model: `model` (URL or owner/repo), `file?`, `sha256?`;
/// `progress` events {received, total}; the result is its path.
async fn pull(ctx: &Ctx, params: &Params) -> Outcome {
    let Some(source) = params.get("model").and_then(Value::as_str) else {
        return Err(ProtoError::new(
            ErrorCode::InvalidRequest,
            "`model` is required: a catalog name (bitnet-2b), a URL, or owner/repo with `file`",
        ));
    };
    let Some(dirs) = ctx.app.dirs.clone() else {
        return Err(ProtoError::new(ErrorCode::Internal, "no data folder to download into"));
    };
    let file = params.get("file").and_then(Value::as_str);
    let sha = params.get("sha256").and_then(Value::as_str);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Option<u64>)>(64);
    let mut last = std::time::Instant::now() - Duration::from_secs(1);
    let mut report = move |got: u64, total: Option<u64>| {
        // At most ~10 events a second, and the last one.
        if last.elapsed() >= Duration::from_millis(100) || total == Some(got) {
            last = std::time::Instant::now();
            let _ = tx.try_send((got, total));
        }
    };
    let fut = crate::pull::pull(&dirs, source, file, sha, &mut report);
    tokio::pin!(fut);
    let progress_event = |got: u64, total: Option<u64>| {
        let mut f = Map::new();
        f.insert("received".into(), Value::from(got));
        f.insert("total".into(), total.map(Value::from).unwrap_or(Value::Null));
        f
    };
    let path = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some((got, total)) = rx.recv() => {
                ctx.event("progress", progress_event(got, total)).await;
            }
        }
    };
    // What was reported just before the end, the final count included.
    while let Ok((got, total)) = rx.try_recv() {
        ctx.event("progress", progress_event(got, total)).await;
    }
    use bitnet_installer::download::DownloadError as D;
    match path {
        Ok(p) => Ok(json!({"path": p})),
        Err(crate::pull::PullError::Source(m)) => Err(ProtoError::new(ErrorCode::InvalidRequest, m)),
        Err(crate::pull::PullError::Download(e)) => {
            let code = match &e {
                D::Http { status: 404, .. } => ErrorCode::NotFound,
                D::Http { status: 401 | 403, .. } => ErrorCode::Unauthorized,
                D::Network { .. } | D::Interrupted { .. } | D::Http { .. } => ErrorCode::BackendError,
                D::Checksum { .. } | D::Invalid(_) => ErrorCode::InvalidRequest,
                D::DiskFull { .. } | D::Io { .. } => ErrorCode::Internal,
            };
            Err(ProtoError::new(code, e.to_string()))
        }
    }
}

async fn model_state(ctx: &Ctx) -> Value {
    match ctx.app.backend.current().await {
        Some((job, info)) => {
            let st = job.state();
            let backend = match &st {
                bitnet_supervisor::JobState::Ready { candidate, .. } => Value::from(candidate.as_str()),
                _ => Value::Null,
            };
            json!({"ready": st.name() == "ready", "state": st.name(), "backend": backend, "model": info.path})
        }
        None => json!({"ready": false, "state": "stopped", "backend": null, "model": null}),
    }
}

fn cancel(ctx: &Ctx, params: &Params) -> Outcome {
    let target = params.get("target");
    let kind = params.get("kind").and_then(Value::as_str);
    match (target, kind) {
        (Some(t), _) => {
            let Some(t) = RequestId::from_json(t) else {
                return Err(ProtoError::new(ErrorCode::InvalidRequest, "`target` must be a request id"));
            };
            let n = ctx.cancel_others(Some(&t), None);
            Ok(json!({"cancelled": n, "target": t.0}))
        }
        (None, Some(k)) => Ok(json!({"cancelled": ctx.cancel_others(None, Some(k)), "kind": k})),
        (None, None) => Err(ProtoError::new(ErrorCode::InvalidRequest, "`cancel` needs a `target` id")),
    }
}

async fn hardware(ctx: &Ctx) -> Outcome {
    let report = ctx.app.hardware().await.map_err(|e| ProtoError::new(ErrorCode::Internal, e))?;
    serde_json::to_value(&*report).map_err(|e| ProtoError::new(ErrorCode::Internal, e.to_string()))
}

/// The report for summaries (`hello`, `status`): null when it cannot be had
/// (the reason is in the log and in the `hardware` request's error).
async fn hardware_or_null(ctx: &Ctx) -> Value {
    hardware(ctx).await.unwrap_or(Value::Null)
}

/// Deterministic filler text: byte i is b'a' + i % 26. Clients can check
/// what they reassembled.
pub fn filler(len: usize) -> String {
    (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

fn get_u64(params: &Params, key: &str, max: u64) -> Result<u64, ProtoError> {
    match params.get(key) {
        None => Ok(0),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(ProtoError::new(ErrorCode::InvalidRequest, format!("`{key}` must be an integer from 0 to {max}"))),
        },
    }
}

/// Diagnostics for extension authors and benchmarks: returns `data`
/// unchanged, optionally streams `events` events of `event_bytes` filler
/// each `interval_ms` apart, and returns `bytes` of filler as `text`.
async fn echo(ctx: &Ctx, params: &Params) -> Outcome {
    let events = get_u64(params, "events", 1_000_000)?;
    let event_bytes = get_u64(params, "event_bytes", 900 * 1024)? as usize;
    let interval = Duration::from_millis(get_u64(params, "interval_ms", 60_000)?);
    let bytes = get_u64(params, "bytes", 32 << 20)? as usize;
    let payload = filler(event_bytes);
    for seq in 0..events {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let mut f = Map::new();
        f.insert("seq".into(), Value::from(seq));
        f.insert("data".into(), Value::from(payload.as_str()));
        if !ctx.event("echo", f).await {
            break;
        }
    }
    let mut result = Map::new();
    result.insert("data".into(), params.get("data").cloned().unwrap_or(Value::Null));
    result.insert("events".into(), Value::from(events));
    if bytes > 0 {
        result.insert("text".into(), Value::from(filler(bytes)));
    }
    Ok(Value::Object(result))
}
