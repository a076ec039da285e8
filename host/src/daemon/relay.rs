//! The relay: a browser's native-messaging pipes <-> the per-user daemon.
//!
//! It parses each request with the same code as the in-process host, so
//! what it refuses (bad JSON, bad ids, duplicate ids, oversized and cut
//! frames) gets the same error, and only valid requests reach the daemon.
//! It reads replies only as far as [`route::reply`] needs: whose they are
//! and whether they end the request. A message's chunks reach the browser
//! together (nothing between them); every request it forwarded gets exactly
//! one final reply, from the daemon or, if that connection ends first, a
//! `backend_crashed` from here.
//!
//! Connects when a request needs it (a stopped daemon stays stopped until
//! the browser asks for something); moves new requests to a new daemon
//! when the old one retires, while the old one answers what it had.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client::{connect, control_request};
use super::{current_identity, Conn};
use crate::dirs::HostDirs;
use crate::native::stdio::Encoded;
use crate::protocol::frame::{push_frame, FrameReader, Inbound, MAX_INBOUND, MAX_OUTBOUND};
use crate::protocol::route::{self, Kind};
use crate::protocol::{self, Dialect, ErrorCode, ProtoError, RequestId};

/// The relay's private request id for its hello (never forwarded).
pub(super) const HELLO_ID: &str = "bitnet-relay-hello";

/// Bytes of replies gathered before they go to the writer in one piece.
const BATCH_BYTES: usize = 256 * 1024;

/// A request sent to a daemon and not answered yet.
struct Pending {
    dialect: Dialect,
    id: RequestId,
    generation: u64,
}

/// Forwarded requests by id key, shared by the loop that sends them and the
/// tasks that read the answers: whoever removes an entry sends its final.
type PendingMap = Arc<Mutex<HashMap<String, Pending>>>;

