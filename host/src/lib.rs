//! bitnet-host: the native-messaging host that runs local BitNet models for
//! browser extensions. See ARCHITECTURE.md for the code map.

// The wire (pure: framing, messages, dialects, routing peeks).
pub mod protocol;
// A connection's life and the request handlers.
pub mod session;
// Front-ends: the browser's pipes, the per-user daemon and its relay, the
// OpenAI-compatible HTTP API, the CLI.
pub mod cli;
pub mod daemon;
pub mod http_api;
pub mod native;
// Services the handlers and front-ends use.
pub mod backend;
pub mod calibration;
pub mod catalog;
pub mod dirs;
pub mod hardware;
pub mod logging;
pub mod pull;
pub mod update;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use bitnet_probe::HardwareReport;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every connection of one host process.
#[derive(Debug)]
pub struct App {
    pub started: Instant,
    pub dirs: Option<dirs::HostDirs>,
    prober: bitnet_probe::Prober,
    hardware: tokio::sync::OnceCell<Result<Arc<HardwareReport>, String>>,
    /// The model server (config, selection, supervisor job).
    pub backend: backend::Backend,
    /// Who is connected (the daemon has many; native mode one).
    connections: Mutex<BTreeMap<u64, Connection>>,
    next_connection: AtomicU64,
    /// Requests running on every connection.
    pub in_flight: Arc<AtomicUsize>,
    /// Open control connections (this user's CLI): a retiring daemon waits
    /// for them, so a `stop` has read its reply before the process goes.
    pub control_connections: Arc<AtomicUsize>,
    /// Set by `retire`: the daemon stops taking connections, finishes what
    /// runs, and exits.
    pub retire: tokio_util::sync::CancellationToken,
    /// Set once a retiring daemon has let go of its socket and lock.
    pub released: tokio_util::sync::CancellationToken,
}

/// One connection, as `status` lists it.
#[derive(Debug, Clone)]
struct Connection {
    since: Instant,
    /// Where daemon-wide notices for this connection go.
    notify: Option<tokio::sync::mpsc::Sender<protocol::Wire>>,
    /// {browser, origin | extension_id, relay_pid}.
    caller: Value,
}

/// Removes its connection from the list when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    app: Arc<App>,
    pub id: u64,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.app.connections.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl App {
    pub fn new(dirs: Option<dirs::HostDirs>) -> Self {
        let prober = hardware::prober(dirs.as_ref());
        let backend = backend::Backend::new(dirs.clone());
        Self {
            started: Instant::now(),
            dirs,
            prober,
            hardware: tokio::sync::OnceCell::new(),
            backend,
            connections: Mutex::default(),
            next_connection: AtomicU64::new(1),
            in_flight: Arc::default(),
            control_connections: Arc::default(),
            retire: tokio_util::sync::CancellationToken::new(),
            released: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Registers a connection until the guard drops.
    pub fn connect(
        self: &Arc<Self>,
        caller: Value,
        notify: Option<tokio::sync::mpsc::Sender<protocol::Wire>>,
    ) -> ConnectionGuard {
        let id = self.next_connection.fetch_add(1, Ordering::SeqCst);
        let c = Connection { since: Instant::now(), notify, caller };
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).insert(id, c);
        ConnectionGuard { app: self.clone(), id }
    }

    /// Sends a notice (an event without an id) to every connection.
    pub fn broadcast(&self, name: &str) {
        let wire = protocol::encode(
            &protocol::Dialect::V1,
            None,
            protocol::Outgoing::Event { name: name.into(), fields: serde_json::Map::new() },
        );
        for c in self.connections.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(tx) = &c.notify {
                let _ = tx.try_send(wire.clone());
            }
        }
    }

    /// Says who is on connection `id` (the relay's hello).
    pub fn set_caller(&self, id: u64, caller: Value) {
        if let Some(c) = self.connections.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            c.caller = caller;
        }
    }

    pub fn connections(&self) -> Vec<Value> {
        let map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(id, c)| {
                let mut v = json!({"id": id, "connected_ms": c.since.elapsed().as_millis() as u64});
                if let (Some(o), Value::Object(caller)) = (v.as_object_mut(), &c.caller) {
                    o.extend(caller.clone());
                }
                v
            })
            .collect()
    }

    /// The hardware report, probed (or read from cache) once per process,
    /// off the async threads.
    pub async fn hardware(&self) -> Result<Arc<HardwareReport>, String> {
        self.hardware
            .get_or_init(|| async {
                let prober = self.prober.clone();
                match tokio::task::spawn_blocking(move || prober.report(false)).await {
                    Ok(Ok(r)) => Ok(Arc::new(r)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("hardware probe failed: {e}")),
                }
            })
            .await
            .clone()
    }
}
