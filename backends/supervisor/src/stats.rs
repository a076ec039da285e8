//! Resource figures for a running server (RSS, CPU%), via sysinfo.

use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcStats {
    pub pid: u32,
    pub rss_bytes: u64,
    /// Percent of one core since the previous sample (0 on the first).
    pub cpu_percent: f32,
}

/// Keeps the previous sample so CPU% covers the time between two calls.
#[derive(Debug)]
pub struct Sampler {
    sys: System,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self { sys: System::new() }
    }

    pub fn sample(&mut self, pid: u32) -> Option<ProcStats> {
        let p = Pid::from_u32(pid);
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[p]),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let proc_ = self.sys.process(p)?;
        Some(ProcStats { pid, rss_bytes: proc_.memory(), cpu_percent: proc_.cpu_usage() })
    }
}
