//! End-to-end tests: the real host binary driven over real pipes.
//! One integration-test binary (as in ripgrep); one module per area.

mod browser;
mod calibrate;
mod cli;
// The daemon is Unix-only until its named-pipe transport exists.
#[cfg(unix)]
mod daemon;
mod extension_ui;
mod hardware;
#[cfg(unix)]
mod hostile;
mod http_api;
mod infer;
// Linux and macOS layouts, file modes and systemd; Windows install is the
// installer crate's unit tests (registry under Wine) for now.
#[cfg(unix)]
mod install;
mod legacy;
mod native;
mod pull;
// Real bitnet.cpp builds named by environment variables (skipped without).
#[cfg(target_os = "linux")]
mod real_server;
mod runner;
mod select;
mod server;
mod supervisor;
mod update;
mod windows;
// Both native modes; the relay's daemon is reached over its Unix socket.
#[cfg(unix)]
mod wire;

use std::path::Path;

pub fn host_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_host-under-test"))
}

pub fn standin_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_standin-server"))
}
