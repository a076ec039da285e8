//! CPU: features detected at run time (never from compile-time target
//! flags), vendor and brand from CPUID, cores, caches.

use crate::report::{CacheInfo, CpuInfo};

/// Canonical feature names, in report order, with the /proc/cpuinfo flag
/// that names the same thing on Linux.
#[cfg(target_arch = "x86_64")]
pub const FEATURES: &[(&str, &str)] = &[
    ("sse4.2", "sse4_2"),
    ("avx", "avx"),
    ("avx2", "avx2"),
    ("fma", "fma"),
    ("f16c", "f16c"),
    ("bmi2", "bmi2"),
    ("avx512f", "avx512f"),
    ("avx512bw", "avx512bw"),
    ("avx512vl", "avx512vl"),
    ("avx512vnni", "avx512_vnni"),
    ("avxvnni", "avx_vnni"),
    ("amx-tile", "amx_tile"),
    ("amx-int8", "amx_int8"),
];

#[cfg(target_arch = "aarch64")]
pub const FEATURES: &[(&str, &str)] =
    &[("neon", "asimd"), ("dotprod", "asimddp"), ("i8mm", "i8mm"), ("sve", "sve"), ("sme", "sme"), ("fp16", "fphp")];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const FEATURES: &[(&str, &str)] = &[];

#[cfg(target_arch = "x86_64")]
fn detect(name: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match name {
        "sse4.2" => has!("sse4.2"),
        "avx" => has!("avx"),
        "avx2" => has!("avx2"),
        "fma" => has!("fma"),
        "f16c" => has!("f16c"),
        "bmi2" => has!("bmi2"),
        "avx512f" => has!("avx512f"),
        "avx512bw" => has!("avx512bw"),
        "avx512vl" => has!("avx512vl"),
        "avx512vnni" => has!("avx512vnni"),
        "avxvnni" => has!("avxvnni"),
        "amx-tile" => amx(24),
        "amx-int8" => amx(25),
        _ => false,
    }
}

/// AMX bit `bit` of CPUID.(7,0).EDX, and the OS has enabled tile state
/// (XCR0 bits 17 and 18). std cannot detect AMX on stable Rust yet.
#[cfg(target_arch = "x86_64")]
fn amx(bit: u32) -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only when the
    // max leaf says it exists, and XGETBV only when OSXSAVE (leaf 1 ECX bit 27)
    // says the OS enabled it.
    unsafe {
        if __cpuid(0).eax < 7 || __cpuid(1).ecx & (1 << 27) == 0 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let xcr0 = _xgetbv(0);
        edx & (1 << bit) != 0 && xcr0 & (0b11 << 17) == (0b11 << 17)
    }
}

#[cfg(target_arch = "aarch64")]
fn detect(name: &str) -> bool {
    use std::arch::is_aarch64_feature_detected as has;
    match name {
        "neon" => has!("neon"),
        "dotprod" => has!("dotprod"),
        "i8mm" => has!("i8mm"),
        "sve" => has!("sve"),
        "fp16" => has!("fp16"),
        "sme" => sme(),
        _ => false,
    }
}

