//! Which kernels this process runs: the ISA chosen once from the CPU (and
//! `BITNET_KERNEL`), AVX-VNNI and AMX where they apply, and the software
//! prefetch the streaming kernels share.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use super::x86;

/// Which implementation the dispatcher picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX2 for the f16 product, AVX-512 VNNI (vpdpbusd) for I2_S.
    Avx512Vnni,
    /// aarch64 NEON without the dot-product extension.
    Neon,
    /// aarch64 NEON with `sdot` (ARMv8.2 dotprod) for the integer dots.
    NeonDot,
}

/// How far ahead (bytes) the streaming kernels ask for their weights with
/// a software prefetch; `BITNET_PREFETCH=0` turns it off. Each thread
/// reads its rows front to back, but the hardware prefetcher alone keeps
/// too few lines in flight in this VM: with 2 KiB ahead, decoding the
/// 2B4T shape went from 12 to 17 GB/s on 2 threads and 6.5 to 9.5-10 on
/// one. Into L2, 6 KiB ahead, beat into L1 2 KiB ahead by 8-10% on the
/// same shape (medians of 8 interleaved rounds: layers 20.6 -> 22.7 GB/s,
/// output matrix 23.1 -> 25.4 on 2 threads; 4 KiB and 8 KiB close behind,
/// non-temporal far worse).
pub fn prefetch_distance() -> Option<usize> {
    static DISTANCE: OnceLock<Option<usize>> = OnceLock::new();
    *DISTANCE.get_or_init(|| {
        let d = std::env::var("BITNET_PREFETCH").ok().and_then(|v| v.parse().ok()).unwrap_or(6144);
        (d > 0).then_some(d)
    })
}

/// Ask for the line `d` bytes past `p` into L2 (a hint: an address past
/// the mapping cannot fault, so no bounds are needed).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, d: Option<usize>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(d) = d {
        // SAFETY: prefetch never faults and has no architectural effect.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.wrapping_add(d).cast()) };
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(d) = d {
        // SAFETY: a prefetch hint never faults and has no architectural effect.
        unsafe {
            std::arch::asm!("prfm pldl2keep, [{0}]", in(reg) p.wrapping_add(d), options(nostack, preserves_flags, readonly))
        };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = (p, d);
}

impl Isa {
    /// A short stable name: the kernel part of a CPU family's key for the
    /// speed figures selection orders CPU candidates by.
    pub fn key(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
        }
    }

    /// In words, for `select --explain` and the engine's benches.
    pub fn describe(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar reference kernels (no AVX2/FMA/F16C or NEON: slow)",
            Isa::Avx2 => "AVX2 kernels (AVX-VNNI for I2_S and TQ2_0 where the CPU has it)",
            Isa::Avx512Vnni => "AVX-512 VNNI kernels",
            Isa::Neon => "NEON kernels without sdot (no dotprod: about twice the instructions per integer dot)",
            Isa::NeonDot => "NEON kernels with sdot (dotprod)",
        }
    }
}

/// The kernels a CPU gets: `arch` as `std::env::consts::ARCH` names it,
/// `has` its features by the names the probe reports (those of
/// `is_x86_feature_detected!` / `is_aarch64_feature_detected!`), `forced`
/// the value of `BITNET_KERNEL`. Pure, so selection can say which kernels
/// the engine will run from a hardware report; `isa()` is this on the CPU
/// at hand.
pub fn isa_for(arch: &str, has: &dyn Fn(&str) -> bool, forced: &str) -> Isa {
    if forced == "scalar" {
        return Isa::Scalar;
    }
    match arch {
        "x86_64" if has("avx2") && has("fma") && has("f16c") => {
            let vnni = has("avx512f") && has("avx512bw") && has("avx512vnni");
            if vnni && forced != "avx2" && forced != "avxvnni" {
                Isa::Avx512Vnni
            } else {
                Isa::Avx2
            }
        }
        // NEON is part of every aarch64 target.
        "aarch64" if forced != "neon" && has("dotprod") => Isa::NeonDot,
        "aarch64" => Isa::Neon,
        _ => Isa::Scalar,
    }
}

/// Whether this CPU has `feature` (of those `isa_for` asks about).
pub(super) fn detected(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        match feature {
            "avx2" => has!("avx2"),
            "fma" => has!("fma"),
            "f16c" => has!("f16c"),
            "avx512f" => has!("avx512f"),
            "avx512bw" => has!("avx512bw"),
            "avx512vnni" => has!("avx512vnni"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        feature == "dotprod" && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = feature;
        false
    }
}

/// The kernels this process runs, chosen once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
        isa_for(std::env::consts::ARCH, &detected, &forced)
    })
}

/// Under `Isa::Avx2`: whether the CPU has AVX-VNNI (256-bit vpdpbusd, on
/// CPUs without AVX-512 such as Alder Lake's), used by the I2_S kernels
/// (one token, and tiles of rows x tokens) and the TQ2_0 ones.
/// `BITNET_KERNEL=avxvnni` picks it on an AVX-512 CPU too (this one has
/// both); `BITNET_KERNEL=avx2` turns it off.
pub fn avx_vnni() -> bool {
    static AVX_VNNI: OnceLock<bool> = OnceLock::new();
    *AVX_VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::env::var("BITNET_KERNEL").is_ok_and(|v| v == "avx2") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        return isa() == Isa::Avx2 && is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The kernels in use, for the benches' and the CLI's headers: the ISA,
/// and AMX where the TQ2_0 many-token products use it.
pub fn in_use() -> String {
    #[cfg(target_arch = "x86_64")]
    if amx() {
        return format!("{:?} + AMX (TQ2_0 and I2_S, {}+ tokens)", isa(), super::grouped::AMX_MIN_TOKENS);
    }
    format!("{:?}", isa())
}

/// Under `Isa::Avx512Vnni`: whether the products of regrouped TQ2_0 and
/// I2_S matrices over several tokens use AMX's tiles
/// (`x86::grouped_rows_tokens_amx`), where the
/// CPU has AMX-INT8 and the OS grants its state to this process (Linux).
/// `BITNET_KERNEL=avx512vnni` turns it off.
pub fn amx() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        return isa() == Isa::Avx512Vnni
            && std::env::var("BITNET_KERNEL").map_or(true, |v| v != "avx512vnni")
            && x86::amx_permitted();
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}
