//! The daemon's optional OpenAI-compatible HTTP API for other local apps
//! (off by default; `[http] enabled = true` in config.toml, or
//! BITNET_HTTP_PORT). It listens on 127.0.0.1 only and answers only
//! requests that carry the bearer token from `<config>/http-token` (made,
//! owner-only, on first use), name 127.0.0.1/localhost with our port as
//! Host (a DNS-rebinding page cannot), and come without an Origin header:
//! no browser page can call it, and it never sends CORS headers.
//!
//! Requests go to the same backend the browsers use, through the same slot
//! queue: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`
//! (streamed or not, passed through as the server answers) and
//! `/v1/models`. `model` may name a model file (absolute path, or a name in
//! the models folder) to load first; without it, the loaded model answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::App;

pub const DEFAULT_PORT: u16 = 11435;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, and how long an
/// idle keep-alive connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The header timeout (BITNET_HTTP_HEADER_TIMEOUT_MS for tests).
fn header_timeout() -> Duration {
    std::env::var("BITNET_HTTP_HEADER_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(HEADER_TIMEOUT)
}

/// The port to serve on, when the API is on.
pub fn port(app: &App) -> Option<u16> {
    if let Some(p) = std::env::var("BITNET_HTTP_PORT").ok().and_then(|v| v.parse().ok()) {
        return Some(p);
    }
    let http = &app.backend.config().http;
    http.enabled.then(|| http.port.unwrap_or(DEFAULT_PORT))
}

/// The token, created (random, owner-only file) on first use.
pub fn token(config_dir: &Path) -> std::io::Result<String> {
    let path = config_dir.join("http-token");
    if let Ok(t) = bitnet_safefs::read_to_string(&path, 4096) {
        if t.trim().len() >= 32 {
            return Ok(t.trim().to_string());
        }
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::create_dir_all(config_dir)?;
    let tmp = config_dir.join(".http-token.tmp");
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        std::io::Write::write_all(&mut o.open(&tmp)?, t.as_bytes())?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(t)
}

#[derive(Clone)]
struct Api {
    app: Arc<App>,
    token: Arc<str>,
    port: u16,
    client: reqwest::Client,
}

/// Serve until the process ends. Errors (port taken) are logged.
pub async fn serve(app: Arc<App>, port: u16) {
    let Some(dirs) = app.dirs.clone() else { return };
    let token = match token(&dirs.config) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("HTTP API off: cannot make its token: {e}");
            return;
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("HTTP API off: cannot listen on 127.0.0.1:{port}: {e}");
            return;
        }
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
    let api = Api { app, token: token.into(), port, client };
    let router = axum::Router::new()
        .route("/v1/models", axum::routing::get(models))
        .route("/v1/chat/completions", axum::routing::post(forward))
        .route("/v1/completions", axum::routing::post(forward))
        .route("/v1/embeddings", axum::routing::post(forward))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard))
        .with_state(api);
    tracing::info!(port, "HTTP API on 127.0.0.1");
    accept_loop(listener, router).await;
}

/// Serves each connection with a header timeout (which also closes idle
/// keep-alive connections), at most MAX_CONNECTIONS at once; an accept
/// error (descriptors exhausted) backs off instead of spinning.
async fn accept_loop(listener: tokio::net::TcpListener, router: axum::Router) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let timeout = header_timeout();
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                tracing::warn!("HTTP API accept: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("HTTP API connection: {e}");
            }
        });
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": "bitnet_host"}}))).into_response()
}

/// Whether a Host header names this loopback listener.
pub fn host_allowed(host: Option<&str>, port: u16) -> bool {
    let Some(h) = host else { return false };
    let h = h.to_ascii_lowercase();
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|name| h == format!("{name}:{port}"))
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let got = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit on the first differing byte.
    got.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0)
}

