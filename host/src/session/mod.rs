//! One connection's life: parse each inbound frame, run each request as its
//! own task, route every event and reply back by id, cancel on demand and on
//! shutdown.
//!
//! The transport (stdin/stdout in native mode, a daemon connection) feeds
//! [`Session::handle_inbound`] and drains the [`Wire`] channel; the session
//! knows nothing about it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::frame::{Inbound, MAX_INBOUND};
use crate::protocol::{self, Dialect, ErrorCode, Outgoing, ProtoError, Request, RequestId, Wire};
use crate::App;

pub mod handlers;

/// Most requests one connection may have running at once; past it a request
/// is answered `busy` rather than queued without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Who is at the other end of a connection, which decides what it may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A browser's extension, served in-process (native mode).
    Browser,
    /// A relay carrying a browser's extension to the daemon.
    Relay,
    /// The user's own CLI on the daemon's socket (`stop`, `update`): the
    /// only one that may send daemon controls (`retire`, `reload_binaries`).
    Control,
}

struct InFlight {
    kind: String,
    cancel: CancellationToken,
}

type InFlightMap = Arc<Mutex<HashMap<String, InFlight>>>;

/// What a handler gets: who it answers, how to send events, and the token
/// that says it was cancelled.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<App>,
    /// The connection this request came on (App::connections).
    pub connection: u64,
    pub id: Option<RequestId>,
    pub dialect: Dialect,
    pub cancel: CancellationToken,
    pub role: Role,
    out: mpsc::Sender<Wire>,
    in_flight: InFlightMap,
}

impl Ctx {
    /// Sends one event for this request. Returns false when the connection's
    /// writer is gone (the browser went away).
    pub async fn event(&self, name: &str, fields: Map<String, Value>) -> bool {
        let wire = protocol::encode(&self.dialect, self.id.as_ref(), Outgoing::Event { name: name.into(), fields });
        self.out.send(wire).await.is_ok()
    }

    /// Cancels running requests of this connection: the one with `target`'s
    /// id, or every one of `kind`. Returns how many were cancelled.
    pub fn cancel_others(&self, target: Option<&RequestId>, kind: Option<&str>) -> usize {
        let map = self.in_flight.lock().expect("in-flight map poisoned");
        let own = self.id.as_ref().map(RequestId::key);
        let mut n = 0;
        for (key, f) in map.iter() {
            if Some(key) == own.as_ref() {
                continue;
            }
            let hit = match (target, kind) {
                (Some(t), _) => *key == t.key(),
                (None, Some(k)) => f.kind == k,
                (None, None) => false,
            };
            if hit && !f.cancel.is_cancelled() {
                f.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    pub fn in_flight_count(&self) -> usize {
        self.in_flight.lock().expect("in-flight map poisoned").len()
    }
}

/// One running request in App::in_flight, for as long as it lives.
struct InFlightCount(Arc<std::sync::atomic::AtomicUsize>);

impl InFlightCount {
    fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(n.clone())
    }
}

impl Drop for InFlightCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Session {
    app: Arc<App>,
    connection: crate::ConnectionGuard,
    out: mpsc::Sender<Wire>,
    in_flight: InFlightMap,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    role: Role,
}

impl Session {
    pub fn new(app: Arc<App>, out: mpsc::Sender<Wire>, caller: Value, role: Role) -> Self {
        let connection = app.connect(caller, Some(out.clone()));
        Self {
            app,
            connection,
            role,
            out,
            in_flight: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Sends a reply that belongs to no running task (errors about frames).
    async fn reply_now(&self, dialect: &Dialect, id: Option<&RequestId>, error: ProtoError) {
        let _ = self.out.send(protocol::error_reply(dialect, id, error)).await;
    }

    /// Handles one read from the transport. Returns false when the stream
    /// has ended and the session should shut down.
    pub async fn handle_inbound(&self, inbound: Inbound) -> bool {
        match inbound {
            Inbound::Frame(bytes) => {
                self.handle_frame(&bytes).await;
                true
            }
            Inbound::Oversized { declared } => {
                tracing::warn!(declared, "frame over the inbound limit skipped");
                self.reply_now(&Dialect::V1, None, ProtoError::frame_too_large(declared, MAX_INBOUND)).await;
                true
            }
            Inbound::Truncated { declared, received } => {
                tracing::warn!(?declared, received, "stream ended inside a frame");
                self.reply_now(&Dialect::V1, None, ProtoError::truncated_frame(declared, received)).await;
                false
            }
            Inbound::Eof => false,
        }
    }

    async fn handle_frame(&self, bytes: &[u8]) {
        match protocol::parse_request(bytes) {
            Ok(req) => self.dispatch(req).await,
            Err(rejected) => {
                tracing::debug!(error = %rejected.error, "rejected frame");
                self.reply_now(&rejected.dialect, rejected.id.as_ref(), rejected.error).await;
            }
        }
    }

    async fn dispatch(&self, req: Request) {
        let cancel = self.shutdown.child_token();
        let key = req.id.as_ref().map(RequestId::key);
        if let Some(key) = &key {
            let refusal = {
                let mut map = self.in_flight.lock().expect("in-flight map poisoned");
                if map.contains_key(key) {
                    Some(ProtoError::duplicate_id())
                } else if map.len() >= MAX_IN_FLIGHT {
                    Some(ProtoError::new(ErrorCode::Busy, format!("{MAX_IN_FLIGHT} requests already running")))
                } else {
                    map.insert(key.clone(), InFlight { kind: req.kind.clone(), cancel: cancel.clone() });
                    None
                }
            };
            if let Some(e) = refusal {
                self.reply_now(&req.dialect, req.id.as_ref(), e).await;
                return;
            }
        }
        let ctx = Ctx {
            app: self.app.clone(),
            connection: self.connection.id,
            id: req.id.clone(),
            dialect: req.dialect.clone(),
            cancel: cancel.clone(),
            role: self.role,
            out: self.out.clone(),
            in_flight: self.in_flight.clone(),
        };
        let counted = InFlightCount::new(&self.app.in_flight);
        self.tasks.spawn(async move {
            let _counted = counted;
            // Dropping the handler's future on cancel aborts whatever it was
            // awaiting (an upstream HTTP request, a timer).
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(ProtoError::new(ErrorCode::Cancelled, "request cancelled")),
                r = handlers::handle(&ctx, &req.kind, &req.params) => r,
            };
            if let Some(key) = &key {
                ctx.in_flight.lock().expect("in-flight map poisoned").remove(key);
            }
            let _ = ctx.out.send(protocol::encode(&ctx.dialect, ctx.id.as_ref(), Outgoing::Final(result))).await;
        });
    }

    /// Cancels every running request and waits up to `grace` for their final
    /// frames to be queued.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("requests still running after shutdown grace period");
        }
    }
}
