//! bitnet-host: the native-messaging host that runs local BitNet models for
//! browser extensions. See ARCHITECTURE.md for the code map.

pub mod cli;
pub mod dirs;
pub mod handlers;
pub mod logging;
pub mod native;
pub mod protocol;
pub mod session;

use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every connection of one host process.
#[derive(Debug)]
pub struct App {
    pub started: Instant,
    pub dirs: Option<dirs::HostDirs>,
}

impl App {
    pub fn new(dirs: Option<dirs::HostDirs>) -> Self {
        Self { started: Instant::now(), dirs }
    }
}
