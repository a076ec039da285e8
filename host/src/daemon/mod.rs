//! One daemon per user owns the backends; browser-facing processes relay to
//! it, so every browser connection shares one loaded model.
//!
//! - `bitnet-host daemon`: holds an exclusive lock (exactly one daemon per
//!   user, however many start at once), listens on an owner-only Unix
//!   socket, refuses peers of another uid, serves each connection as a
//!   [`Session`] with the same framing as native messaging, and exits after
//!   an idle period with no connections.
//! - The relay ([`relay`], native mode with the daemon on): when a request
//!   comes, it connects (starting the daemon detached if needed, see
//!   [`client`]), says hello with its browser and its build identity, and
//!   copies frames both ways. A daemon of another build (an update replaced
//!   the binary) is asked to retire. If the daemon dies, the relay answers
//!   what it had in flight with an error; the next request connects again.
//! - Roles: a connection whose first frame is a relay's hello carries an
//!   extension, which may never send daemon controls; any other connection
//!   is this user's CLI (the socket admits no one else) and may.
//! - Retiring (`retire`: `bitnet-host stop`, a relay of a newer build): the
//!   daemon lets go of its socket and lock at once (a new one can start),
//!   tells every relay to send new requests elsewhere, finishes what runs,
//!   and exits. No request is cut.
//!
//! Transports: an owner-only Unix socket in an owner-only folder (flock
//! for the lock; peers of another uid refused), or on Windows a named pipe
//! whose DACL admits only this user, remote clients rejected (a file opened
//! without sharing for the lock). Everything else is the same code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::dirs::HostDirs;
use crate::protocol::frame::{FrameReader, Inbound, MAX_INBOUND};
use crate::protocol::{Outgoing, Wire};
use crate::session::{Role, Session};
use crate::App;

mod client;
mod relay;

pub use client::{connect, control_request, open};
pub use relay::relay;

/// How long a retiring daemon lets running requests finish.
pub const RETIRE_DRAIN: Duration = Duration::from_secs(120);

/// Default time the daemon stays up with no connection.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10 * 60);

/// The daemon's folder: the user's runtime dir when there is one (and no
/// BITNET_HOST_HOME override), else the host's state dir.
pub fn run_dir(dirs: &HostDirs) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|_| std::env::var_os("BITNET_HOST_HOME").is_none()) {
        Some(r) => PathBuf::from(r).join("bitnet-host"),
        None => dirs.state.join("daemon"),
    }
}

pub fn socket_path(dirs: &HostDirs) -> PathBuf {
    run_dir(dirs).join("daemon.sock")
}

/// This program's path; after an update replaced the file, Linux reports the
/// running one as "... (deleted)", and the path is where the new one is.
pub fn exe_path() -> std::io::Result<PathBuf> {
    let p = std::env::current_exe()?;
    let s = p.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => p,
    })
}

/// Which build of the host is at our path now: version, size, mtime. A
/// daemon records it at start; a relay compares it with its own.
pub fn current_identity() -> String {
    let meta = exe_path().and_then(std::fs::metadata);
    let (len, mtime) = match meta {
        Ok(m) => (m.len(), m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())),
        Err(_) => (0, None),
    };
    format!("{}:{len}:{}", crate::VERSION, mtime.map(|d| d.as_nanos()).unwrap_or(0))
}

static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The build this process started as.
pub fn identity() -> &'static str {
    IDENTITY.get_or_init(current_identity)
}

/// Whether native mode relays to the daemon: yes, unless
/// BITNET_HOST_DAEMON=0 asks for one browser connection served in-process
/// (its servers then die with it).
pub fn enabled() -> bool {
    !std::env::var("BITNET_HOST_DAEMON").is_ok_and(|v| v == "0")
}

/// Whether the daemon's folder can be made here (a read-only or foreign
/// runtime dir would leave every request failing); if not, the browser's
/// connection is served in-process instead.
pub fn usable(dirs: &HostDirs) -> bool {
    let dir = run_dir(dirs);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => std::fs::metadata(&dir).is_ok_and(|m| !m.permissions().readonly()),
        Err(e) => {
            tracing::warn!("daemon folder {}: {e}; serving this connection in-process", dir.display());
            false
        }
    }
}

