//! Handlers for the model server: `load_model`, `unload_model`, `logs`, and
//! the `server` part of `status`.

use std::path::Path;

use bitnet_supervisor::JobState;
use serde_json::{json, Map, Value};

use crate::backend;
use crate::protocol::{ErrorCode, ProtoError};
use crate::session::Ctx;

type Params = Map<String, Value>;
type Outcome = Result<Value, ProtoError>;

/// Most lines one `logs` request returns.
const MAX_LOG_LINES: u64 = 10_000;

fn state_fields(s: &JobState) -> Map<String, Value> {
    match serde_json::to_value(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Load (or reuse) the server for `model`, streaming `load` events with each
/// state change until it is ready or every candidate failed.
pub async fn load_model(ctx: &Ctx, params: &Params) -> Outcome {
    let Some(model) = params.get("model").and_then(Value::as_str) else {
        return Err(ProtoError::new(
            ErrorCode::InvalidRequest,
            "`model` is required: an absolute path to a .gguf file, or a name as `models` lists it",
        ));
    };
    // A name from `models` (inside the models folder) or an absolute path;
    // anything else goes to inspect_model as given, which says why not.
    let named = ctx.app.dirs.as_ref().and_then(|d| backend::resolve_model_name(&d.data.join("models"), model));
    let path = named.unwrap_or_else(|| Path::new(model).to_path_buf());
    let info = backend::inspect_model(&path).await?;
    let report = ctx.app.hardware().await.map_err(|e| ProtoError::new(ErrorCode::Internal, e))?;
    // Another model is loaded: the requests it is serving (other tabs,
    // other browsers) finish first (the backend waits), and the ones that
    // come meanwhile queue behind this load; none is cut. Say so.
    if ctx.app.backend.is_switch(&info.path).await {
        say_waiting(ctx, "switching models").await;
    }
    let job = ctx.app.backend.load(&report, info.clone()).await?;
    let ep = match crate::session::handlers::infer::ready_with_progress(ctx, &job).await {
        Ok(ep) => ep,
        Err(e) => {
            if matches!(e.code, ErrorCode::BackendCrashed | ErrorCode::Unauthorized) {
                ctx.app.backend.forget_failed(&info.path, &e.message).await;
            }
            return Err(e);
        }
    };
    ctx.app.backend.clear_failure();
    let mut out = state_fields(&job.state());
    out.insert("model".into(), json!(info));
    out.insert("backend".into(), Value::from(ep.candidate));
    Ok(Value::Object(out))
}

/// After an update installed new server binaries: restart the loaded
/// model's server on them once no request is using it (none is cut).
pub async fn reload_binaries(ctx: &Ctx) -> Outcome {
    let report = ctx.app.hardware().await.map_err(|e| ProtoError::new(ErrorCode::Internal, e))?;
    let reloaded = ctx.app.backend.reload_binaries(&report).await?;
    let backend = match ctx.app.backend.current().await {
        Some((job, _)) if reloaded => {
            let ep = crate::session::handlers::infer::ready_with_progress(ctx, &job).await?;
            Value::from(ep.candidate)
        }
        _ => Value::Null,
    };
    Ok(json!({"reloaded": reloaded, "backend": backend}))
}

/// A `load` event saying how many running requests a switch waits for,
/// when any are running.
async fn say_waiting(ctx: &Ctx, why: &str) {
    let running = ctx.app.backend.running();
    if running > 0 {
        let mut f = Map::new();
        f.insert("state".into(), Value::from("waiting"));
        f.insert("running".into(), Value::from(running));
        f.insert("message".into(), Value::from(format!("{why}: waiting for {running} running request(s) to finish")));
        ctx.event("load", f).await;
    }
}

pub async fn unload_model(ctx: &Ctx) -> Outcome {
    say_waiting(ctx, "unloading").await;
    let _drained = ctx.app.backend.drain().await?;
    match ctx.app.backend.unload().await {
        Some(info) => Ok(json!({"unloaded": true, "model": info.path})),
        None => Ok(json!({"unloaded": false, "model": null})),
    }
}

pub async fn logs(ctx: &Ctx, params: &Params) -> Outcome {
    let n = match params.get("lines") {
        None => 100,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::InvalidRequest,
                    format!("`lines` must be an integer from 1 to {MAX_LOG_LINES}"),
                ))
            }
        },
    } as usize;
    if let Some((job, _)) = ctx.app.backend.current().await {
        let lines: Vec<Value> =
            job.logs_tagged(n).into_iter().map(|(stream, line)| json!({"stream": stream, "line": line})).collect();
        return Ok(json!({"lines": lines, "log_file": job.log_path()}));
    }
    // No server now: the log file of the last one.
    let Some(dirs) = ctx.app.dirs.as_ref() else {
        return Ok(json!({"lines": [], "log_file": null}));
    };
    let path = backend::server_logs_dir(dirs).join("server.log");
    let text = tokio::task::spawn_blocking({
        let path = path.clone();
        move || backend::tail_file(&path, n).unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            let (tag, line) = l.split_once(' ').unwrap_or(("", l));
            let stream = match tag {
                "out" => "stdout",
                "err" => "stderr",
                _ => "supervisor",
            };
            json!({"stream": stream, "line": line})
        })
        .collect();
    Ok(json!({"lines": lines, "log_file": path}))
}

/// The `server` object of `status`: state, model, recent failures, RSS/CPU.
pub async fn server_status(ctx: &Ctx) -> Value {
    let Some((job, info)) = ctx.app.backend.current().await else {
        return json!({"state": "stopped", "model": null});
    };
    let state = job.state();
    let mut out = state_fields(&state);
    if let Some(d) = &ctx.app.dirs {
        out.insert("name".into(), json!(backend::model_name(&d.data.join("models"), &info.path)));
    }
    out.insert("model".into(), json!(info));
    // Requests being answered now; an idle ready server is stopped when
    // `unload_in_ms` reaches 0 (absent: kept loaded).
    out.insert("running".into(), json!(ctx.app.backend.running()));
    if matches!(state, JobState::Ready { .. }) {
        if let Some(d) = job.unload_in() {
            out.insert("unload_in_ms".into(), json!(d.as_millis() as u64));
        }
    }
    out.insert("failures".into(), json!(job.failures()));
    out.insert("resources".into(), json!(job.stats()));
    out.insert("log_file".into(), json!(job.log_path()));
    Value::Object(out)
}