fn lock(p: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

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

type DaemonFrames = FrameReader<Box<dyn AsyncRead + Send + Unpin>>;

fn encoded(w: protocol::Wire) -> Encoded {
    let mut out = Vec::new();
    w.encode_into(&mut out);
    Encoded(out)
}

/// Connect (starting a daemon if needed) and introduce ourselves; a daemon
/// of another build (an update replaced the binary) is told to retire over
/// a control connection of our own, and the next connect starts ours.
async fn open_link(
    dirs: &HostDirs,
    caller: &Value,
    generation: u64,
    dead: Option<i32>,
) -> anyhow::Result<(Link, DaemonFrames)> {
    let mine = current_identity();
    let mut dead = dead;
    for _ in 0..3 {
        let Conn { rd, mut wr, pid } = connect(dirs, dead).await?;
        let mut hello = Vec::new();
        let body = json!({"id": HELLO_ID, "type": "relay_hello", "caller": caller, "identity": mine});
        push_frame(&mut hello, body.to_string().as_bytes());
        wr.write_all(&hello).await?;
        let mut frames = FrameReader::new(rd, MAX_OUTBOUND);
        let theirs = loop {
            match frames.read_frame().await? {
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
            return Ok((Link { generation, to_daemon: wr, pid }, frames));
        }
        tracing::info!(daemon = %theirs, relay = %mine, "asking a daemon of another build to retire");
        drop((wr, frames));
        control_request(dirs, "retire").await;
        dead = pid;
    }
    anyhow::bail!("could not reach a daemon of this build")
}

/// The relay: stdin/stdout <-> the daemon. Returns when stdin closes.
pub async fn relay(dirs: HostDirs, caller: Value) -> anyhow::Result<()> {
    let (out, out_rx) = mpsc::channel::<Encoded>(256);
    let written = crate::native::stdio::spawn_writer(out_rx);
    let mut frames = crate::native::stdio::spawn_reader(MAX_INBOUND);
    let pending: PendingMap = Arc::default();
    let (news_tx, mut news) = mpsc::unbounded_channel::<DaemonNews>();
    let mut link: Option<Link> = None;
    // Links to retiring daemons, open until they have answered everything.
    let mut retiring: Vec<Link> = Vec::new();
    let mut generation = 0u64;
    let mut dead = None;
    let mut readers = tokio::task::JoinSet::new();
    let reply = |w: protocol::Wire| out.send(encoded(w));
    loop {
        tokio::select! {
            r = frames.recv() => match r {
                Some(Ok(Inbound::Frame(bytes))) => {
                    let req = match protocol::parse_request(&bytes) {
                        Ok(req) => req,
                        Err(rej) => {
                            let _ = reply(protocol::error_reply(&rej.dialect, rej.id.as_ref(), rej.error)).await;
                            continue;
                        }
                    };
                    let key = req.id.as_ref().map(RequestId::key);
                    if key.as_ref().is_some_and(|k| lock(&pending).contains_key(k)) {
                        let _ = reply(protocol::error_reply(&req.dialect, req.id.as_ref(), ProtoError::duplicate_id())).await;
                        continue;
                    }
                    if link.is_none() {
                        generation += 1;
                        match open_link(&dirs, &caller, generation, dead).await {
                            Ok((l, rd)) => {
                                readers.spawn(read_daemon(rd, l.generation, out.clone(), pending.clone(), news_tx.clone()));
                                link = Some(l);
                            }
                            Err(e) => {
                                // This request fails with the reason; the
                                // next one tries again.
                                tracing::error!("cannot reach the daemon: {e:#}");
                                let e = ProtoError::new(ErrorCode::Internal, format!("cannot start or reach the bitnet-host daemon: {e}"));
                                let _ = reply(protocol::error_reply(&req.dialect, req.id.as_ref(), e)).await;
                                continue;
                            }
                        }
                    }
                    let l = link.as_mut().expect("linked above");
                    if let (Some(key), Some(id)) = (key, req.id) {
                        lock(&pending).insert(key, Pending { dialect: req.dialect, id, generation: l.generation });
                    }
                    let mut frame = Vec::with_capacity(bytes.len() + 4);
                    push_frame(&mut frame, &bytes);
                    if l.to_daemon.write_all(&frame).await.is_err() {
                        // Its reader reports it gone; the request fails there.
                        dead = l.pid;
                        link = None;
                    }
                }
                Some(Ok(Inbound::Oversized { declared })) => {
                    let e = ProtoError::frame_too_large(declared, MAX_INBOUND);
                    let _ = reply(protocol::error_reply(&Dialect::V1, None, e)).await;
                }
                Some(Ok(Inbound::Truncated { declared, received })) => {
                    let e = ProtoError::truncated_frame(declared, received);
                    let _ = reply(protocol::error_reply(&Dialect::V1, None, e)).await;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "stdin failed");
                    break;
                }
                Some(Ok(Inbound::Eof)) | None => break,
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
                    fail_lost(&out, &pending, g).await;
                }
            },
        }
    }
    // stdin ended: let the daemons answer what is still running, briefly.
    for mut l in link.take().into_iter().chain(retiring) {
        let _ = l.to_daemon.shutdown().await;
    }
    let drained =
        tokio::time::timeout(Duration::from_millis(1500), async { while readers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("daemon still answering after the browser left");
    }
    drop(readers);
    drop(out);
    let _ = tokio::time::timeout(crate::native::FLUSH_GRACE, written).await;
    Ok(())
}

/// Copies one daemon connection's replies to the writer, in batches, each
/// message's chunks together; removes each request answered from `pending`.
async fn read_daemon(
    mut frames: DaemonFrames,
    generation: u64,
    out: mpsc::Sender<Encoded>,
    pending: PendingMap,
    news: mpsc::UnboundedSender<DaemonNews>,
) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    // The chunks of a message still arriving.
    let mut chunks = Vec::new();
    while let Ok(Inbound::Frame(bytes)) = frames.read_frame().await {
        match route::reply(&bytes) {
            Some(r) if r.key.is_none() && r.notice.as_deref() == Some("daemon_retiring") => {
                let _ = news.send(DaemonNews::Retiring(generation));
                continue;
            }
            Some(route::Routing { kind: Kind::Chunk { index, count, final_reply }, key, .. }) => {
                push_frame(&mut chunks, &bytes);
                if index + 1 < count {
                    continue;
                }
                batch.append(&mut chunks);
                if final_reply {
                    answered(&pending, key.as_deref());
                }
            }
            Some(route::Routing { kind: Kind::Final, key, .. }) => {
                push_frame(&mut batch, &bytes);
                answered(&pending, key.as_deref());
            }
            _ => push_frame(&mut batch, &bytes),
        }
        if batch.len() >= BATCH_BYTES || !frames.has_frame() {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES));
            if out.send(Encoded(full)).await.is_err() {
                break;
            }
        }
    }
    if !batch.is_empty() {
        let _ = out.send(Encoded(batch)).await;
    }
    let _ = news.send(DaemonNews::Gone(generation));
}

fn answered(pending: &PendingMap, key: Option<&str>) {
    if let Some(k) = key {
        lock(pending).remove(k);
    }
}

/// Answers every request a vanished daemon connection had with an error.
async fn fail_lost(out: &mpsc::Sender<Encoded>, pending: &PendingMap, generation: u64) {
    let lost: Vec<Pending> = {
        let mut map = lock(pending);
        let keys: Vec<String> =
            map.iter().filter(|(_, p)| p.generation == generation).map(|(k, _)| k.clone()).collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    };
    if lost.is_empty() {
        return;
    }
    tracing::warn!(lost = lost.len(), "daemon connection lost");
    let mut bytes = Vec::new();
    for p in lost {
        protocol::error_reply(&p.dialect, Some(&p.id), ProtoError::daemon_lost()).encode_into(&mut bytes);
    }
    let _ = out.send(Encoded(bytes)).await;
}
