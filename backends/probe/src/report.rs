//! The hardware report: what selection decides from, what `hardware --json`
//! prints, and what a recorded report file holds.

use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; a cache of another schema is ignored.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareReport {
    pub schema: u32,
    pub os: OsInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    #[serde(flatten)]
    pub vendor: VendorSections,
    /// Where the vendor sections came from.
    pub source: Source,
}

/// The sections that need vendor libraries, probed in a child process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VendorSections {
    pub cuda: Section<CudaInfo>,
    pub vulkan: Section<VulkanInfo>,
    pub metal: Section<MetalInfo>,
}

impl VendorSections {
    /// Every section unavailable for the same reason (the child failed).
    pub fn all_unavailable(reason: &str) -> Self {
        Self {
            cuda: Section::unavailable(reason),
            vulkan: Section::unavailable(reason),
            metal: Section::unavailable(reason),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Probed just now.
    Probed,
    /// Vendor sections from the on-disk cache; CPU, OS and memory fresh.
    Cache,
    /// A recorded report file (BITNET_HOST_HARDWARE).
    File,
}

/// A part of the machine that is there (with its details) or is not (with
/// why, in words a user can act on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Section<T> {
    Available(T),
    Unavailable { reason: String },
}

impl<T> Section<T> {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable { reason: reason.into() }
    }

    pub fn available(&self) -> Option<&T> {
        match self {
            Self::Available(t) => Some(t),
            Self::Unavailable { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Available(_) => None,
            Self::Unavailable { reason } => Some(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsInfo {
    /// `linux`, `macos`, `windows`, ...
    pub family: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    /// A sandbox known to break native messaging, if we run inside one.
    pub sandbox: Option<Sandbox>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// `snap` or `flatpak`.
    pub kind: String,
    /// What gave it away (an env var, a file).
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub arch: String,
    pub vendor: Option<String>,
    pub brand: Option<String>,
    pub physical_cores: Option<usize>,
    pub logical_cores: usize,
    /// Kernel-relevant features present, by canonical name (see cpu.rs).
    pub features: Vec<String>,
    pub caches: Vec<CacheInfo>,
}

impl CpuInfo {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    pub level: u8,
    /// `data`, `instruction` or `unified`.
    pub kind: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaInfo {
    pub driver_version: String,
    /// e.g. "12.4".
    pub cuda_driver_version: Option<String>,
    pub devices: Vec<CudaDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaDevice {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub pci_bus_id: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    /// e.g. "8.6".
    pub compute_capability: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VulkanInfo {
    /// The loader's instance version, e.g. "1.3.239".
    pub instance_version: String,
    pub devices: Vec<VulkanDevice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VulkanDeviceKind {
    Discrete,
    Integrated,
    Virtual,
    /// A software rasteriser (llvmpipe, lavapipe, SwiftShader).
    Cpu,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VulkanDevice {
    pub index: u32,
    pub name: String,
    pub kind: VulkanDeviceKind,
    pub vendor_id: u32,
    pub device_id: u32,
    /// Raw driver version as the driver reports it (encoding is vendor-specific).
    pub driver_version: u32,
    pub api_version: String,
    /// Sum of heaps flagged device-local.
    pub device_local_bytes: u64,
    /// Hex, 32 digits; the key to match a device across APIs (never its list position).
    pub uuid: String,
    /// False for software devices and devices without device-local memory.
    pub counts_as_gpu: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetalInfo {
    pub device_name: String,
    pub unified_memory: bool,
    pub recommended_working_set_bytes: u64,
}

impl HardwareReport {
    /// Vulkan devices that are real GPUs.
    pub fn vulkan_gpus(&self) -> Vec<&VulkanDevice> {
        self.vendor
            .vulkan
            .available()
            .map(|v| v.devices.iter().filter(|d| d.counts_as_gpu).collect())
            .unwrap_or_default()
    }
}
