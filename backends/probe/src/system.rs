//! OS, memory and sandbox: cheap enough to read fresh on every report.

use std::path::Path;

use crate::report::{MemoryInfo, OsInfo, Sandbox};

pub fn memory() -> MemoryInfo {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    MemoryInfo {
        total_bytes: sys.total_memory(),
        available_bytes: sys.available_memory(),
        swap_total_bytes: sys.total_swap(),
        swap_free_bytes: sys.free_swap(),
    }
}

pub fn os() -> OsInfo {
    OsInfo {
        family: std::env::consts::OS.to_owned(),
        name: sysinfo::System::name(),
        version: sysinfo::System::os_version(),
        kernel: sysinfo::System::kernel_version(),
        arch: std::env::consts::ARCH.to_owned(),
        sandbox: detect_sandbox(|k| std::env::var(k).ok(), |p| p.exists()),
    }
}

/// Snap and Flatpak confine a browser so that it cannot start a host
/// installed outside the sandbox; a host that finds itself inside one says
/// so. Pure over its inputs so every case is testable.
pub fn detect_sandbox(env: impl Fn(&str) -> Option<String>, exists: impl Fn(&Path) -> bool) -> Option<Sandbox> {
    if let Some(name) = env("SNAP_NAME").or_else(|| env("SNAP").filter(|s| s.starts_with("/snap/"))) {
        return Some(Sandbox { kind: "snap".into(), evidence: format!("SNAP environment ({name})") });
    }
    if let Some(id) = env("FLATPAK_ID") {
        return Some(Sandbox { kind: "flatpak".into(), evidence: format!("FLATPAK_ID={id}") });
    }
    if exists(Path::new("/.flatpak-info")) {
        return Some(Sandbox { kind: "flatpak".into(), evidence: "/.flatpak-info exists".into() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(vars: &[(&str, &str)], files: &[&str]) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        detect_sandbox(|k| vars.get(k).cloned(), |p| files.iter().any(|f| Path::new(f) == p)).map(|s| s.kind)
    }

    #[test]
    fn recognises_snap_and_flatpak() {
        assert_eq!(detect(&[], &[]), None);
        assert_eq!(detect(&[("SNAP_NAME", "chromium")], &[]).as_deref(), Some("snap"));
        assert_eq!(detect(&[("SNAP", "/snap/firefox/123")], &[]).as_deref(), Some("snap"));
        assert_eq!(detect(&[("SNAP", "/home/me/snap")], &[]), None);
        assert_eq!(detect(&[("FLATPAK_ID", "org.mozilla.firefox")], &[]).as_deref(), Some("flatpak"));
        assert_eq!(detect(&[], &["/.flatpak-info"]).as_deref(), Some("flatpak"));
    }

    #[test]
    fn memory_is_plausible() {
        let m = memory();
        assert!(m.total_bytes > 0);
        assert!(m.available_bytes <= m.total_bytes);
    }
}
