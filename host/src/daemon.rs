//! One daemon per user owns the backends; browser-facing processes relay to
//! it, so every browser connection shares one loaded model.
//!
//! - `bitnet-host daemon`: holds an exclusive lock (exactly one daemon per
//!   user, however many start at once), listens on an owner-only Unix
//!   socket, refuses peers of another uid, serves each connection as a
//!   [`Session`] with the same framing as native messaging, and exits after
//!   an idle period with no connections.
//! - The relay (native mode with the daemon on): connects, starting the
//!   daemon detached if needed, and copies frames both ways. It reads only
//!   the ids, to answer every in-flight request with an error if the daemon
//!   dies, then reconnects (starting a new one) for the next requests.
//!
//! Unix only for now: Windows needs a named pipe with an owner-only ACL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::dirs::HostDirs;
use crate::protocol::frame::{read_frame, Inbound, MAX_INBOUND};
use crate::protocol::Wire;
use crate::session::Session;
use crate::App;

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

/// Whether the env asks native mode to relay to the daemon.
pub fn enabled() -> bool {
    std::env::var("BITNET_HOST_DAEMON").is_ok_and(|v| v == "1")
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

#[cfg(unix)]
mod unix {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::net::{UnixListener, UnixStream};

    /// The exclusive lock that makes one daemon win.
    struct Lock {
        _file: std::fs::File,
    }

    fn try_lock(path: &Path) -> std::io::Result<Option<Lock>> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            Ok(Some(Lock { _file: f }))
        } else {
            Ok(None)
        }
    }

    fn same_user(s: &UnixStream) -> bool {
        // SAFETY: plain syscall.
        let me = unsafe { libc::geteuid() };
        s.peer_cred().map(|c| c.uid() == me).unwrap_or(false)
    }

    pub async fn serve(app: Arc<App>, dirs: &HostDirs) -> anyhow::Result<bool> {
        let dir = run_dir(dirs);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let Some(_lock) = try_lock(&dir.join("daemon.lock"))? else {
            tracing::info!("another daemon holds the lock");
            return Ok(false);
        };
        let sock = dir.join("daemon.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(dir.join("daemon.pid"), std::process::id().to_string())?;
        tracing::info!(socket = %sock.display(), pid = std::process::id(), "daemon listening");
        tokio::spawn(crate::update::background_checks(app.clone(), dirs.clone()));
        let idle = idle_from_env();
        let connections = Arc::new(AtomicUsize::new(0));
        let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<()>();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let idle_timer = async {
                match idle {
                    Some(d) if connections.load(Ordering::SeqCst) == 0 => tokio::time::sleep(d).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    if !same_user(&stream) {
                        tracing::warn!("refused a connection from another user");
                        continue;
                    }
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (app, n, gone) = (app.clone(), connections.clone(), gone_tx.clone());
                    tokio::spawn(async move {
                        connection(app, stream).await;
                        n.fetch_sub(1, Ordering::SeqCst);
                        let _ = gone.send(());
                    });
                }
                _ = gone_rx.recv() => {} // re-arm the idle timer
                _ = idle_timer => {
                    tracing::info!(idle = ?idle, "no connections: daemon exiting");
                    break;
                }
                _ = term.recv() => break,
            }
        }
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(dir.join("daemon.pid"));
        app.backend.unload().await;
        Ok(true)
    }

    async fn connection(app: Arc<App>, stream: UnixStream) {
        let (mut rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Wire>(1024);
        let writer = tokio::spawn(crate::native::writer_loop(wr, rx));
        let session = Session::new(app, tx);
        while let Ok(inbound) = read_frame(&mut rd, MAX_INBOUND).await {
            if !session.handle_inbound(inbound).await {
                break;
            }
        }
        session.shutdown(Duration::from_millis(700)).await;
        drop(session);
        let _ = tokio::time::timeout(Duration::from_millis(300), writer).await;
    }

    /// The daemon's pid on the other end of a connection.
    pub fn peer_pid(s: &UnixStream) -> Option<i32> {
        s.peer_cred().ok().and_then(|c| c.pid())
    }

    /// Connect to the daemon, starting it if nobody answers. `dead` is a
    /// daemon that just went away: a connection still reaching it (its
    /// listening socket outlives it by a moment) is dropped and retried.
    pub async fn connect(dirs: &HostDirs, dead: Option<i32>) -> anyhow::Result<UnixStream> {
        let sock = socket_path(dirs);
        let t = std::time::Instant::now();
        while dead.is_some() && t.elapsed() < Duration::from_secs(2) {
            match UnixStream::connect(&sock).await {
                Ok(s) if peer_pid(&s) != dead => return Ok(s),
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => break,
            }
        }
        if let Ok(s) = UnixStream::connect(&sock).await {
            if dead.is_none() || peer_pid(&s) != dead {
                return Ok(s);
            }
        }
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            // Detached: its own session, so the browser killing the relay's
            // group does not take the daemon (shared by other browsers) with it.
            cmd.process_group(0);
        }
        let mut child = cmd.spawn()?;
        let t = std::time::Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(&sock).await.map_err(|_| ()).and_then(|s| {
                if dead.is_some() && peer_pid(&s) == dead {
                    Err(())
                } else {
                    Ok(s)
                }
            }) {
                // Reap the starter when it exits (it may be a loser of the lock race).
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(s);
            }
            if t.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("the daemon did not start listening on {}", sock.display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(unix)]
pub use unix::{connect, peer_pid, serve};

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

/// The relay: stdin/stdout <-> the daemon. Returns when stdin closes.
#[cfg(unix)]
pub async fn relay(dirs: HostDirs) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    #[allow(clippy::disallowed_methods)] // the relay owns stdout in native mode
    let stdout = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    // In-flight requests: raw id -> legacy dialect?
    let in_flight: Arc<std::sync::Mutex<HashMap<String, bool>>> = Arc::default();
    let mut dead = None;
    loop {
        let stream = connect(&dirs, dead).await?;
        dead = peer_pid(&stream);
        let (mut from_daemon, mut to_daemon) = stream.into_split();
        let down = {
            let (stdout, in_flight) = (stdout.clone(), in_flight.clone());
            tokio::spawn(async move {
                loop {
                    match read_frame(&mut from_daemon, u32::MAX as usize).await {
                        Ok(Inbound::Frame(bytes)) => {
                            if let Some((id, true, _)) = id_of(&bytes) {
                                in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                            }
                            let mut out = (bytes.len() as u32).to_ne_bytes().to_vec();
                            out.extend(&bytes);
                            let mut o = stdout.lock().await;
                            if o.write_all(&out).await.is_err() || o.flush().await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            })
        };
        // Up: stdin -> daemon, until stdin ends or the daemon goes.
        let mut down = down;
        let stdin_ended = loop {
            tokio::select! {
                r = read_frame(&mut stdin, MAX_INBOUND) => match r {
                    Ok(Inbound::Frame(bytes)) => {
                        if let Some((id, _, legacy)) = id_of(&bytes) {
                            in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, legacy);
                        }
                        let mut out = (bytes.len() as u32).to_ne_bytes().to_vec();
                        out.extend(&bytes);
                        if to_daemon.write_all(&out).await.is_err() {
                            break false;
                        }
                    }
                    // Oversized and truncated frames are the daemon's to
                    // answer too, but their bytes are gone: say it here.
                    Ok(Inbound::Oversized { declared }) => {
                        let e = json!({"id": null, "ok": false, "error": {"code": "frame_too_large",
                            "message": format!("frame of {declared} bytes exceeds the {MAX_INBOUND}-byte limit; it was skipped")}});
                        let mut o = stdout.lock().await;
                        let _ = o.write_all(&frame(&e)).await;
                        let _ = o.flush().await;
                    }
                    _ => break true,
                },
                _ = &mut down => break false,
            }
        };
        if stdin_ended {
            // Let the daemon answer what is still running, briefly.
            let _ = to_daemon.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_millis(1500), &mut down).await;
            return Ok(());
        }
        // The daemon went away: fail what it had, then reconnect.
        down.abort();
        let lost: Vec<(String, bool)> = in_flight.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        tracing::warn!(lost = lost.len(), "daemon connection lost; reconnecting");
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
