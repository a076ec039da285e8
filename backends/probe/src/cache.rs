//! On-disk cache of the vendor sections, keyed by everything that can
//! change them: host version, boot, and the vendor libraries' and driver
//! manifests' identities (path, size, mtime). Computing the key stats a
//! handful of files, so a warm start pays well under a millisecond.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::report::{VendorSections, SCHEMA};

#[derive(Serialize, Deserialize)]
struct Entry {
    schema: u32,
    key: String,
    vendor: VendorSections,
}

const LIB_NAMES: &[&str] = &["libnvidia-ml.so.1", "libnvidia-ml.so", "libvulkan.so.1", "libcuda.so.1"];
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/cuda/lib64",
    "/usr/lib/wsl/lib",
];
const ICD_DIRS: &[&str] = &["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];
const ENV_PATHS: &[&str] =
    &["VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES", "BITNET_VULKAN_LIB", "BITNET_NVML_LIB"];

fn stamp(path: &Path, out: &mut String) {
    if let Ok(m) = std::fs::metadata(path) {
        let mtime =
            m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        out.push_str(&format!("{}:{}:{};", path.display(), m.len(), mtime));
    }
}

/// The cache key for this host version on this machine right now.
pub fn key(host_version: &str) -> String {
    let mut k = format!("v{host_version};boot{};", sysinfo::System::boot_time());
    let mut dirs: Vec<PathBuf> = LIB_DIRS.iter().map(PathBuf::from).collect();
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&ld));
    }
    for dir in &dirs {
        for name in LIB_NAMES {
            stamp(&dir.join(name), &mut k);
        }
    }
    for dir in ICD_DIRS {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                stamp(&f, &mut k);
            }
        }
    }
    for var in ENV_PATHS {
        if let Some(v) = std::env::var_os(var) {
            k.push_str(&format!("{var}={};", v.to_string_lossy()));
            for p in std::env::split_paths(&v) {
                stamp(&p, &mut k);
            }
        }
    }
    stamp(Path::new("/proc/driver/nvidia/version"), &mut k);
    k
}

pub fn load(path: &Path, key: &str) -> Option<VendorSections> {
    let bytes = std::fs::read(path).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    (entry.schema == SCHEMA && entry.key == key).then_some(entry.vendor)
}

/// Writes the cache atomically (temp file + rename); failures only log.
pub fn store(path: &Path, key: &str, vendor: &VendorSections) {
    let entry = Entry { schema: SCHEMA, key: key.to_owned(), vendor: vendor.clone() };
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&entry)?)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not write the hardware cache");
    }
}
