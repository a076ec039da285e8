//! One daemon per user owns the backends; browser-facing processes relay to
//! it, so every browser connection shares one loaded model.
//!
//! - `bitnet-host daemon`: holds an exclusive lock (exactly one daemon per
//!   user, however many start at once), listens on an owner-only Unix
//!   socket, refuses peers of another uid, serves each connection as a
//!   [`Session`] with the same framing as native messaging, and exits after
//!   an idle period with no connections.
//! - The relay (native mode with the daemon on): when a request comes, it
//!   connects (starting the daemon detached if needed), says hello with its
//!   browser and its build identity, and copies frames both ways, reading
//!   only ids. A daemon of another build (an update replaced the binary) is
//!   asked to retire. If the daemon dies, the relay answers what it had in
//!   flight with an error; the next request connects again.
//! - Retiring (`retire`: `bitnet-host stop`, a relay of a newer build): the
//!   daemon lets go of its socket and lock at once (a new one can start),
//!   tells every relay to send new requests elsewhere, finishes what runs,
//!   and exits. No request is cut.
//!
//! Transports: an owner-only Unix socket in an owner-only folder (flock
//! for the lock; peers of another uid refused), or on Windows a named pipe
//! whose DACL admits only this user, remote clients rejected (a file opened
//! without sharing for the lock). Everything else is the same code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::dirs::HostDirs;
use crate::protocol::frame::{read_frame, Inbound, MAX_INBOUND};
use crate::protocol::Wire;
use crate::session::Session;
use crate::App;

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
    mut listener: L,
    lock: K,
    terminated: impl std::future::Future<Output = ()>,
) -> anyhow::Result<bool> {
    let dir = run_dir(dirs);
    std::fs::write(dir.join("daemon.pid"), std::process::id().to_string())?;
    tracing::info!(pid = std::process::id(), "daemon listening");
    tokio::spawn(crate::update::background_checks(app.clone(), dirs.clone()));
    if let Some(port) = crate::http_api::port(&app) {
        tokio::spawn(crate::http_api::serve(app.clone(), port));
    }
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

/// One relay's connection, served as a session with native messaging's
/// framing.
async fn connection(app: Arc<App>, conn: Conn) {
    let Conn { mut rd, wr, pid } = conn;
    let (tx, rx) = mpsc::channel::<Wire>(1024);
    let writer = tokio::spawn(crate::native::writer_loop(wr, rx));
    // Who it is arrives with the relay's hello.
    let session = Session::new(app, tx, json!({"browser": null, "relay_pid": pid}));
    while let Ok(inbound) = read_frame(&mut rd, MAX_INBOUND).await {
        if !session.handle_inbound(inbound).await {
            break;
        }
    }
    session.shutdown(Duration::from_millis(700)).await;
    drop(session);
    let _ = tokio::time::timeout(Duration::from_millis(300), writer).await;
}

/// Start a daemon, detached from the relay (the browser ends the relay,
/// never the daemon other browsers share). Its outcome is watched by the
/// caller: an early exit is a loser of the lock race, or a failure.
fn start_daemon() -> std::io::Result<std::process::Child> {
    let mut cmd = std::process::Command::new(exe_path()?);
    cmd.arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so the browser killing the relay's group
        // does not take the daemon with it.
        cmd.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        use windows_sys::Win32::Foundation::{SetHandleInformation, HANDLE_FLAG_INHERIT, INVALID_HANDLE_VALUE};
        use windows_sys::Win32::System::Console::{
            GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
        };
        // The browser's pipes are this relay's standard handles, created
        // inheritable; Windows hands every inheritable handle to a child,
        // so a daemon would hold the browser's port open after the relay
        // exits. Unix closes them for us (close-on-exec, 0-2 replaced).
        for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
            // SAFETY: our own standard handles; only their inherit flag changes.
            unsafe {
                let h = GetStdHandle(which);
                if !h.is_null() && h != INVALID_HANDLE_VALUE {
                    SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
                }
            }
        }
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        const CREATE_BREAKAWAY_FROM_JOB: u32 = 0x0100_0000;
        // Out of the browser's job where the job allows it (else the
        // daemon lives as long as that browser's job).
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_BREAKAWAY_FROM_JOB);
        if let Ok(child) = cmd.spawn() {
            return Ok(child);
        }
        cmd.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
    cmd.spawn()
}

