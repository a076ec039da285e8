//! Hot loops, each with a scalar reference and SIMD versions chosen once at
//! run time from the CPU (never from compile-time target flags), so one
//! binary runs everywhere. `BITNET_KERNEL=scalar` forces the reference;
//! on x86_64 `avx2` the AVX2 paths, `avxvnni` AVX2 with AVX-VNNI for I2_S and TQ2_0;
//! on aarch64 `neon` the plain NEON paths (`dotprod` is the default where
//! the CPU has `sdot`). The SIMD code lives per architecture in `x86` and
//! `aarch64`; this file holds the references, the dispatch and the tests.
//!
//! - `dot_i2s`: one I2_S row (2-bit codes 0/1/2 packed four to a byte, as
//!   bitnet.cpp stores them) against int8 activations: sum code * q (the
//!   caller subtracts sum q once per token for the -1 offset).
//!   The weights stay in the file's layout in memory: a token reads 2 bits
//!   per weight.
//! - `dot_f16`: an f16 row (the output matrix) against f32 activations.

use std::sync::OnceLock;

use half::f16;

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod attention;
mod float;
mod grouped;
mod grouped_i2s;
mod q6k_permuted;
mod vocab;
#[cfg(target_arch = "x86_64")]
mod x86;
pub use attention::{attend, attend_q8, KvElem, KvHead, Q8KeyCache, Q8Keys, Queries, MAX_HEAD_DIM};
pub use float::f16_bits_to_f32;
pub use grouped::{
    group_bytes, group_tq2, grouped_len, tq2_grouped_rows, tq2_grouped_rows_tokens, tq2_grouping, GROUP_ROWS,
};
#[cfg(test)]
pub(crate) use grouped_i2s::i2s_file_rows;
pub use grouped_i2s::{
    group_i2s, i2s_group_bytes, i2s_grouped_len, i2s_grouped_rows, i2s_grouped_rows_tokens, i2s_grouping,
};
pub use q6k_permuted::{
    permute_q6k, permute_q6k_acts, q6k_permuted_rows, q6k_permuted_rows_tokens, q6k_permuting, unpermute_q6k,
};
pub use vocab::{
    q6k_block_dots, q6k_finish, q6k_rows, q6k_rows_tokens, q6k_sums, q8_0_block_dots, Q6K_BLOCK, Q8_0_BLOCK,
};

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

/// The f16 stored little-endian at `b[0..2]`, as f32: exact for every
/// value (normals, subnormals, infinities; NaNs stay NaN). The `half`
/// crate's conversion checks the CPU and calls an F16C function per value,
/// which cannot be inlined: per-block scales (TQ2_0, Q8_0, Q6_K rows) are
/// millions of conversions a token, and that call was 15% of TQ2_0
/// decoding. Shifting the bits into f32's place and scaling by 2^112
/// re-biases the exponent (and normalizes subnormals) with one multiply.
#[inline(always)]
pub fn f16_le_to_f32(b: &[u8]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))
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

/// The first `N` of `s` as an array (a tile's tokens). One copy: built
/// with `std::array::from_fn` it stayed a call per element, out of line
/// (a store-forwarding stall per tile, 3.7% of an AVX-512 TQ2_0 prompt).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_n<T: Copy, const N: usize>(s: &[T]) -> [T; N] {
    s[..N].try_into().expect("N elements")
}