/// SME, where the OS says (std cannot detect it on stable Rust yet): Linux
/// through the auxiliary vector's HWCAP2_SME bit, macOS through
/// `hw.optional.arm.FEAT_SME`; Windows has no API for it (reported absent).
#[cfg(target_arch = "aarch64")]
fn sme() -> bool {
    #[cfg(target_os = "linux")]
    {
        const HWCAP2_SME: libc::c_ulong = 1 << 23;
        // SAFETY: getauxval reads the process's auxiliary vector; no memory is passed.
        unsafe { libc::getauxval(libc::AT_HWCAP2) & HWCAP2_SME != 0 }
    }
    #[cfg(target_os = "macos")]
    {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>();
        // SAFETY: a NUL-terminated name and an int-sized out buffer with its length.
        let r = unsafe {
            libc::sysctlbyname(
                c"hw.optional.arm.FEAT_SME".as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        r == 0 && value != 0
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    false
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect(_: &str) -> bool {
    false
}

/// Features present on this CPU, by canonical name.
pub fn features() -> Vec<String> {
    FEATURES.iter().filter(|(name, _)| detect(name)).map(|(name, _)| (*name).to_owned()).collect()
}

#[cfg(target_arch = "x86_64")]
fn vendor_and_brand() -> (Option<String>, Option<String>) {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID is always present on x86_64; extended leaves are read
    // only when leaf 0x8000_0000 says they exist. (Newer toolchains made
    // __cpuid safe; older ones, down to rust-version, need the block.)
    #[allow(unused_unsafe)]
    unsafe {
        let l0 = __cpuid(0);
        let mut v = Vec::with_capacity(12);
        for r in [l0.ebx, l0.edx, l0.ecx] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        let vendor = String::from_utf8(v).ok();
        let brand = if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
            let mut b = Vec::with_capacity(48);
            for leaf in 0x8000_0002..=0x8000_0004u32 {
                let r = __cpuid(leaf);
                for x in [r.eax, r.ebx, r.ecx, r.edx] {
                    b.extend_from_slice(&x.to_le_bytes());
                }
            }
            let s = String::from_utf8_lossy(&b).trim_matches(char::from(0)).trim().to_owned();
            (!s.is_empty()).then_some(s)
        } else {
            None
        };
        (vendor, brand)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn vendor_and_brand() -> (Option<String>, Option<String>) {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    let cpu = sys.cpus().first();
    let vendor = cpu.map(|c| c.vendor_id().to_owned()).filter(|s| !s.is_empty());
    let brand = cpu.map(|c| c.brand().to_owned()).filter(|s| !s.is_empty());
    (vendor, brand)
}

/// Cache sizes from sysfs (Linux); empty where the OS does not say.
fn caches() -> Vec<CacheInfo> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return out;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        if !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("index")) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(p.join(f)).ok().map(|s| s.trim().to_owned());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        let (Ok(level), Some(size_bytes)) = (level.parse(), parse_size(&size)) else {
            continue;
        };
        out.push(CacheInfo { level, kind: kind.to_lowercase(), size_bytes });
    }
    out.sort_by(|a, b| (a.level, &a.kind).cmp(&(b.level, &b.kind)));
    out
}

/// "48K", "2048K", "32M" -> bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1024),
        'M' => (&s[..s.len() - 1], 1024 * 1024),
        'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

pub fn probe() -> CpuInfo {
    let (vendor, brand) = vendor_and_brand();
    CpuInfo {
        arch: std::env::consts::ARCH.to_owned(),
        vendor,
        brand,
        physical_cores: sysinfo::System::physical_core_count(),
        logical_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        features: features(),
        caches: caches(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 * 1024));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
    }

    /// Every feature we report agrees with the kernel's own flags.
    #[cfg(target_os = "linux")]
    #[test]
    fn features_agree_with_proc_cpuinfo() {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let key = if cfg!(target_arch = "aarch64") { "Features" } else { "flags" };
        let Some(flags) = info
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<&str>>())
        else {
            // Under qemu-user /proc/cpuinfo is the host CPU's; the hwcap test
            // below checks aarch64 features against what the kernel (or
            // the emulator) tells this process.
            #[cfg(not(target_arch = "aarch64"))]
            panic!("no {key} line in /proc/cpuinfo");
            #[cfg(target_arch = "aarch64")]
            {
                eprintln!("skipped: /proc/cpuinfo describes another CPU (emulation)");
                return;
            }
        };
        let ours = features();
        for (name, flag) in FEATURES {
            assert_eq!(ours.iter().any(|f| f == name), flags.contains(flag), "feature {name} vs cpuinfo flag {flag}");
        }
    }

    /// Every aarch64 feature we report agrees with the kernel's hardware
    /// capability bits for this process (AT_HWCAP / AT_HWCAP2).
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    #[test]
    fn aarch64_features_agree_with_the_hwcap_bits() {
        // SAFETY: getauxval reads the process's auxiliary vector.
        let (hwcap, hwcap2) = unsafe { (libc::getauxval(libc::AT_HWCAP), libc::getauxval(libc::AT_HWCAP2)) };
        let bits = [
            ("neon", hwcap & (1 << 1)),
            ("fp16", hwcap & (1 << 9)),
            ("dotprod", hwcap & (1 << 20)),
            ("sve", hwcap & (1 << 22)),
            ("i8mm", hwcap2 & (1 << 13)),
            ("sme", hwcap2 & (1 << 23)),
        ];
        let ours = features();
        for (name, bit) in bits {
            assert_eq!(ours.iter().any(|f| f == name), bit != 0, "feature {name} vs hwcap");
        }
        assert_eq!(bits.len(), FEATURES.len(), "every feature is checked");
    }

    #[test]
    fn report_has_cores_and_sorted_caches() {
        let c = probe();
        assert!(c.logical_cores >= 1);
        if let Some(p) = c.physical_cores {
            assert!(p >= 1 && p <= c.logical_cores);
        }
        assert!(c.caches.windows(2).all(|w| w[0].level <= w[1].level));
    }
}
