//! Wiring of the probe into the host: the child command (this same binary,
//! `probe --child`), the cache file, the timeout, and the readable table.

use std::fmt::Write as _;
use std::time::Duration;

use bitnet_probe::{ChildCommand, HardwareReport, Prober, Section};

use crate::dirs::HostDirs;

/// Default time the probe child gets; `BITNET_PROBE_TIMEOUT_MS` overrides.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn prober(dirs: Option<&HostDirs>) -> Prober {
    let child = std::env::current_exe()
        .ok()
        .map(|program| ChildCommand { program, args: vec!["probe".into(), "--child".into()] });
    let timeout = std::env::var("BITNET_PROBE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    Prober {
        child,
        cache_file: dirs.map(|d| d.cache.join("hardware.json")),
        timeout,
        host_version: crate::VERSION.to_owned(),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The report as a table for people.
pub fn table(r: &HardwareReport) -> String {
    let mut s = String::new();
    let c = &r.cpu;
    let _ = writeln!(
        s,
        "OS        {} {} ({}), kernel {}",
        r.os.name.as_deref().unwrap_or(&r.os.family),
        r.os.version.as_deref().unwrap_or(""),
        r.os.arch,
        r.os.kernel.as_deref().unwrap_or("?")
    );
    if let Some(sb) = &r.os.sandbox {
        let _ =
            writeln!(s, "Sandbox   {} ({}): browsers in it cannot start native hosts outside it", sb.kind, sb.evidence);
    }
    let _ =
        writeln!(s, "CPU       {} ({})", c.brand.as_deref().unwrap_or("unknown"), c.vendor.as_deref().unwrap_or("?"));
    let _ = writeln!(
        s,
        "Cores     {} physical, {} logical",
        c.physical_cores.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        c.logical_cores
    );
    let _ = writeln!(
        s,
        "Features  {}",
        if c.features.is_empty() { "(none of interest)".into() } else { c.features.join(" ") }
    );
    if !c.caches.is_empty() {
        let caches: Vec<String> =
            c.caches.iter().map(|k| format!("L{} {} {} KiB", k.level, k.kind, k.size_bytes / 1024)).collect();
        let _ = writeln!(s, "Caches    {}", caches.join(", "));
    }
    let m = &r.memory;
    let _ = writeln!(
        s,
        "Memory    {} total, {} available, swap {}",
        gib(m.total_bytes),
        gib(m.available_bytes),
        gib(m.swap_total_bytes)
    );
    match &r.vendor.cuda {
        Section::Available(cu) => {
            let _ = writeln!(
                s,
                "CUDA      driver {}, CUDA {}",
                cu.driver_version,
                cu.cuda_driver_version.as_deref().unwrap_or("?")
            );
            for d in &cu.devices {
                let _ = writeln!(
                    s,
                    "  [{}] {}  {}  cc {}  {}",
                    d.index,
                    d.name,
                    d.memory_total_bytes.map(gib).unwrap_or_default(),
                    d.compute_capability.as_deref().unwrap_or("?"),
                    d.pci_bus_id.as_deref().unwrap_or("")
                );
            }
        }
        Section::Unavailable { reason } => {
            let _ = writeln!(s, "CUDA      unavailable: {reason}");
        }
    }
    match &r.vendor.vulkan {
        Section::Available(v) => {
            let _ = writeln!(s, "Vulkan    loader {}", v.instance_version);
            for d in &v.devices {
                let note = if d.counts_as_gpu { "" } else { "  (not a GPU)" };
                let _ = writeln!(
                    s,
                    "  [{}] {}  {:?}  {}  API {}{}",
                    d.index,
                    d.name,
                    d.kind,
                    gib(d.device_local_bytes),
                    d.api_version,
                    note
                );
            }
        }
        Section::Unavailable { reason } => {
            let _ = writeln!(s, "Vulkan    unavailable: {reason}");
        }
    }
    match &r.vendor.metal {
        Section::Available(mt) => {
            let _ = writeln!(
                s,
                "Metal     {} (unified memory: {}, working set {})",
                mt.device_name,
                mt.unified_memory,
                gib(mt.recommended_working_set_bytes)
            );
        }
        Section::Unavailable { reason } => {
            let _ = writeln!(s, "Metal     unavailable: {reason}");
        }
    }
    let _ = writeln!(s, "Source    {:?}", r.source);
    s
}