/// Whether this CPU has `feature` (of those `isa_for` asks about).
fn detected(feature: &str) -> bool {
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
    format!("{:?}{}", isa(), if amx() { " + AMX (TQ2_0 and I2_S, 4+ tokens)" } else { "" })
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

/// Reference: sum over the row of code * q, code in 0..=2. `row` holds
/// `q.len() / 4` bytes in 128-element blocks of 32 bytes, byte j =
/// e[j]<<6 | e[32+j]<<4 | e[64+j]<<2 | e[96+j].
pub fn dot_i2s_scalar(row: &[u8], q: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (block, qb) in row.chunks_exact(32).zip(q.chunks_exact(128)) {
        for (j, &byte) in block.iter().enumerate() {
            for (k, shift) in [6u32, 4, 2, 0].into_iter().enumerate() {
                let code = i32::from((byte >> shift) & 3);
                acc += code * i32::from(qb[k * 32 + j]);
            }
        }
    }
    acc
}

/// The shape a block kernel reads: `row` whole blocks of `block_bytes`,
/// `per_block` activations and one output for each. Checked in release
/// builds: the SIMD kernels read by these lengths, so a short slice must be
/// a panic, never a read out of bounds.
#[inline]
#[track_caller]
pub(crate) fn check_blocks(row: usize, block_bytes: usize, per_block: usize, q: usize, out: usize) {
    let blocks = row / block_bytes;
    assert!(
        row.is_multiple_of(block_bytes) && q == blocks * per_block && out >= blocks,
        "kernel shape: {row} row bytes in {block_bytes}-byte blocks, {q} activations, {out} outputs"
    );
}

/// I2_S: 32 bytes of codes per 128 weights.
#[inline]
#[track_caller]
fn check_i2s(row: usize, q: usize) {
    assert!(row * 4 == q && q.is_multiple_of(128), "I2_S kernel shape: {row} row bytes, {q} activations");
}

/// sum code * q over an I2_S row, with the best kernel here.
#[inline]
pub fn dot_i2s(row: &[u8], q: &[i8]) -> i32 {
    check_i2s(row.len(), q.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX-512 F/BW/VNNI and AVX2.
        Isa::Avx512Vnni => unsafe { x86::dot_i2s_vnni(row, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 and avx_vnni() AVX-VNNI.
        Isa::Avx2 if avx_vnni() => unsafe { x86::dot_i2s_avxvnni(row, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX2.
        Isa::Avx2 => unsafe { x86::dot_i2s_avx2(row, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::dot_i2s(isa() == Isa::NeonDot, row, q) },
        _ => dot_i2s_scalar(row, q),
    }
}

/// One token's int8 activations, ready for whichever I2_S kernel runs:
/// for AVX-512 also rearranged so that each 64-byte load lines up with one
/// bit plane of two 128-weight blocks (built once per matrix-vector
/// product, instead of two 32-byte loads and an insert per plane per row).
pub struct Prepared<'a> {
    q: &'a [i8],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    interleaved: Vec<i8>,
}

impl<'a> Prepared<'a> {
    pub fn new(q: &'a [i8]) -> Self {
        let interleaved = if isa() == Isa::Avx512Vnni { interleave(q) } else { Vec::new() };
        Self { q, interleaved }
    }
}

/// For block pair p and plane k: q[256p + 32k ..][..32] then q[256p + 128 + 32k ..][..32].
fn interleave(q: &[i8]) -> Vec<i8> {
    let pairs = q.len() / 256;
    let mut out = Vec::with_capacity(pairs * 256);
    for p in 0..pairs {
        for k in 0..4 {
            out.extend_from_slice(&q[256 * p + 32 * k..256 * p + 32 * k + 32]);
            out.extend_from_slice(&q[256 * p + 128 + 32 * k..256 * p + 128 + 32 * k + 32]);
        }
    }
    out
}

/// `dot_i2s` on prepared activations.
#[inline]
pub fn dot_i2s_prepared(row: &[u8], a: &Prepared) -> i32 {
    check_i2s(row.len(), a.q.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX-512 F/BW/VNNI and AVX2;
        // Prepared::new interleaved for it.
        Isa::Avx512Vnni => unsafe { x86::dot_i2s_vnni_interleaved(row, &a.interleaved, a.q) },
        _ => dot_i2s(row, a.q),
    }
}

/// `dot_i2s_prepared` for each `row_bytes` row of `rows`, into `out`.
#[inline]
pub fn i2s_rows_prepared(rows: &[u8], row_bytes: usize, a: &Prepared, out: &mut [i32]) {
    check_i2s(row_bytes, a.q.len());
    assert_eq!(rows.len(), row_bytes * out.len(), "I2_S rows: {} bytes for {} rows", rows.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in dot_i2s_prepared.
        Isa::Avx512Vnni => unsafe { x86::i2s_rows_vnni_interleaved(rows, row_bytes, &a.interleaved, a.q, out) },
        _ => {
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                *o = dot_i2s(row, a.q);
            }
        }
    }
}

/// TQ2_0 (llama.cpp): 66-byte blocks of 256 weights, 64 bytes of 2-bit
/// codes then an f16 scale; byte j + m of a 32-byte group j holds elements
/// 4j + 32l + m at bits 2l. Reference: per block, sum code * q (codes
/// 0..=2; the caller subtracts the block's activation sum for the -1).
pub fn tq2_block_dots_scalar(row: &[u8], q: &[i8], out: &mut [i32]) {
    for ((block, qb), o) in row.chunks_exact(66).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        let mut acc = 0i32;
        for j in (0..64).step_by(32) {
            for l in 0..4 {
                for m in 0..32 {
                    let code = i32::from((block[j + m] >> (l * 2)) & 3);
                    acc += code * i32::from(qb[j * 4 + l * 32 + m]);
                }
            }
        }
        *o = acc;
    }
}

/// One TQ2_0 / TQ1_0 row's result from its per-block code dots, in
/// `Ternary::matvec`'s Q8K order: per block, (dot - bsum) * (w_scale *
/// a_scale), summed block by block (the reference every path equals). The
/// weight scale is the f16 that ends each `block_bytes` block.
pub fn ternary_blocks_finish(row: &[u8], block_bytes: usize, dots: &[i32], bsums: &[i32], d: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, ((dot, bsum), d)) in dots.iter().zip(bsums).zip(d).enumerate() {
        let s = f16_le_to_f32(&row[(b + 1) * block_bytes - 2..]);
        acc += (dot - bsum) as f32 * (s * d);
    }
    acc
}

/// `ternary_blocks_finish` for TQ2_0's 66-byte blocks.
pub fn tq2_finish(row: &[u8], dots: &[i32], bsums: &[i32], d: &[f32]) -> f32 {
    ternary_blocks_finish(row, 66, dots, bsums, d)
}

/// Every `row_bytes` TQ2_0 row of `rows` against Q8K activations (`a`,
/// with their block sums and scales): `out[r]` = `tq2_finish` of row r's
/// block dots, bit for bit.
pub fn tq2_rows(rows: &[u8], row_bytes: usize, a: &Prepared, bsums: &[i32], d: &[f32], out: &mut [f32]) {
    let blocks = row_bytes / 66;
    check_blocks(row_bytes, 66, 256, a.q.len(), blocks);
    assert!(rows.len() == row_bytes * out.len() && bsums.len() >= blocks && d.len() >= blocks, "TQ2_0 rows shape");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI; Prepared::new interleaved for it.
        Isa::Avx512Vnni => unsafe { x86::tq2_rows_vnni(rows, row_bytes, &a.interleaved, bsums, d, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2, FMA and F16C, avx_vnni() AVX-VNNI.
        Isa::Avx2 if avx_vnni() => unsafe { x86::tq2_rows_avxvnni(rows, row_bytes, a.q, bsums, d, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { x86::tq2_rows_avx2(rows, row_bytes, a.q, bsums, d, out) },
        _ => {
            let mut dots = vec![0i32; blocks];
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                tq2_block_dots(row, a.q, &mut dots);
                *o = tq2_finish(row, &dots, bsums, d);
            }
        }
    }
}

/// TQ2_0 rows against several tokens (`a[t]`, with their block sums and
/// scales): `out[t * m + r]` (m = the rows) equals `tq2_rows` of token t,
/// bit for bit. Each block's codes are unpacked once for up to 4 tokens:
/// with AVX-512 VNNI in groups of 16 rows, with AVX2 (and AVX-VNNI) of 8;
/// elsewhere token by token.
pub fn tq2_rows_tokens(
    rows: &[u8],
    row_bytes: usize,
    a: &[&Prepared],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        Isa::Avx512Vnni => {
            let qs: Vec<&[i8]> = a.iter().map(|a| &a.interleaved[..]).collect();
            return ternary_rows_tokens(66, 16, rows, row_bytes, &qs, bsums, d, out, |group, q, b, d, out, m| {
                // SAFETY: isa() checked AVX-512 F/BW/VNNI; Prepared::new
                // interleaved for it; shapes checked by the caller.
                unsafe { x86::ternary_rows_tokens_vnni(x86::TernaryBlocks::Tq2, group, row_bytes, q, b, d, out, m) }
            });
        }
        Isa::Avx2 => {
            let qs: Vec<&[i8]> = a.iter().map(|a| a.q).collect();
            let vnni = avx_vnni();
            return ternary_rows_tokens(66, 8, rows, row_bytes, &qs, bsums, d, out, |group, q, b, d, out, m| {
                // SAFETY: isa() checked AVX2, FMA and F16C, avx_vnni()
                // AVX-VNNI; shapes checked by the caller.
                unsafe {
                    if vnni {
                        x86::tq2_rows_tokens_avxvnni(group, row_bytes, q, b, d, out, m)
                    } else {
                        x86::tq2_rows_tokens_avx2(group, row_bytes, q, b, d, out, m)
                    }
                }
            });
        }
        _ => {}
    }
    let m = rows.len() / row_bytes.max(1);
    assert!(a.len() == bsums.len() && a.len() == d.len() && out.len() == a.len() * m, "TQ2_0 tokens shape");
    // A few groups of rows against every token while they are in L1.
    const ROWS: usize = 32;
    for first in (0..m).step_by(ROWS) {
        let rows = &rows[first * row_bytes..(first + ROWS).min(m) * row_bytes];
        for (t, out) in out.chunks_exact_mut(m.max(1)).enumerate() {
            tq2_rows(rows, row_bytes, a[t], bsums[t], d[t], &mut out[first..first + rows.len() / row_bytes]);
        }
    }
}

/// `tq2_rows_tokens` for TQ1_0 (`q[t]`: token t's activations).
pub fn tq1_rows_tokens(rows: &[u8], row_bytes: usize, q: &[&[i8]], bsums: &[&[i32]], d: &[&[f32]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni {
        return ternary_rows_tokens(54, 16, rows, row_bytes, q, bsums, d, out, |group, q, b, d, out, m| {
            // SAFETY: isa() checked AVX-512 F/BW/VNNI; shapes checked by the caller.
            unsafe { x86::ternary_rows_tokens_vnni(x86::TernaryBlocks::Tq1, group, row_bytes, q, b, d, out, m) }
        });
    }
    let m = rows.len() / row_bytes.max(1);
    assert!(q.len() == bsums.len() && q.len() == d.len() && out.len() == q.len() * m, "TQ1_0 tokens shape");
    for (t, out) in out.chunks_exact_mut(m.max(1)).enumerate() {
        tq1_rows(rows, row_bytes, q[t], bsums[t], d[t], out);
    }
}

/// Groups of `group_rows` rows x up to 4 tokens through `tile(group, the
/// tokens' activations, block sums, scales, out from the group's first
/// row of the first token, the stride between tokens)`, after checking
/// every shape the tile kernels rely on.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn ternary_rows_tokens(
    block_bytes: usize,
    group_rows: usize,
    rows: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
    tile: impl Fn(&[u8], &[&[i8]], &[&[i32]], &[&[f32]], &mut [f32], usize),
) {
    let n = qs.len();
    let (m, blocks) = (rows.len() / row_bytes.max(1), row_bytes / block_bytes);
    assert!(
        bsums.len() == n && d.len() == n && out.len() == n * m && rows.len() == m * row_bytes,
        "ternary tokens shape"
    );
    for t in 0..n {
        check_blocks(row_bytes, block_bytes, 256, qs[t].len(), blocks);
        assert!(bsums[t].len() >= blocks && d[t].len() >= blocks, "ternary tokens shape");
    }
    for (g, group) in (0..).step_by(group_rows).zip(rows.chunks(group_rows * row_bytes)) {
        for t in (0..n).step_by(4) {
            let k = (n - t).min(4);
            tile(group, &qs[t..t + k], &bsums[t..t + k], &d[t..t + k], &mut out[t * m + g..], m);
        }
    }
}

/// Whether prompts should go through `tq2_rows_tokens` (groups of rows
/// against each token: `tq2_rows`' many-row kernels) rather than per-row
/// block dots shared by four tokens and a scalar finish: where there is a
/// many-row kernel (AVX-512 VNNI: 16 rows across; AVX2: 8). Same bits
/// either way. On AVX2 (this VM held to it) pp128 went from 12.2 / 34.0
/// to 27.7 / 53.4 tokens/s on 1 / 2 threads.
pub fn tq2_rows_for_prompts() -> bool {
    matches!(isa(), Isa::Avx512Vnni | Isa::Avx2)
}

/// `tq2_rows_for_prompts` for TQ1_0 kept packed: AVX-512 VNNI only (its
/// AVX2 kernel is per row).
pub fn tq1_rows_for_prompts() -> bool {
    isa() == Isa::Avx512Vnni
}

/// Base-3 digit `n` (0..5) of a TQ1_0 byte: its code plus one, 0..=2.
/// ((b * 3^n mod 256) * 3) >> 8: the byte holds the digits as a fraction
/// of 243 rounded up, so multiplying by 3^n brings digit n to the top.
#[inline(always)]
pub fn tq1_digit(b: u8, n: usize) -> u8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    ((u16::from(b.wrapping_mul(POW3[n])) * 3) >> 8) as u8
}

/// TQ1_0 (llama.cpp): 54-byte blocks of 256 weights, 1.6875 bits each:
/// 48 bytes holding five base-3 digits each (elements 32n + m from byte
/// m < 32, then 160 + 16n + m from byte 32 + m), 4 bytes holding four
/// (240 + 4n + j from byte 48 + j), then an f16 scale. Digit n of byte b
/// is ((b * 3^n mod 256) * 3) >> 8. Reference: per block, sum code * q,
/// codes 0..=2 (the caller subtracts the block's activation sum).
pub fn tq1_block_dots_scalar(row: &[u8], q: &[i8], out: &mut [i32]) {
    let code = |b: u8, n: usize| i32::from(tq1_digit(b, n));
    for ((block, qb), o) in row.chunks_exact(54).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        let mut acc = 0i32;
        for n in 0..5 {
            for m in 0..32 {
                acc += code(block[m], n) * i32::from(qb[32 * n + m]);
            }
            for m in 0..16 {
                acc += code(block[32 + m], n) * i32::from(qb[160 + 16 * n + m]);
            }
        }
        for n in 0..4 {
            for j in 0..4 {
                acc += code(block[48 + j], n) * i32::from(qb[240 + 4 * n + j]);
            }
        }
        *o = acc;
    }
}

/// Every `row_bytes` TQ1_0 row of `rows` against Q8K activations (`q`,
/// with their block sums and scales): `out[r]` = `ternary_blocks_finish`
/// of row r's block dots, bit for bit.
pub fn tq1_rows(rows: &[u8], row_bytes: usize, q: &[i8], bsums: &[i32], d: &[f32], out: &mut [f32]) {
    let blocks = row_bytes / 54;
    check_blocks(row_bytes, 54, 256, q.len(), blocks);
    assert!(rows.len() == row_bytes * out.len() && bsums.len() >= blocks && d.len() >= blocks, "TQ1_0 rows shape");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI.
        Isa::Avx512Vnni => unsafe { x86::tq1_rows_vnni(rows, row_bytes, q, bsums, d, out) },
        _ => {
            let mut dots = vec![0i32; blocks];
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                tq1_block_dots(row, q, &mut dots);
                *o = ternary_blocks_finish(row, 54, &dots, bsums, d);
            }
        }
    }
}

