//! What the machine has: CPU features, memory, OS, CUDA GPUs (NVML), Vulkan
//! devices, Metal. The host's choice of backend is only as good as this.
//!
//! CPU, memory and OS are read in-process on every report (cheap). Vendor
//! libraries are touched only in a child process with a timeout
//! ([`child`]), and their result is cached on disk ([`cache`]).

pub mod cache;
pub mod child;
pub mod cpu;
pub mod cuda;
pub mod metal;
pub mod report;
pub mod system;
pub mod vulkan;

use std::path::PathBuf;
use std::time::Duration;

pub use child::ChildCommand;
pub use report::*;

/// Names a recorded report file to use instead of probing (tests, bug
/// reports, selection experiments).
pub const RECORDED_ENV: &str = "BITNET_HOST_HARDWARE";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read the recorded hardware report {path}: {source}")]
    RecordedUnreadable { path: PathBuf, source: std::io::Error },
    #[error("the recorded hardware report {path} is not a valid report: {source}")]
    RecordedInvalid { path: PathBuf, source: serde_json::Error },
}

/// How to produce a report on this machine.
#[derive(Debug, Clone)]
pub struct Prober {
    /// Runs the vendor probes; None probes them in this process (only for
    /// tools that accept the risk).
    pub child: Option<ChildCommand>,
    /// Where the vendor sections are cached; None disables the cache.
    pub cache_file: Option<PathBuf>,
    pub timeout: Duration,
    /// Part of the cache key: a new host re-probes.
    pub host_version: String,
}

impl Prober {
    /// The report. `refresh` ignores (and rewrites) the cache. Only a broken
    /// recorded report is an error; every probing failure is a section that
    /// says `unavailable` and why.
    pub fn report(&self, refresh: bool) -> Result<HardwareReport, ProbeError> {
        if let Some(path) = std::env::var_os(RECORDED_ENV).filter(|p| !p.is_empty()) {
            return load_recorded(PathBuf::from(path));
        }
        let key = self.cache_file.as_ref().map(|_| cache::key(&self.host_version));
        let cached = match (&self.cache_file, &key, refresh) {
            (Some(path), Some(key), false) => cache::load(path, key),
            _ => None,
        };
        let (vendor, source) = match cached {
            Some(v) => (v, Source::Cache),
            None => {
                let v = match &self.child {
                    Some(cmd) => child::run(cmd, self.timeout),
                    None => child::probe_vendors_here(),
                };
                let failed = [v.cuda.reason(), v.vulkan.reason()].iter().flatten().any(|r| r.starts_with("probe "));
                // A probe that hung or crashed is not remembered: the next
                // start tries again.
                if let (Some(path), Some(key), false) = (&self.cache_file, &key, failed) {
                    cache::store(path, key, &v);
                }
                (v, Source::Probed)
            }
        };
        Ok(HardwareReport {
            schema: SCHEMA,
            os: system::os(),
            cpu: cpu::probe(),
            memory: system::memory(),
            vendor,
            source,
        })
    }
}

fn load_recorded(path: PathBuf) -> Result<HardwareReport, ProbeError> {
    let bytes = std::fs::read(&path).map_err(|source| ProbeError::RecordedUnreadable { path: path.clone(), source })?;
    let mut report: HardwareReport =
        serde_json::from_slice(&bytes).map_err(|source| ProbeError::RecordedInvalid { path, source })?;
    report.source = Source::File;
    Ok(report)
}