async fn guard(State(api): State<Api>, req: Request, next: axum::middleware::Next) -> Response {
    let h = req.headers();
    // Origin-form targets only (`/v1/...`): an absolute URI would name a
    // host the Host check does not see.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        return error(StatusCode::BAD_REQUEST, "request targets must be paths (origin-form)");
    }
    if h.get_all(header::HOST).iter().count() != 1 {
        return error(StatusCode::BAD_REQUEST, "exactly one Host header is required");
    }
    if !host_allowed(h.get(header::HOST).and_then(|v| v.to_str().ok()), api.port) {
        return error(StatusCode::FORBIDDEN, "Host must be 127.0.0.1 or localhost with this port");
    }
    // Browsers send Origin on cross-origin requests and preflights: no page
    // may use this API.
    if h.contains_key(header::ORIGIN) || req.method() == axum::http::Method::OPTIONS {
        return error(StatusCode::FORBIDDEN, "browser pages may not call this API");
    }
    if !bearer_ok(h, &api.token) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (see <config>/http-token)");
    }
    next.run(req).await
}

async fn models(State(api): State<Api>) -> Response {
    // Ids are names as `models` lists them (what clients show and users
    // type back); a loaded file outside the models folder keeps its path.
    let root = api.app.dirs.as_ref().map(|d| d.data.join("models"));
    let name = |p: &std::path::Path| match &root {
        Some(r) => crate::backend::model_name(r, p),
        None => p.display().to_string(),
    };
    let mut data = Vec::new();
    if let Some((_, info)) = api.app.backend.current().await {
        data.push(json!({"id": name(&info.path), "object": "model", "owned_by": "bitnet-host", "loaded": true}));
    }
    if let Some(root) = root.clone() {
        let found = tokio::task::spawn_blocking(move || crate::backend::scan_models(&root)).await.unwrap_or_default();
        for p in found {
            let id = name(&p);
            if !data.iter().any(|d| d["id"] == json!(id)) {
                data.push(json!({"id": id, "object": "model", "owned_by": "bitnet-host", "loaded": false}));
            }
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The model a request names: an absolute path, or a name in the models folder.
fn named_model(app: &App, name: &str) -> Option<PathBuf> {
    crate::backend::resolve_model_name(&app.dirs.as_ref()?.data.join("models"), name)
}

async fn forward(State(api): State<Api>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), 64 << 20)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 64 MiB"),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
    };
    let app = &api.app;
    // Load the named model when it is not the loaded one.
    let wanted = body.get("model").and_then(Value::as_str).and_then(|m| named_model(app, m));
    let current = app.backend.current().await;
    let job = match (wanted, current) {
        (Some(w), Some((job, info))) if info.path == w => job,
        (Some(w), _) => {
            let info = match crate::backend::inspect_model(&w).await {
                Ok(i) => i,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let report = match app.hardware().await {
                Ok(r) => r,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
            };
            match app.backend.load(&report, info).await {
                Ok(j) => j,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        (None, Some((job, _))) => job,
        (None, None) => return error(StatusCode::BAD_REQUEST, "no model is loaded: name one in `model`"),
    };
    // Same queue as the browsers' requests.
    let slot = match app.backend.slot().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
    };
    let ep = match job.ready().await {
        Ok(ep) => ep,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    // In use until the whole answer has been passed on (below).
    let lease = job.lease();
    let mut upstream = api.client.post(format!("{}{path}", ep.url)).json(&body);
    if let Some(k) = &ep.api_key {
        upstream = upstream.bearer_auth(k);
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &format!("the model server did not answer: {e}")),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    // The slot is held until the whole answer has been passed on.
    let stream = futures_util::StreamExt::map(resp.bytes_stream(), move |chunk| {
        let _held = (&slot, &lease);
        chunk.map_err(std::io::Error::other)
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_with_our_port_pass_the_host_check() {
        assert!(host_allowed(Some("127.0.0.1:11435"), 11435));
        assert!(host_allowed(Some("LOCALHOST:11435"), 11435));
        assert!(host_allowed(Some("[::1]:11435"), 11435));
        for bad in ["evil.example:11435", "127.0.0.1", "127.0.0.1:80", "127.0.0.1.evil.example:11435", ""] {
            assert!(!host_allowed(Some(bad), 11435), "{bad}");
        }
        assert!(!host_allowed(None, 11435));
    }
}