/// The idle period; None (`BITNET_DAEMON_IDLE_MS=0`, as the service sets)
/// means never exit.
fn idle_from_env() -> Option<Duration> {
    match std::env::var("BITNET_DAEMON_IDLE_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => Some(DEFAULT_IDLE),
    }
}

/// One connection to the daemon, whatever carries it (a Unix socket, a
/// named pipe): the relay and the daemon's sessions see only this.
pub struct Conn {
    pub rd: Box<dyn AsyncRead + Send + Unpin>,
    pub wr: Box<dyn AsyncWrite + Send + Unpin>,
    /// The daemon's pid on the relay's side, the relay's on the daemon's
    /// (a dead daemon's endpoint can answer for a moment: tell it apart).
    pub pid: Option<i32>,
}

/// What the daemon listens on.
trait Listener {
    /// The next connection from this user (others are refused before).
    async fn accept(&mut self) -> std::io::Result<Conn>;
    /// Stop listening and free the name, so that a new daemon can start.
    fn release(&mut self);
}

/// The daemon's life once it holds the lock and listens: serve each
/// connection as a session, exit when idle, terminated, or retired (after
/// letting running requests finish). `lock` is held until then.
async fn serve_with<L: Listener, K>(
    app: Arc<App>,
    dirs: &HostDirs,
    (mut listener, lock): (L, K),
    terminated: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(Arc<App>),
) -> anyhow::Result<bool> {
    let dir = run_dir(dirs);
    std::fs::write(dir.join("daemon.pid"), std::process::id().to_string())?;
    tracing::info!(pid = std::process::id(), "daemon listening");
    listening(app.clone());
    let idle = idle_from_env();
    let connections = Arc::new(AtomicUsize::new(0));
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<()>();
    tokio::pin!(terminated);
    loop {
        let idle_timer = async {
            match idle {
                Some(d) if connections.load(Ordering::SeqCst) == 0 => tokio::time::sleep(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let conn = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (app, n, gone) = (app.clone(), connections.clone(), gone_tx.clone());
                tokio::spawn(async move {
                    connection(app, conn).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    let _ = gone.send(());
                });
            }
            _ = gone_rx.recv() => {} // re-arm the idle timer
            _ = idle_timer => {
                tracing::info!(idle = ?idle, "no connections: daemon exiting");
                break;
            }
            _ = &mut terminated => break,
            _ = app.retire.cancelled() => {
                // Let a new daemon start now; tell the relays to send new
                // requests there; finish what runs here, then go.
                listener.release();
                let _ = std::fs::remove_file(dir.join("daemon.pid"));
                drop(lock);
                app.released.cancel();
                app.broadcast("daemon_retiring");
                tracing::info!(in_flight = app.in_flight.load(Ordering::SeqCst), "retiring");
                let t = std::time::Instant::now();
                while app.in_flight.load(Ordering::SeqCst) > 0 && t.elapsed() < RETIRE_DRAIN {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // The CLI that asked closes its connection once it has read
                // the reply; exiting before then could cut the reply off (a
                // `stop` then said no daemon was running).
                let t = std::time::Instant::now();
                while app.control_connections.load(Ordering::SeqCst) > 0 && t.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                app.backend.unload().await;
                return Ok(true);
            }
        }
    }
    listener.release();
    let _ = std::fs::remove_file(dir.join("daemon.pid"));
    app.backend.unload().await;
    Ok(true)
}

/// One connection: a relay (its first frame is the relay's hello) or this
/// user's CLI (anything else: a control connection), served as a session
/// with native messaging's framing.
async fn connection(app: Arc<App>, conn: Conn) {
    let Conn { rd, wr, pid } = conn;
    let mut frames = FrameReader::new(rd, MAX_INBOUND);
    let (tx, rx) = mpsc::channel::<Wire>(1024);
    let writer = tokio::spawn(crate::native::stdio::write_loop_async(wr, rx));
    let first = frames.read_frame().await;
    let hello = match &first {
        Ok(Inbound::Frame(b)) => crate::protocol::parse_request(b).ok().filter(|r| r.kind == "relay_hello"),
        _ => None,
    };
    // Held while a control connection is open (see App::control_connections).
    let mut _control = None;
    let session = match hello {
        Some(req) => {
            let caller = relay_caller(pid, req.params.get("caller"));
            let session = Session::new(app, tx.clone(), caller, Role::Relay);
            let result = json!({"version": crate::VERSION, "identity": identity(), "pid": std::process::id()});
            let _ = tx.send(crate::protocol::encode(&req.dialect, req.id.as_ref(), Outgoing::Final(Ok(result)))).await;
            session
        }
        None => {
            _control = Some(ControlOpen::new(&app.control_connections));
            let session = Session::new(app, tx, json!({"control": true, "pid": pid}), Role::Control);
            if let Ok(first) = first {
                if !session.handle_inbound(first).await {
                    return finish(session, writer).await;
                }
            }
            session
        }
    };
    while let Ok(inbound) = frames.read_frame().await {
        if !session.handle_inbound(inbound).await {
            break;
        }
    }
    finish(session, writer).await;
}

/// Counts one open control connection for as long as it lives.
struct ControlOpen(Arc<AtomicUsize>);

impl ControlOpen {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        ControlOpen(count.clone())
    }
}

impl Drop for ControlOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn finish(session: Session, writer: tokio::task::JoinHandle<()>) {
    session.shutdown(Duration::from_millis(700)).await;
    drop(session);
    let _ = tokio::time::timeout(Duration::from_millis(300), writer).await;
}

/// Who a relay is: its pid from the connection's peer credentials (never
/// what it says), its browser and extension from its own command line where
/// the OS lets us read it (`verified`), else as its hello claims.
fn relay_caller(pid: Option<i32>, claimed: Option<&Value>) -> Value {
    let launch = pid.and_then(peer_args).and_then(|args| crate::native::browser_launch(args.get(1..)?));
    let mut caller = match launch {
        Some(c) => {
            let mut v = crate::native::caller_json(&c);
            v["verified"] = Value::Bool(true);
            v
        }
        None => {
            let mut v = match claimed {
                Some(Value::Object(m)) => Value::Object(m.clone()),
                _ => json!({"browser": null}),
            };
            v["verified"] = Value::Bool(false);
            v
        }
    };
    caller["relay_pid"] = pid.map(Value::from).unwrap_or(Value::Null);
    caller
}

/// A process's arguments (Linux: /proc/PID/cmdline, read with a bound).
fn peer_args(pid: i32) -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        use std::io::Read;
        let mut bytes = Vec::new();
        let f = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
        f.take(64 * 1024).read_to_end(&mut bytes).ok()?;
        let args = bytes.split(|b| *b == 0).filter(|a| !a.is_empty());
        Some(args.map(|a| String::from_utf8_lossy(a).into_owned()).collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Run the daemon: take the lock (exactly one per user, however many
/// start at once) and listen; `listening` starts what only the winner runs
/// (update checks, the HTTP API). Ok(false): another daemon holds the lock.
pub async fn serve(app: Arc<App>, dirs: &HostDirs, listening: impl FnOnce(Arc<App>)) -> anyhow::Result<bool> {
    let _ = identity();
    let Some(held) = transport::listen(dirs)? else {
        tracing::info!("another daemon holds the lock");
        return Ok(false);
    };
    serve_with(app, dirs, held, transport::terminated()?, listening).await
}

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as transport;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as transport;

#[cfg(not(any(unix, windows)))]
mod transport {
    use super::*;

    pub struct Never;
    impl Listener for Never {
        async fn accept(&mut self) -> std::io::Result<Conn> {
            std::future::pending().await
        }
        fn release(&mut self) {}
    }
    pub fn listen(_: &HostDirs) -> anyhow::Result<Option<(Never, ())>> {
        anyhow::bail!("the daemon has no transport on this OS")
    }
    pub fn terminated() -> std::io::Result<std::future::Pending<()>> {
        Ok(std::future::pending())
    }
    pub async fn open(_: &HostDirs) -> std::io::Result<Conn> {
        Err(std::io::Error::other("the daemon has no transport on this OS"))
    }
    pub fn endpoint(_: &HostDirs) -> String {
        "(none on this OS)".into()
    }
}
