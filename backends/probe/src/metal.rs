//! Metal on macOS: the default device. Thin by design: this file cannot be
//! compiled on the Linux CI.

use crate::report::{MetalInfo, Section};

#[cfg(target_os = "macos")]
pub fn probe() -> Section<MetalInfo> {
    match metal::Device::system_default() {
        Some(d) => Section::Available(MetalInfo {
            device_name: d.name().to_owned(),
            unified_memory: d.has_unified_memory(),
            recommended_working_set_bytes: d.recommended_max_working_set_size(),
        }),
        None => Section::unavailable("no Metal device"),
    }
}

#[cfg(not(target_os = "macos"))]
pub fn probe() -> Section<MetalInfo> {
    Section::unavailable("not macOS")
}
