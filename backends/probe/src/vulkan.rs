//! Vulkan devices through ash, with the loader opened at run time (never
//! linked). Runs in the probe child: a broken ICD can hang or crash it.
//!
//! Software rasterisers (llvmpipe/lavapipe) are listed but never count as a
//! GPU, and devices are keyed by UUID, not by list position.

use std::ffi::OsStr;

use ash::vk;

use crate::report::{Section, VulkanDevice, VulkanDeviceKind, VulkanInfo};

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v))
}

pub fn kind_of(t: vk::PhysicalDeviceType) -> VulkanDeviceKind {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => VulkanDeviceKind::Discrete,
        vk::PhysicalDeviceType::INTEGRATED_GPU => VulkanDeviceKind::Integrated,
        vk::PhysicalDeviceType::VIRTUAL_GPU => VulkanDeviceKind::Virtual,
        vk::PhysicalDeviceType::CPU => VulkanDeviceKind::Cpu,
        _ => VulkanDeviceKind::Other,
    }
}

/// Whether a device may be used as a GPU: not a software device, and with
/// memory of its own.
pub fn counts_as_gpu(kind: VulkanDeviceKind, device_local_bytes: u64) -> bool {
    !matches!(kind, VulkanDeviceKind::Cpu) && device_local_bytes > 0
}

/// `lib_override`: `BITNET_VULKAN_LIB` when set, else the system loader.
pub fn probe(lib_override: Option<&OsStr>) -> Section<VulkanInfo> {
    // SAFETY: loading the Vulkan loader runs its initialisers; that is the
    // risk this child process exists to contain.
    let entry = match lib_override {
        Some(path) => unsafe { ash::Entry::load_from(path) },
        None => unsafe { ash::Entry::load() },
    };
    let entry = match entry {
        Ok(e) => e,
        Err(e) => return Section::unavailable(format!("Vulkan loader (libvulkan) not found: {e}")),
    };
    // SAFETY: plain Vulkan calls on a loaded entry; every handle created here
    // is destroyed before returning.
    unsafe {
        let instance_version = entry.try_enumerate_instance_version().ok().flatten().unwrap_or(vk::API_VERSION_1_0);
        let wanted = if instance_version >= vk::API_VERSION_1_1 { vk::API_VERSION_1_1 } else { vk::API_VERSION_1_0 };
        let app = vk::ApplicationInfo::default().application_name(c"bitnet-host probe").api_version(wanted);
        let create = vk::InstanceCreateInfo::default().application_info(&app);
        let instance = match entry.create_instance(&create, None) {
            Ok(i) => i,
            Err(e) => return Section::unavailable(format!("Vulkan instance creation failed: {e}")),
        };
        let physical = match instance.enumerate_physical_devices() {
            Ok(p) => p,
            Err(e) => {
                instance.destroy_instance(None);
                return Section::unavailable(format!("Vulkan device enumeration failed: {e}"));
            }
        };
        let mut devices = Vec::new();
        for (index, pd) in physical.into_iter().enumerate() {
            let props = instance.get_physical_device_properties(pd);
            let mut uuid = String::new();
            if wanted >= vk::API_VERSION_1_1 && props.api_version >= vk::API_VERSION_1_1 {
                let mut id = vk::PhysicalDeviceIDProperties::default();
                let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id);
                instance.get_physical_device_properties2(pd, &mut p2);
                uuid = id.device_uuid.iter().map(|b| format!("{b:02x}")).collect();
            }
            let mem = instance.get_physical_device_memory_properties(pd);
            let device_local_bytes = mem.memory_heaps[..mem.memory_heap_count as usize]
                .iter()
                .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
                .map(|h| h.size)
                .sum();
            let kind = kind_of(props.device_type);
            devices.push(VulkanDevice {
                index: index as u32,
                name: props.device_name_as_c_str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                kind,
                vendor_id: props.vendor_id,
                device_id: props.device_id,
                driver_version: props.driver_version,
                api_version: version_string(props.api_version),
                device_local_bytes,
                uuid,
                counts_as_gpu: counts_as_gpu(kind, device_local_bytes),
            });
        }
        instance.destroy_instance(None);
        if devices.is_empty() {
            return Section::unavailable("Vulkan loader found but no device (no Vulkan driver/ICD installed)");
        }
        Section::Available(VulkanInfo { instance_version: version_string(instance_version), devices })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_and_memoryless_devices_are_not_gpus() {
        assert!(!counts_as_gpu(VulkanDeviceKind::Cpu, 8 << 30));
        assert!(!counts_as_gpu(VulkanDeviceKind::Discrete, 0));
        assert!(counts_as_gpu(VulkanDeviceKind::Discrete, 8 << 30));
        assert!(counts_as_gpu(VulkanDeviceKind::Integrated, 1 << 30));
        assert_eq!(kind_of(vk::PhysicalDeviceType::CPU), VulkanDeviceKind::Cpu);
    }
}
