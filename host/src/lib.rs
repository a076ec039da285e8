//! bitnet-host: the native-messaging host that runs local BitNet models for
//! browser extensions. See ARCHITECTURE.md for the code map.

pub mod backend;
pub mod chat;
pub mod cli;
pub mod daemon;
pub mod dirs;
pub mod handlers;
pub mod handlers_infer;
pub mod handlers_server;
pub mod logging;
pub mod native;
pub mod protocol;
pub mod pull;
pub mod session;
pub mod setup;
pub mod update;
mod update_cli;

pub mod hardware;

use std::sync::Arc;
use std::time::Instant;

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
}

impl App {
    pub fn new(dirs: Option<dirs::HostDirs>) -> Self {
        let prober = hardware::prober(dirs.as_ref());
        let backend = backend::Backend::new(dirs.clone());
        Self { started: Instant::now(), dirs, prober, hardware: tokio::sync::OnceCell::new(), backend }
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
