//! CUDA devices through NVML (nvml-wrapper loads libnvidia-ml at run time).
//! Runs in the probe child: a broken driver can hang or crash it.

use std::ffi::OsStr;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use crate::report::{CudaDevice, CudaInfo, Section};

/// Where NVML is loaded from: `BITNET_NVML_LIB` when set (unusual installs,
/// and tests), else the system's libnvidia-ml.
pub fn probe(lib_override: Option<&OsStr>) -> Section<CudaInfo> {
    let nvml = match lib_override {
        Some(path) => Nvml::builder().lib_path(path).init(),
        None => Nvml::init(),
    };
    let nvml = match nvml {
        Ok(n) => n,
        Err(e) => return Section::unavailable(explain(&e)),
    };
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|_| "unknown".into());
    let cuda_driver_version = nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return Section::unavailable(explain(&e)),
    };
    if count == 0 {
        return Section::unavailable(format!("NVIDIA driver {driver_version} is loaded but reports no device"));
    }
    let mut devices = Vec::new();
    for index in 0..count {
        let d = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(index, error = %e, "NVML device unreadable");
                continue;
            }
        };
        let mem = d.memory_info().ok();
        devices.push(CudaDevice {
            index,
            name: d.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
            uuid: d.uuid().ok(),
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
            memory_total_bytes: mem.as_ref().map(|m| m.total),
            memory_free_bytes: mem.as_ref().map(|m| m.free),
            compute_capability: d.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor)),
        });
    }
    Section::Available(CudaInfo { driver_version, cuda_driver_version, devices })
}

/// An NVML failure in words a user can act on.
pub fn explain(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => {
            format!("NVIDIA management library (libnvidia-ml) not found: no NVIDIA driver installed ({inner})")
        }
        NvmlError::LibraryNotFound => "NVIDIA management library (libnvidia-ml) not found".into(),
        NvmlError::DriverNotLoaded => "NVIDIA driver is installed but not loaded (no device, or reboot needed)".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_) => {
            "NVIDIA driver too old for this host (missing NVML function)".into()
        }
        NvmlError::LibRmVersionMismatch => "NVIDIA driver and kernel module versions differ: reboot needed".into(),
        other => format!("NVML failed: {other}"),
    }
}