/// Per-block `sum code * q` over a TQ1_0 row, with the best kernel here.
#[inline]
pub fn tq1_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    check_blocks(row.len(), 54, 256, q.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI and AVX2.
        Isa::Avx512Vnni => unsafe { x86::tq1_block_dots_vnni(row, q, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { x86::tq1_block_dots_avx2(row, q, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::tq1_block_dots(isa() == Isa::NeonDot, row, q, out) },
        _ => tq1_block_dots_scalar(row, q, out),
    }
}

/// Four tokens at once (prompts): each block's codes unpacked once.
/// `out[t]` gets token t's per-block dots.
pub fn tq2_block_dots_x4_scalar(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
    for (q, out) in q.into_iter().zip(out) {
        tq2_block_dots_scalar(row, q, out);
    }
}

/// `tq2_block_dots` for four tokens, with the best kernel here.
#[inline]
pub fn tq2_block_dots_x4(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
    for (q, out) in q.iter().zip(&out) {
        check_blocks(row.len(), 66, 256, q.len(), out.len());
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::tq2_block_dots_x4_avx2(row, q, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::tq2_block_dots_x4(isa() == Isa::NeonDot, row, q, out) },
        _ => tq2_block_dots_x4_scalar(row, q, out),
    }
}

/// Per-block `sum code * q` over a TQ2_0 row, with the best kernel here.
#[inline]
pub fn tq2_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    check_blocks(row.len(), 66, 256, q.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::tq2_block_dots_avx2(row, q, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::tq2_block_dots(isa() == Isa::NeonDot, row, q, out) },
        _ => tq2_block_dots_scalar(row, q, out),
    }
}

/// Reference for four tokens at once: `dot_i2s_scalar` for each.
pub fn dot_i2s_x4_scalar(row: &[u8], q: [&[i8]; 4]) -> [i32; 4] {
    q.map(|q| dot_i2s_scalar(row, q))
}

/// `dot_i2s` for four tokens at once, with the best kernel here.
#[inline]
pub fn dot_i2s_x4(row: &[u8], q: [&[i8]; 4]) -> [i32; 4] {
    for q in &q {
        check_i2s(row.len(), q.len());
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::dot_i2s_xn_avx2(row, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::dot_i2s_xn(isa() == Isa::NeonDot, row, q) },
        _ => dot_i2s_x4_scalar(row, q),
    }
}

/// `dot_i2s_x4` for `N` tokens (a multiple of 4) on prepared activations
/// (AVX-512 VNNI reads them interleaved, unpacking the row once for all N).
#[inline]
pub fn dot_i2s_xn_prepared<const N: usize>(row: &[u8], a: [&Prepared; N]) -> [i32; N] {
    assert!(N.is_multiple_of(4), "tokens in fours");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI and AVX2; Prepared::new interleaved for it.
        Isa::Avx512Vnni => unsafe {
            x86::dot_i2s_xn_vnni_interleaved(row, a.map(|a| &a.interleaved[..]), a.map(|a| a.q))
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::dot_i2s_xn(isa() == Isa::NeonDot, row, a.map(|a| a.q)) },
        // Plain AVX2 stays in fours: its 8 accumulators beside the i16
        // sums spill (pp128 held to AVX2 38.0 / 77.0 tok/s on 1 / 2
        // threads against 41.3 / 83.0 in fours).
        _ => {
            let mut out = [0; N];
            for t in (0..N).step_by(4) {
                let d = dot_i2s_x4(row, [a[t].q, a[t + 1].q, a[t + 2].q, a[t + 3].q]);
                out[t..t + 4].copy_from_slice(&d);
            }
            out
        }
    }
}

