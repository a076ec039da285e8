//! The daemon's clients: reaching it (starting it when nobody answers) and
//! the CLI's control requests (`stop`, `update`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::{exe_path, transport, Conn};
use crate::dirs::HostDirs;
use crate::protocol::frame::{push_frame, FrameReader, Inbound, MAX_OUTBOUND};

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

/// A connection to a running daemon, if one answers (never starts one).
pub async fn open(dirs: &HostDirs) -> Option<Conn> {
    transport::open(dirs).await.ok()
}

/// One control request to a running daemon (never starts one), on a
/// connection of its own (a control connection: no relay hello): its reply
/// message (`result` or `error`), or None when no daemon answers.
pub async fn control_request(dirs: &HostDirs, kind: &str) -> Option<Value> {
    let Conn { rd, mut wr, .. } = open(dirs).await?;
    let mut frame = Vec::new();
    push_frame(&mut frame, json!({"id": "control", "type": kind}).to_string().as_bytes());
    wr.write_all(&frame).await.ok()?;
    // Events (`load`) may come first; the reply carries `result` or `error`.
    let mut frames = FrameReader::new(rd, MAX_OUTBOUND);
    loop {
        let Inbound::Frame(bytes) = frames.read_frame().await.ok()? else { return None };
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        if v.get("result").is_some() || v.get("error").is_some() {
            return Some(v);
        }
    }
}
