//! Browser-facing mode: native messaging on stdin/stdout.
//!
//! A reader thread feeds the session; a writer thread owns stdout and is the
//! only code that writes to it (see [`crate::stdio`]). When stdin closes (the browser is done) or
//! SIGTERM arrives, every running request is cancelled and the process exits
//! well inside Chromium's ~2 s before SIGKILL.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::protocol::frame::MAX_INBOUND;
use crate::protocol::Wire;
use crate::session::{Role, Session};
use crate::App;

pub mod stdio;

/// How long running requests get to finish after the browser leaves.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(700);
/// How long the writer gets to flush what is queued.
pub const FLUSH_GRACE: Duration = Duration::from_millis(300);

/// Who started us, as far as the arguments tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Chromium family: argv[1] is the calling extension's origin.
    Chromium { origin: String },
    /// Firefox family: argv[1] is the manifest path, argv[2] the add-on id.
    Firefox { manifest: String, extension_id: String },
    /// `bitnet-host native` by hand or from a test.
    Manual,
}

/// Recognises a browser's launch arguments (everything after argv[0]).
/// Chromium on Windows appends `--parent-window=N`; it is ignored.
pub fn browser_launch(args: &[String]) -> Option<Caller> {
    let first = args.first()?;
    if first.starts_with("chrome-extension://") {
        return Some(Caller::Chromium { origin: first.clone() });
    }
    if first.ends_with(".json") && args.len() >= 2 && !args[1].starts_with('-') {
        return Some(Caller::Firefox { manifest: first.clone(), extension_id: args[1].clone() });
    }
    None
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves one browser connection on stdin/stdout until it ends.
pub async fn serve_stdio(app: Arc<App>, caller: Caller) {
    tracing::info!(?caller, pid = std::process::id(), "native messaging session started");
    let (tx, rx) = mpsc::channel::<Wire>(1024);
    let written = crate::native::stdio::spawn_writer(rx);
    let session = Session::new(app, tx, crate::native::caller_json(&caller), Role::Browser);
    let mut frames = crate::native::stdio::spawn_reader(MAX_INBOUND);
    let signal = terminate_signal();
    tokio::pin!(signal);
    loop {
        let inbound = tokio::select! {
            r = frames.recv() => r,
            _ = &mut signal => break,
        };
        match inbound {
            Some(Ok(inbound)) => {
                if !session.handle_inbound(inbound).await {
                    break;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "stdin failed");
                break;
            }
            None => break,
        }
    }
    tracing::info!("input closed: cancelling requests and exiting");
    session.shutdown(SHUTDOWN_GRACE).await;
    drop(session);
    let _ = tokio::time::timeout(FLUSH_GRACE, written).await;
}

/// What `status` says about a caller.
pub fn caller_json(c: &Caller) -> Value {
    match c {
        Caller::Chromium { origin } => json!({"browser": "chromium", "origin": origin}),
        Caller::Firefox { extension_id, .. } => json!({"browser": "firefox", "extension_id": extension_id}),
        Caller::Manual => json!({"browser": null}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_chromium_and_firefox_launches() {
        assert_eq!(
            browser_launch(&args(&["chrome-extension://abc/", "--parent-window=0"])),
            Some(Caller::Chromium { origin: "chrome-extension://abc/".into() })
        );
        assert_eq!(
            browser_launch(&args(&["/home/u/.mozilla/native-messaging-hosts/com.bitnet.host.json", "ext@example.org"])),
            Some(Caller::Firefox {
                manifest: "/home/u/.mozilla/native-messaging-hosts/com.bitnet.host.json".into(),
                extension_id: "ext@example.org".into()
            })
        );
        assert_eq!(browser_launch(&args(&["native"])), None);
        assert_eq!(browser_launch(&args(&["x.json"])), None);
        assert_eq!(browser_launch(&args(&[])), None);
    }
}