/// Every row of `rows` (`row_bytes` each) against every token of `a`,
/// integer dots into `out[t * m + r]` (token-major, m rows): the many-token product
/// (sequences decoded together, prompts). AVX-512 VNNI runs tiles of up
/// to four rows by four tokens (`x86::i2s_tile_vnni`), AVX-VNNI of two by
/// four (`x86::i2s_tile_avxvnni`); elsewhere each row goes through
/// `dot_i2s_xn_prepared` eight and four tokens at a time, then `dot_i2s`
/// per token. Each dot equals `dot_i2s_scalar`'s.
pub fn i2s_rows_tokens(rows: &[u8], row_bytes: usize, a: &[&Prepared], out: &mut [i32]) {
    let n = a.len();
    assert!(n > 0, "no tokens");
    for p in a {
        check_i2s(row_bytes, p.q.len());
    }
    let m = out.len() / n;
    assert!(out.len() == m * n && rows.len() == m * row_bytes, "I2_S rows: {} bytes for {m} rows", rows.len());
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni {
        let interleaved: Vec<&[i8]> = a.iter().map(|a| &a.interleaved[..]).collect();
        let plain: Vec<&[i8]> = a.iter().map(|a| a.q).collect();
        return i2s_tiles(m, n, &[4, 2, 1], out, |r, height, ts, tile| {
            let tile_rows = &rows[r * row_bytes..(r + height) * row_bytes];
            // SAFETY: isa() checked AVX-512 F/BW/VNNI and AVX2; Prepared::new
            // interleaved for it; shapes checked above.
            unsafe { i2s_tile_vnni(height, tile_rows, row_bytes, &interleaved[ts.clone()], &plain[ts], tile) }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 && avx_vnni() {
        let plain: Vec<&[i8]> = a.iter().map(|a| a.q).collect();
        return i2s_tiles(m, n, &[2, 1], out, |r, height, ts, tile| {
            let tile_rows = &rows[r * row_bytes..(r + height) * row_bytes];
            // SAFETY: isa() checked AVX2 and avx_vnni() AVX-VNNI; shapes checked above.
            unsafe { i2s_tile_avxvnni(height, tile_rows, row_bytes, &plain[ts], tile) }
        });
    }
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        let mut t = 0;
        while t + 8 <= n {
            let d = dot_i2s_xn_prepared::<8>(row, std::array::from_fn(|i| a[t + i]));
            for (i, d) in d.into_iter().enumerate() {
                out[(t + i) * m + r] = d;
            }
            t += 8;
        }
        if t + 4 <= n {
            let d = dot_i2s_xn_prepared::<4>(row, std::array::from_fn(|i| a[t + i]));
            for (i, d) in d.into_iter().enumerate() {
                out[(t + i) * m + r] = d;
            }
            t += 4;
        }
        for (t, a) in a.iter().enumerate().skip(t) {
            out[t * m + r] = dot_i2s(row, a.q);
        }
    }
}

/// `x86::i2s_tile_vnni` for a run-time height (1, 2 or 4 rows) and token
/// count (1 to 4: `qi` interleaved, `q` plain), into `out[r * k + t]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn i2s_tile_vnni(height: usize, rows: &[u8], row_bytes: usize, qi: &[&[i8]], q: &[&[i8]], out: &mut [i32]) {
    macro_rules! tiles {
        ($($n:literal)*) => {
            match (height, qi.len()) {
                $(
                    (1, $n) => x86::i2s_tile_vnni::<1, $n>(rows, row_bytes, qi, q, out),
                    (2, $n) => x86::i2s_tile_vnni::<2, $n>(rows, row_bytes, qi, q, out),
                    (4, $n) => x86::i2s_tile_vnni::<4, $n>(rows, row_bytes, qi, q, out),
                )*
                _ => unreachable!("tiles are 1, 2 or 4 rows by 1-4 tokens"),
            }
        };
    }
    tiles!(1 2 3 4)
}

/// `x86::i2s_tile_avxvnni` for a run-time height (1 or 2 rows) and token
/// count (1 to 4), into `out[r * k + t]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn i2s_tile_avxvnni(height: usize, rows: &[u8], row_bytes: usize, q: &[&[i8]], out: &mut [i32]) {
    macro_rules! tiles {
        ($($n:literal)*) => {
            match (height, q.len()) {
                $(
                    (1, $n) => x86::i2s_tile_avxvnni::<1, $n>(rows, row_bytes, q, out),
                    (2, $n) => x86::i2s_tile_avxvnni::<2, $n>(rows, row_bytes, q, out),
                )*
                _ => unreachable!("tiles are 1 or 2 rows by 1-4 tokens"),
            }
        };
    }
    tiles!(1 2 3 4)
}

/// The many-token I2_S product in tiles: rows in runs of the first of
/// `heights` that fits (the last is 1), tokens in fours; `tile(first row,
/// height, the tokens, out)` fills `out[i * k + j]` for row i and token j
/// of its k, which go to `out[t * m + r]` here.
#[cfg(target_arch = "x86_64")]
fn i2s_tiles(
    m: usize,
    n: usize,
    heights: &[usize],
    out: &mut [i32],
    mut tile: impl FnMut(usize, usize, std::ops::Range<usize>, &mut [i32]),
) {
    let mut buf = [0i32; 16];
    let mut r = 0;
    while r < m {
        let height = heights.iter().copied().find(|&h| r + h <= m).unwrap_or(1);
        for t0 in (0..n).step_by(4) {
            let k = (n - t0).min(4);
            tile(r, height, t0..t0 + k, &mut buf);
            for i in 0..height {
                for j in 0..k {
                    out[(t0 + j) * m + r + i] = buf[i * k + j];
                }
            }
        }
        r += height;
    }
}

/// Reference: round_half_even(x * scale) clamped to int8 per value (NaN
/// -> 0), as `quant::round_to_i8` does it.
pub fn quantize_row_scalar(x: &[f32], scale: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = crate::quant::round_to_i8(v * scale);
    }
}