/// Connect to the daemon, starting it if nobody answers. `dead` is a
/// daemon that just went away: a connection still reaching it is dropped
/// and retried.
pub async fn connect(dirs: &HostDirs, dead: Option<i32>) -> anyhow::Result<Conn> {
    let t = std::time::Instant::now();
    while dead.is_some() && t.elapsed() < Duration::from_secs(2) {
        match transport::open(dirs).await {
            Ok(c) if c.pid != dead => return Ok(c),
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    if let Ok(c) = transport::open(dirs).await {
        if dead.is_none() || c.pid != dead {
            return Ok(c);
        }
    }
    let mut child = start_daemon()?;
    let t = std::time::Instant::now();
    // Ours exiting is normal when another starter won the lock; that one
    // then has two seconds to listen.
    let mut deadline = Duration::from_secs(10);
    loop {
        if let Ok(c) = transport::open(dirs).await {
            if dead.is_none() || c.pid != dead {
                // Reap the starter when it exits (it may be a loser of the lock race).
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(c);
            }
        }
        if deadline == Duration::from_secs(10) && child.try_wait().ok().flatten().is_some() {
            deadline = t.elapsed() + Duration::from_secs(2);
        }
        if t.elapsed() > deadline {
            anyhow::bail!("no daemon is listening on {}", transport::endpoint(dirs));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Run the daemon: take the lock (exactly one per user, however many
/// start at once) and listen. Ok(false): another daemon holds the lock.
pub async fn serve(app: Arc<App>, dirs: &HostDirs) -> anyhow::Result<bool> {
    let _ = identity();
    app.is_daemon.store(true, Ordering::SeqCst);
    let Some((listener, lock)) = transport::listen(dirs)? else {
        tracing::info!("another daemon holds the lock");
        return Ok(false);
    };
    serve_with(app, dirs, listener, lock, transport::terminated()?).await
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

/// A connection to a running daemon, if one answers (never starts one).
pub async fn open(dirs: &HostDirs) -> Option<Conn> {
    transport::open(dirs).await.ok()
}

/// The id of a message and whether it is a final reply (v1: `id` without
/// `event`; legacy: `messageId` with `status`). Requests: final = false.
fn id_of(bytes: &[u8]) -> Option<(String, bool, bool)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if let Some(id) = v.get("id").filter(|i| !i.is_null()) {
        return Some((id.to_string(), v.get("event").is_none(), false));
    }
    let id = v.get("messageId")?;
    Some((id.to_string(), v.get("status").is_some(), true))
}

fn frame(v: &Value) -> Vec<u8> {
    let body = v.to_string();
    let mut out = (body.len() as u32).to_ne_bytes().to_vec();
    out.extend(body.as_bytes());
    out
}

/// The relay's private request id for its hello (never forwarded).
const HELLO_ID: &str = "bitnet-relay-hello";

/// What the relay hears from the tasks reading each daemon connection.
enum DaemonNews {
    /// That daemon is retiring: new requests go to a new one.
    Retiring(u64),
    /// That connection ended.
    Gone(u64),
}

/// One connection to a daemon: `generation` tells them apart while an old,
/// retiring daemon still answers its last requests.
struct Link {
    generation: u64,
    to_daemon: Box<dyn AsyncWrite + Send + Unpin>,
    pid: Option<i32>,
}

/// Connect (starting a daemon if needed), introduce ourselves, and make a
/// daemon of another build retire in favour of one of ours.
async fn open_link(
    dirs: &HostDirs,
    caller: &Value,
    generation: u64,
    dead: Option<i32>,
) -> anyhow::Result<(Link, Box<dyn AsyncRead + Send + Unpin>)> {
    let mine = current_identity();
    let mut dead = dead;
    for _ in 0..3 {
        let Conn { mut rd, mut wr, pid } = connect(dirs, dead).await?;
        let hello = json!({"id": HELLO_ID, "type": "relay_hello", "caller": caller,
            "relay_pid": std::process::id(), "identity": mine});
        wr.write_all(&frame(&hello)).await?;
        let theirs = loop {
            match read_frame(&mut rd, MAX_INBOUND).await? {
                Inbound::Frame(b) => {
                    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    if v["id"] == HELLO_ID {
                        break v["result"]["identity"].as_str().unwrap_or("").to_string();
                    }
                }
                _ => anyhow::bail!("the daemon closed the connection during the hello"),
            }
        };
        if theirs == mine {
            return Ok((Link { generation, to_daemon: wr, pid }, rd));
        }
        // Another build (an update replaced the binary): it finishes its
        // requests and goes; the next connect starts ours.
        tracing::info!(daemon = %theirs, relay = %mine, "asking a daemon of another build to retire");
        let retire = json!({"id": "bitnet-relay-retire", "type": "retire"});
        wr.write_all(&frame(&retire)).await?;
        while let Inbound::Frame(b) = read_frame(&mut rd, MAX_INBOUND).await? {
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            if v["id"] == "bitnet-relay-retire" {
                break;
            }
        }
        dead = pid;
    }
    anyhow::bail!("could not reach a daemon of this build")
}

/// The relay: stdin/stdout <-> the daemon. Returns when stdin closes.
/// Connects when a request needs it (a stopped daemon stays stopped until
/// the browser asks for something); fails the requests a dying daemon had;
/// moves new requests to a new daemon when the old one retires.
pub async fn relay(dirs: HostDirs, caller: Value) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    #[allow(clippy::disallowed_methods)] // the relay owns stdout in native mode
    let stdout = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    // In-flight requests: raw id -> (legacy dialect?, generation).
    let in_flight: Arc<std::sync::Mutex<HashMap<String, (bool, u64)>>> = Arc::default();
    let (news_tx, mut news) = mpsc::unbounded_channel::<DaemonNews>();
    let mut link: Option<Link> = None;
    // Links to retiring daemons, open until they have answered everything.
    let mut retiring: Vec<Link> = Vec::new();
    let mut generation = 0u64;
    let mut dead = None;
    let mut readers = tokio::task::JoinSet::new();
    // stdin is read on its own task: a frame read is not cancel-safe, and
    // the loop below also waits for news from the daemons.
    let (frames_tx, mut frames) = mpsc::channel::<std::io::Result<Inbound>>(64);
    tokio::spawn(async move {
        loop {
            let r = read_frame(&mut stdin, MAX_INBOUND).await;
            let more = matches!(r, Ok(Inbound::Frame(_) | Inbound::Oversized { .. }));
            if frames_tx.send(r).await.is_err() || !more {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            r = frames.recv() => match r {
                Some(Ok(Inbound::Frame(bytes))) => {
                    if link.is_none() {
                        generation += 1;
                        match open_link(&dirs, &caller, generation, dead).await {
                            Ok((l, rd)) => {
                                readers.spawn(read_daemon(rd, l.generation, stdout.clone(), in_flight.clone(), news_tx.clone()));
                                link = Some(l);
                            }
                            Err(e) => {
                                // This request fails with the reason; the
                                // next one tries again.
                                tracing::error!("cannot reach the daemon: {e:#}");
                                let msg = format!("cannot start or reach the bitnet-host daemon: {e}");
                                let reply = match id_of(&bytes) {
                                    Some((raw, _, true)) => json!({"messageId": serde_json::from_str::<Value>(&raw).unwrap_or(Value::Null),
                                        "status": "error", "code": "internal", "message": msg}),
                                    Some((raw, _, false)) => json!({"id": serde_json::from_str::<Value>(&raw).unwrap_or(Value::Null),
                                        "ok": false, "error": {"code": "internal", "message": msg}}),
                                    None => json!({"id": null, "ok": false, "error": {"code": "internal", "message": msg}}),
                                };
                                let mut o = stdout.lock().await;
                                let _ = o.write_all(&frame(&reply)).await;
                                let _ = o.flush().await;
                                continue;
                            }
                        }
                    }
                    let l = link.as_mut().expect("linked above");
                    if let Some((id, _, legacy)) = id_of(&bytes) {
                        in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (legacy, l.generation));
                    }
                    let mut out = (bytes.len() as u32).to_ne_bytes().to_vec();
                    out.extend(&bytes);
                    if l.to_daemon.write_all(&out).await.is_err() {
                        // Its reader reports it gone; the request fails there.
                        dead = l.pid;
                        link = None;
                    }
                }
                // Oversized frames are the daemon's to answer too, but their
                // bytes are gone: say it here.
                Some(Ok(Inbound::Oversized { declared })) => {
                    let e = json!({"id": null, "ok": false, "error": {"code": "frame_too_large",
                        "message": format!("frame of {declared} bytes exceeds the {MAX_INBOUND}-byte limit; it was skipped")}});
                    let mut o = stdout.lock().await;
                    let _ = o.write_all(&frame(&e)).await;
                    let _ = o.flush().await;
                }
                _ => break,
            },
            Some(n) = news.recv() => match n {
                DaemonNews::Retiring(g) => {
                    // Keep its write half open (closing it would cancel what it
                    // still runs); new requests go to a new daemon.
                    if let Some(l) = link.take_if(|l| l.generation == g) {
                        retiring.push(l);
                    }
                }
                DaemonNews::Gone(g) => {
                    if let Some(l) = link.take_if(|l| l.generation == g) {
                        dead = l.pid;
                    }
                    retiring.retain(|l| l.generation != g);
                    fail_lost(&stdout, &in_flight, g).await;
                }
            },
        }
    }
    // stdin ended: let the daemons answer what is still running, briefly.
    for mut l in link.take().into_iter().chain(retiring) {
        let _ = l.to_daemon.shutdown().await;
    }
    let _ =
        tokio::time::timeout(Duration::from_millis(1500), async { while readers.join_next().await.is_some() {} }).await;
    Ok(())
}

/// Copies one daemon connection's frames to stdout, noting final replies.
async fn read_daemon(
    mut rd: Box<dyn AsyncRead + Send + Unpin>,
    generation: u64,
    stdout: Arc<tokio::sync::Mutex<tokio::io::Stdout>>,
    in_flight: Arc<std::sync::Mutex<HashMap<String, (bool, u64)>>>,
    news: mpsc::UnboundedSender<DaemonNews>,
) {
    while let Ok(Inbound::Frame(bytes)) = read_frame(&mut rd, u32::MAX as usize).await {
        match id_of(&bytes) {
            Some((id, true, _)) => {
                in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
            None if is_notice(&bytes, "daemon_retiring") => {
                let _ = news.send(DaemonNews::Retiring(generation));
                continue;
            }
            _ => {}
        }
        let mut out = (bytes.len() as u32).to_ne_bytes().to_vec();
        out.extend(&bytes);
        let mut o = stdout.lock().await;
        if o.write_all(&out).await.is_err() || o.flush().await.is_err() {
            break;
        }
    }
    let _ = news.send(DaemonNews::Gone(generation));
}

fn is_notice(bytes: &[u8], name: &str) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v["event"] == name && v.get("id").is_none_or(Value::is_null))
}

/// Answers every request a vanished daemon connection had with an error.
async fn fail_lost(
    stdout: &tokio::sync::Mutex<tokio::io::Stdout>,
    in_flight: &std::sync::Mutex<HashMap<String, (bool, u64)>>,
    generation: u64,
) {
    let lost: Vec<(String, bool)> = {
        let mut map = in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = map.iter().filter(|(_, (_, g))| *g == generation).map(|(k, _)| k.clone()).collect();
        ids.into_iter().filter_map(|k| map.remove(&k).map(|(legacy, _)| (k, legacy))).collect()
    };
    if lost.is_empty() {
        return;
    }
    tracing::warn!(lost = lost.len(), "daemon connection lost");
    let mut o = stdout.lock().await;
    for (raw, legacy) in lost {
        let id: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        let msg = "the bitnet-host daemon stopped while answering; send the request again";
        let e = if legacy {
            json!({"messageId": id, "status": "error", "code": "backend_crashed", "message": msg})
        } else {
            json!({"id": id, "ok": false, "error": {"code": "backend_crashed", "message": msg}})
        };
        let _ = o.write_all(&frame(&e)).await;
    }
    let _ = o.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_finality_are_read_for_both_dialects() {
        assert_eq!(id_of(br#"{"id":"a","type":"chat"}"#), Some(("\"a\"".into(), true, false)));
        assert_eq!(id_of(br#"{"id":7,"event":"delta","text":"x"}"#), Some(("7".into(), false, false)));
        assert_eq!(id_of(br#"{"id":7,"ok":true,"result":{}}"#), Some(("7".into(), true, false)));
        assert_eq!(id_of(br#"{"messageId":"m","type":"generationUpdate"}"#), Some(("\"m\"".into(), false, true)));
        assert_eq!(id_of(br#"{"messageId":"m","status":"success"}"#), Some(("\"m\"".into(), true, true)));
        assert_eq!(id_of(b"not json"), None);
    }
}