/// Activations to int8: `quantize_row_scalar` with the best kernel here.
#[inline]
pub fn quantize_row(x: &[f32], scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len(), "one int8 per value");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { x86::quantize_row_avx512(x, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { x86::quantize_row_avx2(x, scale, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => aarch64::quantize_row(x, scale, out),
        _ => quantize_row_scalar(x, scale, out),
    }
}

/// Reference for `abs_max`.
pub fn abs_max_scalar(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// Largest |x| over the values (NaNs ignored, as `f32::max` does).
#[inline]
pub fn abs_max(x: &[f32]) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { x86::abs_max_avx512(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { x86::abs_max_avx2(x) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => aarch64::abs_max(x),
        _ => abs_max_scalar(x),
    }
}

/// Reference for `signed_abs_max`: the first value whose |x| is the
/// largest (NaNs skipped), 0 when every |x| is 0; Q8_K's scale is
/// -127 over it (llama.cpp's `quantize_row_q8_K`).
pub fn signed_abs_max_scalar(x: &[f32]) -> f32 {
    let (mut m, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            m = v;
        }
    }
    m
}

/// `signed_abs_max_scalar` in two vector passes: the largest |x|, then
/// the first value that has it.
#[inline]
pub fn signed_abs_max(x: &[f32]) -> f32 {
    let amax = abs_max(x);
    if amax == 0.0 {
        return 0.0;
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { x86::first_with_abs_avx512(x, amax) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { x86::first_with_abs_avx2(x, amax) },
        _ => x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0),
    }
}

pub fn dot_f16_scalar(row: &[f16], x: &[f32]) -> f32 {
    row.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

/// An f16 row times f32 activations.
#[inline]
pub fn dot_f16(row: &[f16], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len(), "f16 dot of {} weights with {} activations", row.len(), x.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F with AVX2, FMA and F16C.
        Isa::Avx512Vnni => unsafe { x86::dot_f16_avx512(row, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { x86::dot_f16_avx2(row, x) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => aarch64::dot_f16(row, x),
        _ => dot_f16_scalar(row, x),
    }
}

/// `dot_f16` of every row of `rows` (`cols` each) with every vector of
/// `xs`, into `out[j * m + r]` (vector-major, m rows; the output matrix against several
/// sequences): the same results, bit for bit, with each weight converted
/// once per group of vectors (eight with AVX-512, four with AVX2, in tiles
/// of a few rows whose columns go in passes that keep the vectors in L1;
/// elsewhere one `dot_f16` per row and vector).
pub fn f16_rows_many(rows: &[f16], cols: usize, xs: &[&[f32]], out: &mut [f32]) {
    let n = xs.len();
    assert!(n > 0 && cols > 0, "no vectors");
    for x in xs {
        assert_eq!(cols, x.len(), "f16 dot of {cols} weights with {} activations", x.len());
    }
    let m = rows.len() / cols;
    assert!(rows.len() == m * cols && out.len() == m * n, "f16 rows: {} values for {m} rows", rows.len());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa(), Isa::Avx512Vnni | Isa::Avx2) && n > 1 {
        let group = 4;
        let mut tile = [0f32; 8 * x86::F16_TILE_ROWS];
        for (r0, block) in (0..).step_by(x86::F16_TILE_ROWS).zip(rows.chunks(x86::F16_TILE_ROWS * cols)) {
            let h = block.len() / cols;
            for (j0, xs) in (0..).step_by(group).zip(xs.chunks(group)) {
                let k = xs.len();
                macro_rules! groups {
                    ($kernel:ident: $($n:literal)*) => {
                        match k {
                            $($n => x86::$kernel::<$n>(block, cols, xs, &mut tile),)*
                            _ => unreachable!("groups of at most 8"),
                        }
                    };
                }
                // SAFETY: isa() checked AVX2, FMA and F16C (and AVX-512 F
                // for its arm); the lengths above.
                unsafe {
                    if isa() == Isa::Avx512Vnni {
                        groups!(f16_tile_avx512: 1 2 3 4)
                    } else {
                        groups!(f16_tile_avx2: 1 2 3 4)
                    }
                }
                for i in 0..h {
                    for j in 0..k {
                        out[(j0 + j) * m + r0 + i] = tile[i * k + j];
                    }
                }
            }
        }
        return;
    }
    for (x, out) in xs.iter().zip(out.chunks_exact_mut(m)) {
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols)) {
            *o = dot_f16(row, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel entry point refuses a slice shorter than its shape (in
    /// release builds too): the SIMD kernels would read past it.
    #[test]
    fn short_slices_panic_instead_of_reading_out_of_bounds() {
        let row = vec![0u8; 66 * 2];
        let q = vec![0i8; 256 * 2];
        let panics = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(panics(&|| {
            dot_i2s(&row[..32], &q[..100]);
        }));
        assert!(panics(&|| {
            dot_i2s_x4(&row[..32], [&q[..128], &q[..128], &q[..128], &q[..64]]);
        }));
        assert!(panics(&|| tq2_block_dots(&row, &q[..256], &mut [0; 2])));
        assert!(panics(&|| tq2_block_dots(&row, &q, &mut [0; 1])));
        assert!(panics(&|| tq2_block_dots(&row[..100], &q[..256], &mut [0; 2])));
        assert!(panics(&|| tq1_block_dots(&row[..108], &q[..256], &mut [0; 2])));
        assert!(panics(&|| vocab::q8_0_block_dots(&row[..68], &q[..32], &mut [0; 2])));
        assert!(panics(&|| vocab::q6k_block_dots(&row[..0], &q[..1], &mut [])));
        assert!(panics(&|| {
            dot_f16(&[half::f16::ZERO; 4], &[0.0; 3]);
        }));
        // The right shapes pass.
        tq2_block_dots(&row, &q, &mut [0; 2]);
        tq1_block_dots(&row[..108], &q, &mut [0; 2]);
        assert_eq!(dot_i2s(&row[..32], &q[..128]), 0);
    }
    use crate::quant::{decode_i2s, dot_codes};
    use crate::sampler::Rng;

    /// The aarch64 builds this CPU can run: plain NEON always, `sdot` where
    /// the CPU has it (qemu's `-cpu max` does; CI also runs a CPU without).
    #[cfg(target_arch = "aarch64")]
    pub(super) fn neon_builds() -> Vec<bool> {
        let mut builds = vec![false];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            builds.push(true);
        }
        builds
    }

    #[test]
    fn every_i2s_kernel_equals_the_scalar_reference_and_the_decoded_product() {
        let mut rng = Rng::new(9);
        for blocks in [1usize, 2, 3, 7, 20, 54] {
            let n = blocks * 128;
            let row: Vec<u8> = (0..n / 4)
                .map(|_| {
                    // Only codes 0..2 occur in real files.
                    (0..4).fold(0u8, |b, _| b << 2 | (rng.next_u64() % 3) as u8)
                })
                .collect();
            // Extremes included: -128 and 127.
            let q: Vec<i8> =
                (0..n).map(|i| if i % 97 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
            let want = dot_i2s_scalar(&row, &q);
            let mut with_scale = row.clone();
            with_scale.extend([0u8; 32]);
            let decoded = decode_i2s(&with_scale, 1, n.max(256)).ok();
            if n % 256 == 0 {
                let qsum: i32 = q.iter().map(|&v| i32::from(v)).sum();
                assert_eq!(dot_codes(&decoded.unwrap().codes, &q) + qsum, want, "n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { x86::dot_i2s_avx2(&row, &q) }, want, "avx2 n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                // SAFETY: checked just above (AVX2 comes with AVX-512 here).
                assert_eq!(unsafe { x86::dot_i2s_vnni(&row, &q) }, want, "avx512-vnni n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { x86::dot_i2s_avxvnni(&row, &q) }, want, "avx-vnni n={n}");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in neon_builds() {
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                assert_eq!(unsafe { aarch64::dot_i2s(sdot, &row, &q) }, want, "neon sdot={sdot} n={n}");
            }
            assert_eq!(dot_i2s(&row, &q), want);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                // SAFETY: checked just above.
                let got = unsafe { x86::dot_i2s_vnni_interleaved(&row, &interleave(&q), &q) };
                assert_eq!(got, want, "avx512-vnni interleaved n={n}");
            }
            assert_eq!(dot_i2s_prepared(&row, &Prepared::new(&q)), want);
            // Several rows in one call: each equals its own reference.
            let rows: Vec<u8> =
                (0..3u8).flat_map(|r| row.iter().map(move |b| b.rotate_left(2 * u32::from(r)))).collect();
            let mut got = [0i32; 3];
            i2s_rows_prepared(&rows, row.len(), &Prepared::new(&q), &mut got);
            for (r, g) in rows.chunks_exact(row.len()).zip(got) {
                assert_eq!(g, dot_i2s_scalar(r, &q), "rows n={n}");
            }
            // Four tokens at once: each equals its own reference.
            let qs: Vec<Vec<i8>> = (0..4).map(|t| q.iter().map(|&v| v.wrapping_add(t * 37)).collect()).collect();
            let four = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
            let want4 = dot_i2s_x4_scalar(&row, four);
            assert_eq!(want4[0], dot_i2s_scalar(&row, &qs[0]));
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { x86::dot_i2s_xn_avx2(&row, four) }, want4, "x4 avx2 n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                let qi: Vec<Vec<i8>> = qs.iter().map(|q| interleave(q)).collect();
                let qi = [&qi[0][..], &qi[1][..], &qi[2][..], &qi[3][..]];
                // SAFETY: checked just above.
                assert_eq!(unsafe { x86::dot_i2s_xn_vnni_interleaved(&row, qi, four) }, want4, "x4 avx512-vnni n={n}");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in neon_builds() {
                // SAFETY: as above.
                assert_eq!(unsafe { aarch64::dot_i2s_xn(sdot, &row, four) }, want4, "x4 neon sdot={sdot} n={n}");
            }
            assert_eq!(dot_i2s_x4(&row, four), want4);
            // Eight tokens (the prompt path's step): each its own reference.
            let qs8: Vec<Vec<i8>> =
                (0..8u8).map(|t| q.iter().map(|&v| v.wrapping_add(t.wrapping_mul(41) as i8)).collect()).collect();
            let prepared: Vec<Prepared> = qs8.iter().map(|q| Prepared::new(q)).collect();
            let got8 = dot_i2s_xn_prepared::<8>(&row, std::array::from_fn(|t| &prepared[t]));
            for (t, g) in got8.into_iter().enumerate() {
                assert_eq!(g, dot_i2s_scalar(&row, &qs8[t]), "x8 token {t} n={n}");
            }
            assert_eq!(dot_i2s_xn_prepared::<4>(&row, std::array::from_fn(|t| &prepared[t]))[..], got8[..4]);
            #[cfg(target_arch = "x86_64")]
            {
                let eight: [&[i8]; 8] = std::array::from_fn(|t| &qs8[t][..]);
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: checked just above.
                    assert_eq!(unsafe { x86::dot_i2s_xn_avx2(&row, eight) }, got8, "x8 avx2 n={n}");
                }
            }
            // Many rows by many tokens (tiles of 2 x 8 and what is left).
            for (m, tokens) in [(1usize, 1usize), (2, 3), (3, 8), (5, 11), (4, 16)] {
                let rows: Vec<u8> = (0..m).flat_map(|r| row.iter().map(move |b| b.rotate_left(2 * r as u32))).collect();
                let qs: Vec<Vec<i8>> =
                    (0..tokens).map(|t| q.iter().map(|&v| v.wrapping_add((t * 53) as i8)).collect()).collect();
                let prepared: Vec<Prepared> = qs.iter().map(|q| Prepared::new(q)).collect();
                let refs: Vec<&Prepared> = prepared.iter().collect();
                let mut got = vec![0; m * tokens];
                i2s_rows_tokens(&rows, row.len(), &refs, &mut got);
                for (r, rw) in rows.chunks_exact(row.len()).enumerate() {
                    for (t, q) in qs.iter().enumerate() {
                        assert_eq!(got[t * m + r], dot_i2s_scalar(rw, q), "{m} rows x {tokens} tokens n={n}");
                    }
                }
                // The AVX-VNNI tiles (2 x 4 and what is left), whatever
                // this CPU's dispatch picks.
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
                    let plain: Vec<&[i8]> = qs.iter().map(Vec::as_slice).collect();
                    let mut vnni = vec![0; m * tokens];
                    i2s_tiles(m, tokens, &[2, 1], &mut vnni, |r, height, ts, tile| {
                        let tile_rows = &rows[r * row.len()..(r + height) * row.len()];
                        // SAFETY: checked just above.
                        unsafe { i2s_tile_avxvnni(height, tile_rows, row.len(), &plain[ts], tile) }
                    });
                    assert_eq!(vnni, got, "avx-vnni tiles: {m} rows x {tokens} tokens n={n}");
                }
            }
        }
    }

    #[test]
    fn the_kernel_choice_follows_the_cpu_features_and_the_override() {
        let cpu = |features: &'static [&'static str]| move |f: &str| features.contains(&f);
        let x86_avx512 = cpu(&["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni"]);
        assert_eq!(isa_for("x86_64", &x86_avx512, ""), Isa::Avx512Vnni);
        assert_eq!(isa_for("x86_64", &x86_avx512, "avx2"), Isa::Avx2);
        assert_eq!(isa_for("x86_64", &x86_avx512, "scalar"), Isa::Scalar);
        assert_eq!(isa_for("x86_64", &cpu(&["avx2", "fma", "f16c"]), ""), Isa::Avx2);
        // AVX2 without FMA/F16C (some VIA and early parts): references.
        assert_eq!(isa_for("x86_64", &cpu(&["avx2"]), ""), Isa::Scalar);
        assert_eq!(isa_for("aarch64", &cpu(&["neon", "dotprod"]), ""), Isa::NeonDot);
        assert_eq!(isa_for("aarch64", &cpu(&["neon", "dotprod"]), "neon"), Isa::Neon);
        assert_eq!(isa_for("aarch64", &cpu(&["neon"]), ""), Isa::Neon);
        assert_eq!(isa_for("aarch64", &cpu(&["neon"]), "scalar"), Isa::Scalar);
        assert_eq!(isa_for("riscv64", &cpu(&[]), ""), Isa::Scalar);
        // This process's choice is the pure function's on this CPU.
        let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
        assert_eq!(isa(), isa_for(std::env::consts::ARCH, &detected, &forced));
    }

    #[test]
    fn activation_quantization_equals_the_reference_on_every_path() {
        let mut rng = Rng::new(17);
        // Ties (x.5 after scaling), the clamp bounds, NaN, infinities, and
        // random values, at lengths with and without a SIMD tail.
        let special = [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, 127.49, 127.5, 128.0, -128.5, -129.0, 1e9, -1e9];
        for n in [1usize, 15, 16, 17, 33, 256, 1000] {
            let mut x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 300.0).collect();
            for (v, s) in x.iter_mut().zip(special.iter().cycle()).step_by(3) {
                *v = *s;
            }
            if n > 4 {
                x[n - 2] = f32::NAN;
                x[n - 3] = f32::INFINITY;
                x[n - 4] = f32::NEG_INFINITY;
            }
            for scale in [1.0f32, 0.37, -2.0] {
                let mut want = vec![0i8; n];
                quantize_row_scalar(&x, scale, &mut want);
                for (w, v) in want.iter().zip(&x) {
                    let y = v * scale;
                    let r = if y.is_nan() { 0 } else { y.round_ties_even().clamp(-128.0, 127.0) as i8 };
                    assert_eq!(*w, r, "reference at {y}");
                }
                let mut got = vec![0i8; n];
                quantize_row(&x, scale, &mut got);
                assert_eq!(got, want, "dispatched n={n} scale={scale}");
                #[cfg(target_arch = "x86_64")]
                for (name, kernel) in x86_quantizers() {
                    let mut got = vec![0i8; n];
                    kernel(&x, scale, &mut got);
                    assert_eq!(got, want, "{name} n={n} scale={scale}");
                }
                #[cfg(target_arch = "aarch64")]
                {
                    let mut got = vec![0i8; n];
                    aarch64::quantize_row(&x, scale, &mut got);
                    assert_eq!(got, want, "neon n={n} scale={scale}");
                }
            }
            // With and without infinities, NaNs among them.
            let finite: Vec<f32> = x.iter().map(|v| if v.is_infinite() { -3.0 } else { *v }).collect();
            for x in [&x, &finite] {
                let want = abs_max_scalar(x);
                assert_eq!(abs_max(x).to_bits(), want.to_bits(), "abs_max n={n}");
                #[cfg(target_arch = "aarch64")]
                assert_eq!(aarch64::abs_max(x).to_bits(), want.to_bits(), "neon abs_max n={n}");
                #[cfg(target_arch = "x86_64")]
                if let Some(avx2) = x86_acts_available() {
                    // SAFETY: x86_acts_available checked the features.
                    let got = unsafe { [x86::abs_max_avx2(x)].into_iter().chain(avx2.then(|| x86::abs_max_avx512(x))) };
                    for got in got {
                        assert_eq!(got.to_bits(), want.to_bits(), "x86 abs_max n={n}");
                    }
                }
            }
        }
    }

    /// Whether the AVX2 activation kernels can run here, with whether the
    /// AVX-512 ones can too (None: neither).
    #[cfg(target_arch = "x86_64")]
    fn x86_acts_available() -> Option<bool> {
        is_x86_feature_detected!("avx2").then(|| is_x86_feature_detected!("avx512f"))
    }

    #[cfg(target_arch = "x86_64")]
    type Quantizer = fn(&[f32], f32, &mut [i8]);

    /// Every x86 activation quantizer this CPU can run, whatever `isa()`
    /// picked (so the forced AVX2 runs still test the AVX-512 ones).
    #[cfg(target_arch = "x86_64")]
    fn x86_quantizers() -> Vec<(&'static str, Quantizer)> {
        let mut v: Vec<(&'static str, Quantizer)> = Vec::new();
        if let Some(avx512) = x86_acts_available() {
            // SAFETY: x86_acts_available checked AVX2.
            v.push(("avx2", |x, s, o| unsafe { x86::quantize_row_avx2(x, s, o) }));
            if avx512 {
                // SAFETY: x86_acts_available checked AVX-512 F.
                v.push(("avx512", |x, s, o| unsafe { x86::quantize_row_avx512(x, s, o) }));
            }
        }
        v
    }

    #[test]
    fn the_signed_abs_max_is_the_first_value_of_largest_magnitude_on_every_path() {
        let mut rng = Rng::new(23);
        for n in [1usize, 7, 8, 15, 16, 17, 31, 33, 100, 256] {
            for case in 0..6 {
                let mut x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 10.0).collect();
                let at = (rng.next_f32() * n as f32) as usize % n;
                match case {
                    // The maximum twice with opposite signs: the first wins.
                    1 if n > 1 => {
                        x[at] = -7.0;
                        x[(at + 1 + n / 2) % n] = 7.0;
                    }
                    2 => x[at] = f32::NAN,
                    3 => x[at] = f32::NEG_INFINITY,
                    4 => x.iter_mut().for_each(|v| *v = 0.0),
                    5 => x.iter_mut().for_each(|v| *v = if rng.next_f32() < 0.5 { f32::NAN } else { -0.0 }),
                    _ => {}
                }
                let want = signed_abs_max_scalar(&x);
                assert_eq!(signed_abs_max(&x).to_bits(), want.to_bits(), "n={n} case {case}: {x:?}");
                #[cfg(target_arch = "x86_64")]
                if let Some(avx512) = x86_acts_available() {
                    let amax = abs_max_scalar(&x);
                    if amax > 0.0 {
                        // SAFETY: x86_acts_available checked the features.
                        unsafe {
                            assert_eq!(x86::first_with_abs_avx2(&x, amax).to_bits(), want.to_bits(), "avx2 n={n}");
                            if avx512 {
                                assert_eq!(
                                    x86::first_with_abs_avx512(&x, amax).to_bits(),
                                    want.to_bits(),
                                    "avx512 n={n}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_inline_f16_conversion_equals_half_for_every_value() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_le_to_f32(&h.to_le_bytes());
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn every_tq1_kernel_equals_the_scalar_reference_and_the_decoded_codes() {
        let mut rng = Rng::new(13);
        for blocks in [1usize, 2, 5, 10] {
            let n = blocks * 256;
            // Every byte value, not only those an encoder writes: the
            // kernels must agree on any file.
            let mut row = Vec::new();
            for b in 0..blocks {
                row.extend((0..52).map(|i| if b == 0 { (i * 5) as u8 } else { rng.next_u64() as u8 }));
                row.extend(f16::from_f32(0.25).to_le_bytes());
            }
            let q: Vec<i8> =
                (0..n).map(|i| if i % 83 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
            let mut want = vec![0i32; blocks];
            tq1_block_dots_scalar(&row, &q, &mut want);
            // Against the decoder (codes -1..1): code = decoded + 1.
            let t = crate::quant::decode_tq1_0(&row, 1, n).unwrap();
            for b in 0..blocks {
                let qb = &q[b * 256..(b + 1) * 256];
                let qsum: i32 = qb.iter().map(|&v| i32::from(v)).sum();
                assert_eq!(dot_codes(&t.codes[b * 256..(b + 1) * 256], qb) + qsum, want[b], "block {b}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![0i32; blocks];
                // SAFETY: checked just above.
                unsafe { x86::tq1_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 blocks={blocks}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                let mut got = vec![0i32; blocks];
                // SAFETY: checked just above (AVX2 comes with AVX-512 here).
                unsafe { x86::tq1_block_dots_vnni(&row, &q, &mut got) };
                assert_eq!(got, want, "avx512-vnni blocks={blocks}");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in neon_builds() {
                let mut got = vec![0i32; blocks];
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                unsafe { aarch64::tq1_block_dots(sdot, &row, &q, &mut got) };
                assert_eq!(got, want, "neon sdot={sdot} blocks={blocks}");
            }
            let mut got = vec![0i32; blocks];
            tq1_block_dots(&row, &q, &mut got);
            assert_eq!(got, want);
            // Many rows in one call (AVX-512 VNNI's 16 at a time here when
            // the CPU has it; 37 leaves a group of 5), random scales: bit
            // for bit the reference's finish.
            let n_rows = 37;
            let mut rows = Vec::new();
            for r in 0..n_rows {
                for block in row.chunks_exact(54) {
                    rows.extend(block[..52].iter().map(|&c| c.wrapping_add(r as u8 * 7)));
                    rows.extend(f16::from_f32((rng.next_f32() - 0.5) * 0.1).to_le_bytes());
                }
            }
            let bsums: Vec<i32> = q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect();
            let ds: Vec<f32> = (0..blocks).map(|_| rng.next_f32() * 0.02).collect();
            let mut got = vec![0f32; n_rows];
            tq1_rows(&rows, row.len(), &q, &bsums, &ds, &mut got);
            for (r, g) in rows.chunks_exact(row.len()).zip(&got) {
                let mut dots = vec![0i32; blocks];
                tq1_block_dots_scalar(r, &q, &mut dots);
                let want = ternary_blocks_finish(r, 54, &dots, &bsums, &ds);
                assert_eq!(g.to_bits(), want.to_bits(), "rows blocks={blocks}");
            }
            // Several tokens at once: each token's results are its own `tq1_rows`.
            let rb = row.len();
            many_tokens_equal_each_alone(
                &q,
                n_rows,
                &mut rng,
                (5, 13),
                |qs, b, d, out| tq1_rows_tokens(&rows, rb, qs, b, d, out),
                |q, b, d, out| tq1_rows(&rows, rb, q, b, d, out),
            );
        }
    }

    /// Several tokens at once (1 to 9: tiles of up to 4 with AVX-512 VNNI)
    /// give each token, bit for bit, what `one` gives it alone: the check
    /// of the TQ2_0 and TQ1_0 many-token kernels over `n_rows` rows. Token
    /// t's activations are `q` times `mul` plus t times `salt` (wrapping),
    /// its block sums theirs, its scales random.
    fn many_tokens_equal_each_alone(
        q: &[i8],
        n_rows: usize,
        rng: &mut Rng,
        (mul, salt): (i8, i8),
        many: impl Fn(&[&[i8]], &[&[i32]], &[&[f32]], &mut [f32]),
        one: impl Fn(&[i8], &[i32], &[f32], &mut [f32]),
    ) {
        let blocks = q.len() / 256;
        for n in [1usize, 2, 3, 4, 5, 9] {
            let qs: Vec<Vec<i8>> = (0..n)
                .map(|t| q.iter().map(|&v| v.wrapping_mul(mul).wrapping_add((t as i8).wrapping_mul(salt))).collect())
                .collect();
            let bs: Vec<Vec<i32>> = qs
                .iter()
                .map(|q| q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect())
                .collect();
            let dt: Vec<Vec<f32>> = (0..n).map(|_| (0..blocks).map(|_| rng.next_f32() * 0.02).collect()).collect();
            let mut got = vec![f32::NAN; n * n_rows];
            let a: Vec<&[i8]> = qs.iter().map(Vec::as_slice).collect();
            let b: Vec<&[i32]> = bs.iter().map(Vec::as_slice).collect();
            let d: Vec<&[f32]> = dt.iter().map(Vec::as_slice).collect();
            many(&a, &b, &d, &mut got);
            for t in 0..n {
                let mut want = vec![0f32; n_rows];
                one(&qs[t], &bs[t], &dt[t], &mut want);
                let got = &got[t * n_rows..(t + 1) * n_rows];
                assert!(
                    got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{n} tokens, token {t}, blocks={blocks}: {got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn every_tq2_kernel_equals_the_scalar_reference_and_the_decoded_codes() {
        let mut rng = Rng::new(11);
        for blocks in [1usize, 2, 5, 10] {
            let n = blocks * 256;
            let mut row = Vec::new();
            for _ in 0..blocks {
                row.extend((0..64).map(|_| (0..4).fold(0u8, |b, _| b << 2 | (rng.next_u64() % 3) as u8)));
                row.extend(f16::from_f32(0.5).to_le_bytes());
            }
            let q: Vec<i8> =
                (0..n).map(|i| if i % 89 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
            let mut want = vec![0i32; blocks];
            tq2_block_dots_scalar(&row, &q, &mut want);
            // Against the decoder (codes -1..1): code = decoded + 1.
            let t = crate::quant::decode_tq2_0(&row, 1, n).unwrap();
            for b in 0..blocks {
                let qb = &q[b * 256..(b + 1) * 256];
                let qsum: i32 = qb.iter().map(|&v| i32::from(v)).sum();
                assert_eq!(dot_codes(&t.codes[b * 256..(b + 1) * 256], qb) + qsum, want[b], "block {b}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![0i32; blocks];
                // SAFETY: checked just above.
                unsafe { x86::tq2_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 blocks={blocks}");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in neon_builds() {
                let mut got = vec![0i32; blocks];
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                unsafe { aarch64::tq2_block_dots(sdot, &row, &q, &mut got) };
                assert_eq!(got, want, "neon sdot={sdot} blocks={blocks}");
            }
            let mut got = vec![0i32; blocks];
            tq2_block_dots(&row, &q, &mut got);
            assert_eq!(got, want);
            // Many rows in one call (AVX-512 VNNI here when the CPU has it),
            // finished with random scales: bit for bit the reference's.
            let n_rows = 37;
            let mut rows = Vec::new();
            for r in 0..n_rows {
                for (b, block) in row.chunks_exact(66).enumerate() {
                    rows.extend(block[..64].iter().map(|&c| c.rotate_left(2 * (r + b) as u32 % 8)));
                    rows.extend(f16::from_f32((rng.next_f32() - 0.5) * 0.1).to_le_bytes());
                }
            }
            let bsums: Vec<i32> = q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect();
            let ds: Vec<f32> = (0..blocks).map(|_| rng.next_f32() * 0.02).collect();
            let mut got = vec![0f32; n_rows];
            tq2_rows(&rows, row.len(), &Prepared::new(&q), &bsums, &ds, &mut got);
            for (r, g) in rows.chunks_exact(row.len()).zip(&got) {
                let mut dots = vec![0i32; blocks];
                tq2_block_dots_scalar(r, &q, &mut dots);
                assert_eq!(g.to_bits(), tq2_finish(r, &dots, &bsums, &ds).to_bits(), "rows blocks={blocks}");
            }
            // The AVX2 build (groups of 8: four whole and one of 5) too.
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                let mut avx2 = vec![0f32; n_rows];
                // SAFETY: checked just above.
                unsafe { x86::tq2_rows_avx2(&rows, row.len(), &q, &bsums, &ds, &mut avx2) };
                for (r, (g, w)) in avx2.iter().zip(&got).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "avx2 rows blocks={blocks} row {r}");
                }
                if is_x86_feature_detected!("avxvnni") {
                    // SAFETY: checked just above.
                    unsafe { x86::tq2_rows_avxvnni(&rows, row.len(), &q, &bsums, &ds, &mut avx2) };
                    for (r, (g, w)) in avx2.iter().zip(&got).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "avx-vnni rows blocks={blocks} row {r}");
                    }
                }
            }
            // Several tokens at once (tiles of 16 rows x up to 4 tokens with
            // AVX-512 VNNI): each token's results are its own `tq2_rows`.
            let rb = row.len();
            many_tokens_equal_each_alone(
                &q,
                n_rows,
                &mut rng,
                (3, 17),
                |qs, b, d, out| {
                    let prepared: Vec<Prepared> = qs.iter().map(|q| Prepared::new(q)).collect();
                    tq2_rows_tokens(&rows, rb, &prepared.iter().collect::<Vec<_>>(), b, d, out)
                },
                |q, b, d, out| tq2_rows(&rows, rb, &Prepared::new(q), b, d, out),
            );
            // The AVX2 and AVX-VNNI builds of it (8 rows x up to 4 tokens)
            // whatever this CPU's dispatch picks, each against its own
            // one-token kernel.
            #[cfg(target_arch = "x86_64")]
            for vnni in [false, true] {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                if !avx2 || (vnni && !is_x86_feature_detected!("avxvnni")) {
                    continue;
                }
                many_tokens_equal_each_alone(
                    &q,
                    n_rows,
                    &mut rng,
                    (5, 23),
                    |qs, b, d, out| {
                        ternary_rows_tokens(66, 8, &rows, rb, qs, b, d, out, |group, q, b, d, out, m| {
                            // SAFETY: checked just above.
                            unsafe {
                                if vnni {
                                    x86::tq2_rows_tokens_avxvnni(group, rb, q, b, d, out, m)
                                } else {
                                    x86::tq2_rows_tokens_avx2(group, rb, q, b, d, out, m)
                                }
                            }
                        })
                    },
                    // SAFETY: checked just above.
                    |q, b, d, out| unsafe {
                        if vnni {
                            x86::tq2_rows_avxvnni(&rows, rb, q, b, d, out)
                        } else {
                            x86::tq2_rows_avx2(&rows, rb, q, b, d, out)
                        }
                    },
                );
            }
            // Four tokens at once: each equals its own reference.
            let qs: Vec<Vec<i8>> = (0..4).map(|t| q.iter().map(|&v| v.wrapping_add(t * 29)).collect()).collect();
            let mut wants = vec![vec![0i32; blocks]; 4];
            for (qt, w) in qs.iter().zip(wants.iter_mut()) {
                tq2_block_dots_scalar(&row, qt, w);
            }
            let four = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
            let mut gots = vec![vec![0i32; blocks]; 4];
            {
                let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
                tq2_block_dots_x4(&row, four, [g0, g1, g2, g3]);
            }
            assert_eq!(gots, wants, "x4 blocks={blocks}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut gots = vec![vec![0i32; blocks]; 4];
                let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
                // SAFETY: checked just above.
                unsafe { x86::tq2_block_dots_x4_avx2(&row, four, [g0, g1, g2, g3]) };
                assert_eq!(gots, wants, "x4 avx2 blocks={blocks}");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in neon_builds() {
                let mut gots = vec![vec![0i32; blocks]; 4];
                let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                unsafe { aarch64::tq2_block_dots_x4(sdot, &row, four, [g0, g1, g2, g3]) };
                assert_eq!(gots, wants, "x4 neon sdot={sdot} blocks={blocks}");
            }
        }
    }

    #[test]
    fn the_i2s_kernel_reproduces_the_kernel_fixtures_integer_dots() {
        let g = crate::golden::Golden::open("ternary-matmul");
        let w = g.u8("w.i2_s");
        let q = g.i8("act.i8tok.q");
        let dots = g.i32("dot.i2s_codes");
        for r in 0..6 {
            for o in 0..64 {
                let row = &w[o * 192..(o + 1) * 192];
                assert_eq!(dot_i2s(row, &q[r * 768..(r + 1) * 768]), dots[r * 64 + o]);
            }
        }
    }

    #[test]
    fn every_f16_kernel_matches_the_reference() {
        let mut rng = Rng::new(4);
        for n in [1usize, 15, 16, 17, 31, 32, 33, 100, 2560] {
            let row: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.next_f32() * 2.0 - 1.0)).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let want = dot_f16_scalar(&row, &x);
            let got = dot_f16(&row, &x);
            assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "n={n}: {got} vs {want}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
                // SAFETY: checked just above (with AVX2/FMA on such CPUs).
                let got = unsafe { x86::dot_f16_avx512(&row, &x) };
                assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "avx512 n={n}: {got} vs {want}");
            }
            #[cfg(target_arch = "aarch64")]
            {
                let got = aarch64::dot_f16(&row, &x);
                assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "neon n={n}: {got} vs {want}");
            }
            // Many rows by many vectors at once (1 to 11 vectors: groups of
            // 8 or 4 and what is left; 1 to 9 rows: tiles and what is
            // left): each the single-vector kernel's bits.
            let xs: Vec<Vec<f32>> = (0..11).map(|_| (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()).collect();
            let rows: Vec<f16> = (0..9 * n).map(|_| f16::from_f32(rng.next_f32() * 2.0 - 1.0)).collect();
            for (k, m) in [(1, 1), (2, 3), (4, 4), (5, 9), (8, 5), (11, 2)] {
                let vs: Vec<&[f32]> = xs[..k].iter().map(|x| &x[..]).collect();
                let mut many = vec![0f32; m * k];
                f16_rows_many(&rows[..m * n], n, &vs, &mut many);
                for (r, row) in rows[..m * n].chunks_exact(n).enumerate() {
                    for (j, x) in vs.iter().enumerate() {
                        let want = dot_f16(row, x).to_bits();
                        assert_eq!(many[j * m + r].to_bits(), want, "{m} rows x {k} vectors n={n}: ({r}, {j})");
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            let xs4: Vec<&[f32]> = xs[..4].iter().map(|x| &x[..]).collect();
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                let mut four = [0f32; 4];
                // SAFETY: checked just above; equal lengths.
                unsafe { x86::f16_tile_avx2::<4>(&row, n, &xs4, &mut four) };
                for (j, x) in xs[..4].iter().enumerate() {
                    // SAFETY: the same features.
                    let one = unsafe { x86::dot_f16_avx2(&row, x) };
                    assert_eq!(four[j].to_bits(), one.to_bits(), "avx2 x4 n={n} vector {j}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
                let mut eight = [0f32; 4];
                // SAFETY: checked just above; equal lengths.
                unsafe { x86::f16_tile_avx512::<4>(&row, n, &xs4, &mut eight) };
                for (j, x) in xs[..4].iter().enumerate() {
                    // SAFETY: the same features.
                    let one = unsafe { x86::dot_f16_avx512(&row, x) };
                    assert_eq!(eight[j].to_bits(), one.to_bits(), "avx512 x8 n={n} vector {j}");
                }
            }
        }
        // Every finite f16 value (subnormals too) widens exactly: one-hot
        // activations pick each weight out.
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| h.is_finite()).collect();
        for (i, chunk) in all.chunks(32).enumerate() {
            for k in [0, 7, 8, 15, 16, 31].into_iter().filter(|&k| k < chunk.len()) {
                let mut x = vec![0f32; chunk.len()];
                x[k] = 1.0;
                let got = dot_f16(chunk, &x);
                // Exact; zeros of either sign are equal (the paths' sums
                // start from +0 or -0).
                assert_eq!(got, chunk[k].to_f32(), "chunk {i} lane {k}");
            }
        }
    }
}
