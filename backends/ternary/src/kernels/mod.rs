//! Hot loops, each with a scalar reference and SIMD versions chosen once at
//! run time from the CPU (never from compile-time target flags), so one
//! binary runs everywhere. `BITNET_KERNEL=scalar` forces the reference,
//! `avx2` the AVX2 paths, `avxvnni` AVX2 with AVX-VNNI for I2_S.
//!
//! - `dot_i2s`: one I2_S row (2-bit codes 0/1/2 packed four to a byte, as
//!   bitnet.cpp stores them) against int8 activations: sum code * q (the
//!   caller subtracts sum q once per token for the -1 offset).
//!   The weights stay in the file's layout in memory: a token reads 2 bits
//!   per weight.
//! - `dot_f16`: an f16 row (the output matrix) against f32 activations.

use std::sync::OnceLock;

use half::f16;

mod float;
mod vocab;
pub use float::{attend, axpy, dot_f32, KvHead};
pub use vocab::{q6k_block_dots, q8_0_block_dots, Q6K_BLOCK, Q8_0_BLOCK};

/// Which implementation the dispatcher picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX2 for the f16 product, AVX-512 VNNI (vpdpbusd) for I2_S.
    Avx512Vnni,
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
    #[cfg(not(target_arch = "x86_64"))]
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
    let h = u32::from(u16::from_le_bytes([b[0], b[1]]));
    let magnitude = (h & 0x7fff) << 13;
    let v = if h & 0x7c00 == 0x7c00 {
        // Infinity or NaN: all-ones exponent, mantissa kept.
        f32::from_bits(magnitude | 0x7f80_0000)
    } else {
        f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(v.to_bits() | (h & 0x8000) << 16)
}

pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
        if forced == "scalar" {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            let vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni");
            return if vnni && forced != "avx2" && forced != "avxvnni" { Isa::Avx512Vnni } else { Isa::Avx2 };
        }
        Isa::Scalar
    })
}

/// Under `Isa::Avx2`: whether the CPU has AVX-VNNI (256-bit vpdpbusd, on
/// CPUs without AVX-512 such as Alder Lake's), used by the I2_S decode
/// kernel. `BITNET_KERNEL=avxvnni` picks it on an AVX-512 CPU too (this
/// one has both); `BITNET_KERNEL=avx2` turns it off.
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i2s_avx2(row: &[u8], q: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let pf = prefetch_distance();
    for (i, (block, qb)) in row.chunks_exact(32).zip(q.chunks_exact(128)).enumerate() {
        // SAFETY (all loads): block has 32 bytes, qb 128.
        let w = _mm256_loadu_si256(block.as_ptr().cast());
        if i % 2 == 0 {
            prefetch(block.as_ptr(), pf);
        }
        let planes = [
            _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
            _mm256_and_si256(w, mask),
        ];
        for (k, codes) in planes.into_iter().enumerate() {
            let a = _mm256_loadu_si256(qb.as_ptr().add(k * 32).cast());
            // codes (u8, 0..2) x q (i8): pairs summed into i16, |sum| <= 512.
            let p = _mm256_maddubs_epi16(codes, a);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
        }
    }
    hsum_i32(acc)
}

/// I2_S with AVX-VNNI: `dot_i2s_avx2` with one vpdpbusd per plane in
/// place of maddubs + madd + add, one accumulator per plane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn dot_i2s_avxvnni(row: &[u8], q: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_si256(); 4];
    let pf = prefetch_distance();
    for (i, (block, qb)) in row.chunks_exact(32).zip(q.chunks_exact(128)).enumerate() {
        // SAFETY (all loads): block has 32 bytes, qb 128.
        let w = _mm256_loadu_si256(block.as_ptr().cast());
        if i % 2 == 0 {
            prefetch(block.as_ptr(), pf);
        }
        let planes = [
            _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
            _mm256_and_si256(w, mask),
        ];
        for (k, (codes, acc)) in planes.into_iter().zip(acc.iter_mut()).enumerate() {
            let a = _mm256_loadu_si256(qb.as_ptr().add(k * 32).cast());
            *acc = _mm256_dpbusd_avx_epi32(*acc, codes, a);
        }
    }
    hsum_i32(_mm256_add_epi32(_mm256_add_epi32(acc[0], acc[1]), _mm256_add_epi32(acc[2], acc[3])))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hsum_i32(v: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn dot_i2s_vnni(row: &[u8], q: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(3);
    let mut acc = _mm512_setzero_si512();
    let pairs = row.len() / 64;
    for p in 0..pairs {
        // Two 128-weight blocks: bytes [64p, 64p+64), activations [256p, 256p+256).
        // SAFETY (all loads): within row and q by the loop bound.
        let w = _mm512_loadu_si512(row.as_ptr().add(p * 64).cast());
        let qb = q.as_ptr().add(p * 256);
        for (k, shift) in [6u32, 4, 2, 0].into_iter().enumerate() {
            let codes = _mm512_and_si512(
                match shift {
                    6 => _mm512_srli_epi16(w, 6),
                    4 => _mm512_srli_epi16(w, 4),
                    2 => _mm512_srli_epi16(w, 2),
                    _ => w,
                },
                mask,
            );
            let lo = _mm256_loadu_si256(qb.add(k * 32).cast());
            let hi = _mm256_loadu_si256(qb.add(128 + k * 32).cast());
            let a = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            // u8 codes x i8 activations, four at a time, into i32 lanes.
            acc = _mm512_dpbusd_epi32(acc, codes, a);
        }
    }
    let mut total = _mm512_reduce_add_epi32(acc);
    if !row.len().is_multiple_of(64) {
        total += dot_i2s_avx2(&row[pairs * 64..], &q[pairs * 256..]);
    }
    total
}

/// sum code * q over an I2_S row, with the best kernel here.
#[inline]
pub fn dot_i2s(row: &[u8], q: &[i8]) -> i32 {
    debug_assert_eq!(row.len() * 4, q.len());
    debug_assert_eq!(q.len() % 128, 0);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX-512 F/BW/VNNI and AVX2.
        Isa::Avx512Vnni => unsafe { dot_i2s_vnni(row, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 and avx_vnni() AVX-VNNI.
        Isa::Avx2 if avx_vnni() => unsafe { dot_i2s_avxvnni(row, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX2.
        Isa::Avx2 => unsafe { dot_i2s_avx2(row, q) },
        _ => dot_i2s_scalar(row, q),
    }
}

/// One token's int8 activations, ready for whichever I2_S kernel runs:
/// for AVX-512 also rearranged so that each 64-byte load lines up with one
/// bit plane of two 128-weight blocks (built once per matrix-vector
/// product, instead of two 32-byte loads and an insert per plane per row).
pub struct Prepared<'a> {
    q: &'a [i8],
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn dot_i2s_vnni_interleaved(row: &[u8], qi: &[i8], q: &[i8]) -> i32 {
    let mut out = [0];
    i2s_rows_vnni_interleaved(row, row.len(), qi, q, &mut out);
    out[0]
}

/// `dot_i2s_vnni_interleaved` for each `row_bytes` row of `rows`: the loop
/// over rows inside the AVX-512 function, so a row costs no dispatch, call
/// or prefetch-setting lookup (rows are 640 bytes in 2B4T's attention).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn i2s_rows_vnni_interleaved(rows: &[u8], row_bytes: usize, qi: &[i8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(3);
    let pairs = row_bytes / 64;
    let pf = prefetch_distance();
    for (row, out) in rows.chunks_exact(row_bytes).zip(out) {
        let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let (mut acc2, mut acc3) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for p in 0..pairs {
            // SAFETY (all loads): within row and qi (pairs * 256 bytes) by the loop bound.
            let w = _mm512_loadu_si512(row.as_ptr().add(p * 64).cast());
            prefetch(row.as_ptr().wrapping_add(p * 64), pf);
            let a = qi.as_ptr().add(p * 256);
            let c0 = _mm512_and_si512(_mm512_srli_epi16(w, 6), mask);
            let c1 = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
            let c2 = _mm512_and_si512(_mm512_srli_epi16(w, 2), mask);
            let c3 = _mm512_and_si512(w, mask);
            // Four accumulators: vpdpbusd has a latency of about 5 cycles,
            // so one chain per plane keeps a step's four products from
            // waiting on each other.
            acc0 = _mm512_dpbusd_epi32(acc0, c0, _mm512_loadu_si512(a.cast()));
            acc1 = _mm512_dpbusd_epi32(acc1, c1, _mm512_loadu_si512(a.add(64).cast()));
            acc2 = _mm512_dpbusd_epi32(acc2, c2, _mm512_loadu_si512(a.add(128).cast()));
            acc3 = _mm512_dpbusd_epi32(acc3, c3, _mm512_loadu_si512(a.add(192).cast()));
        }
        let sum = _mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3));
        *out = _mm512_reduce_add_epi32(sum);
        if !row_bytes.is_multiple_of(64) {
            *out += dot_i2s_avx2(&row[pairs * 64..], &q[pairs * 256..]);
        }
    }
}

/// `dot_i2s` on prepared activations.
#[inline]
pub fn dot_i2s_prepared(row: &[u8], a: &Prepared) -> i32 {
    debug_assert_eq!(row.len() * 4, a.q.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX-512 F/BW/VNNI and AVX2;
        // Prepared::new interleaved for it.
        Isa::Avx512Vnni => unsafe { dot_i2s_vnni_interleaved(row, &a.interleaved, a.q) },
        _ => dot_i2s(row, a.q),
    }
}

/// `dot_i2s_prepared` for each `row_bytes` row of `rows`, into `out`.
#[inline]
pub fn i2s_rows_prepared(rows: &[u8], row_bytes: usize, a: &Prepared, out: &mut [i32]) {
    debug_assert_eq!(row_bytes * 4, a.q.len());
    debug_assert_eq!(rows.len(), row_bytes * out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in dot_i2s_prepared.
        Isa::Avx512Vnni => unsafe { i2s_rows_vnni_interleaved(rows, row_bytes, &a.interleaved, a.q, out) },
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tq2_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(66).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        let mut acc = _mm256_setzero_si256();
        for j in [0usize, 32] {
            // SAFETY (all loads): block has 66 bytes, qb 256.
            let w = _mm256_loadu_si256(block.as_ptr().add(j).cast());
            let planes = [
                _mm256_and_si256(w, mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            ];
            for (l, codes) in planes.into_iter().enumerate() {
                let a = _mm256_loadu_si256(qb.as_ptr().add(j * 4 + l * 32).cast());
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, a), ones));
            }
        }
        *o = hsum_i32(acc);
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
    debug_assert_eq!(blocks * 256, a.q.len());
    debug_assert_eq!(rows.len(), row_bytes * out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI; Prepared::new interleaved for it.
        Isa::Avx512Vnni => unsafe { tq2_rows_vnni(rows, row_bytes, &a.interleaved, bsums, d, out) },
        _ => {
            let mut dots = vec![0i32; blocks];
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                tq2_block_dots(row, a.q, &mut dots);
                *o = tq2_finish(row, &dots, bsums, d);
            }
        }
    }
}

/// Rows a TQ2_0 AVX-512 step finishes together, one per f32 lane.
const TQ2_LANES: usize = 16;

/// TQ2_0 with AVX-512 VNNI: a block's 64 code bytes in one load; plane l
/// (bits 2l) of its low half pairs with activations 32l.., of its high half
/// with 128 + 32l.., which is `interleave`'s layout (the same as I2_S's).
/// The finish (per block: (dot - bsum) * (scale * d), summed in block
/// order) runs on 16 rows at once, one row per lane: the same operations in
/// the same order per row as `tq2_finish`, so the same bits, at a tenth of
/// its scalar cost (it was 12% of decoding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn tq2_rows_vnni(rows: &[u8], row_bytes: usize, qi: &[i8], bsums: &[i32], d: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(3);
    let pf = prefetch_distance();
    let blocks = row_bytes / 66;
    // Block-major scratch for one group: dots[b][lane], scales[b][lane].
    let mut dots = vec![0i32; blocks * TQ2_LANES];
    let mut scales = vec![0f32; blocks * TQ2_LANES];
    for (group, out) in rows.chunks(TQ2_LANES * row_bytes).zip(out.chunks_mut(TQ2_LANES)) {
        for (lane, row) in group.chunks_exact(row_bytes).enumerate() {
            for b in 0..blocks {
                // SAFETY (all loads): block b has 66 bytes in row, qi 256 per block.
                let block = row.as_ptr().add(b * 66);
                prefetch(block, pf);
                let w = _mm512_loadu_si512(block.cast());
                let a = qi.as_ptr().add(b * 256);
                let c0 = _mm512_and_si512(w, mask);
                let c1 = _mm512_and_si512(_mm512_srli_epi16(w, 2), mask);
                let c2 = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
                let c3 = _mm512_and_si512(_mm512_srli_epi16(w, 6), mask);
                let acc0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c0, _mm512_loadu_si512(a.cast()));
                let acc1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c1, _mm512_loadu_si512(a.add(64).cast()));
                let acc0 = _mm512_dpbusd_epi32(acc0, c2, _mm512_loadu_si512(a.add(128).cast()));
                let acc1 = _mm512_dpbusd_epi32(acc1, c3, _mm512_loadu_si512(a.add(192).cast()));
                let s = _mm512_add_epi32(acc0, acc1);
                dots[b * TQ2_LANES + lane] =
                    hsum_i32(_mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1)));
                scales[b * TQ2_LANES + lane] = f16_le_to_f32(&row[b * 66 + 64..]);
            }
        }
        let mut acc = _mm512_setzero_ps();
        for b in 0..blocks {
            // SAFETY: the scratch holds TQ2_LANES values per block.
            let dot = _mm512_sub_epi32(
                _mm512_loadu_si512(dots.as_ptr().add(b * TQ2_LANES).cast()),
                _mm512_set1_epi32(bsums[b]),
            );
            let scale = _mm512_mul_ps(_mm512_loadu_ps(scales.as_ptr().add(b * TQ2_LANES)), _mm512_set1_ps(d[b]));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
        }
        let mut lanes = [0f32; TQ2_LANES];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        out.copy_from_slice(&lanes[..out.len()]);
    }
}

/// TQ1_0 (llama.cpp): 54-byte blocks of 256 weights, 1.6875 bits each:
/// 48 bytes holding five base-3 digits each (elements 32n + m from byte
/// m < 32, then 160 + 16n + m from byte 32 + m), 4 bytes holding four
/// (240 + 4n + j from byte 48 + j), then an f16 scale. Digit n of byte b
/// is ((b * 3^n mod 256) * 3) >> 8. Reference: per block, sum code * q,
/// codes 0..=2 (the caller subtracts the block's activation sum).
pub fn tq1_block_dots_scalar(row: &[u8], q: &[i8], out: &mut [i32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let code = |b: u8, n: usize| i32::from((u16::from(b.wrapping_mul(POW3[n])) * 3) >> 8);
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

/// TQ1_0 with AVX2, activations in file order. The digits come out as
/// bytes: multiplying by 3 (two byte adds) steps to the next digit of the
/// 32 first bytes; the 16 and 4 others get per-lane multipliers (1 | 3,
/// then 9, 81; 1, 3, 9, 27 for the four) so that every 32 digits line up
/// with 32 consecutive activations. ((t * 3) >> 8) of a byte t is
/// (t > 85) + (t > 170), two saturating subtractions and minimums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tq1_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let ones16 = _mm256_set1_epi16(1);
    let (k85, k170, one) = (_mm256_set1_epi8(85), _mm256_set1_epi8(170u8 as i8), _mm256_set1_epi8(1));
    let digits = |t: __m256i| {
        let a = _mm256_min_epu8(_mm256_subs_epu8(t, k85), one);
        _mm256_add_epi8(a, _mm256_min_epu8(_mm256_subs_epu8(t, k170), one))
    };
    // Bytes times c mod 256, c per 16-bit lane (both bytes of a lane the same).
    let lo_bytes = _mm256_set1_epi16(0x00ff);
    let mul8 = |v: __m256i, c: __m256i| {
        let lo = _mm256_and_si256(_mm256_mullo_epi16(v, c), lo_bytes);
        _mm256_or_si256(lo, _mm256_mullo_epi16(_mm256_andnot_si256(lo_bytes, v), c))
    };
    let by_1_3 = _mm256_setr_epi16(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3);
    let by_qh = _mm_setr_epi16(1, 1, 3, 3, 9, 9, 27, 27);
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(54).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        // SAFETY (all loads): block has 54 bytes, qb 256.
        let a = |k: usize| _mm256_loadu_si256(qb.as_ptr().add(32 * k).cast());
        let dot = |acc: __m256i, codes: __m256i, k: usize| {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, a(k)), ones16))
        };
        let mut acc = _mm256_setzero_si256();
        let mut t = _mm256_loadu_si256(block.as_ptr().cast());
        for k in 0..5 {
            acc = dot(acc, digits(t), k);
            t = _mm256_add_epi8(t, _mm256_add_epi8(t, t));
        }
        let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(block.as_ptr().add(32).cast()));
        let p01 = mul8(x, by_1_3);
        acc = dot(acc, digits(p01), 5);
        acc = dot(acc, digits(mul8(p01, _mm256_set1_epi16(9))), 6);
        let p4 = mul8(p01, _mm256_set1_epi16(81));
        let h = _mm_set1_epi32(block.as_ptr().add(48).cast::<i32>().read_unaligned());
        let hd = _mm256_castsi256_si128(mul8(_mm256_castsi128_si256(h), _mm256_castsi128_si256(by_qh)));
        acc = dot(acc, digits(_mm256_inserti128_si256(p4, hd, 1)), 7);
        *o = hsum_i32(acc);
    }
}

/// TQ1_0 with AVX-512 VNNI: the digits of a block in four 64-byte vectors
/// that line up with activations 0..64, 64..128, 128..192, 192..256 (the
/// 32 first bytes broadcast to both halves and multiplied by 1 | 3, then 9,
/// 81; the next 16 to all four quarters by 1 | 3 | 9 | 27, then 81; the
/// last 4 by 1, 3, 9, 27), each digit vector one vpdpbusd: about half the
/// operations of the AVX2 kernel per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn tq1_block_dots_vnni(row: &[u8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let (k85, k170, one) = (_mm512_set1_epi8(85), _mm512_set1_epi8(170u8 as i8), _mm512_set1_epi8(1));
    let digits = |t: __m512i| {
        let a = _mm512_min_epu8(_mm512_subs_epu8(t, k85), one);
        _mm512_add_epi8(a, _mm512_min_epu8(_mm512_subs_epu8(t, k170), one))
    };
    let lo_bytes = _mm512_set1_epi16(0x00ff);
    // Bytes times c mod 256, c per 16-bit lane.
    let mul8 = |v: __m512i, c: __m512i| {
        let lo = _mm512_and_si512(_mm512_mullo_epi16(v, c), lo_bytes);
        _mm512_or_si512(lo, _mm512_mullo_epi16(_mm512_andnot_si512(lo_bytes, v), c))
    };
    let by_1_3 = _mm512_inserti64x4(_mm512_set1_epi16(1), _mm256_set1_epi16(3), 1);
    let by_1_3_9_27 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi16(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3)),
        _mm256_setr_epi16(9, 9, 9, 9, 9, 9, 9, 9, 27, 27, 27, 27, 27, 27, 27, 27),
        1,
    );
    // Low quarter: the 16 bytes times 81; next: the 4 bytes times 1, 3, 9, 27.
    let by_81_qh = _mm512_castsi256_si512(_mm256_setr_epi16(81, 81, 81, 81, 81, 81, 81, 81, 1, 1, 3, 3, 9, 9, 27, 27));
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(54).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        // SAFETY (all loads): block has 54 bytes, qb 256.
        let b = block.as_ptr();
        let p01 = mul8(_mm512_broadcast_i64x4(_mm256_loadu_si256(b.cast())), by_1_3);
        let p23 = mul8(p01, _mm512_set1_epi16(9));
        let p45 = mul8(p01, _mm512_set1_epi16(81));
        let r = _mm_loadu_si128(b.add(32).cast());
        let r0123 = mul8(_mm512_broadcast_i32x4(r), by_1_3_9_27);
        let h = _mm_set1_epi32(b.add(48).cast::<i32>().read_unaligned());
        let r4h = mul8(_mm512_castsi256_si512(_mm256_setr_m128i(r, h)), by_81_qh);
        let v2 = _mm512_inserti64x4(p45, _mm512_castsi512_si256(r0123), 1);
        let v3 = _mm512_inserti64x4(r0123, _mm512_castsi512_si256(r4h), 0);
        let v3 = _mm512_shuffle_i64x2(v3, v3, 0b01_00_11_10);
        let a = |k: usize| _mm512_loadu_si512(qb.as_ptr().add(64 * k).cast());
        let mut acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), digits(p01), a(0));
        acc = _mm512_dpbusd_epi32(acc, digits(p23), a(1));
        acc = _mm512_dpbusd_epi32(acc, digits(v2), a(2));
        acc = _mm512_dpbusd_epi32(acc, digits(v3), a(3));
        *o = hsum_i32(_mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1)));
    }
}

/// Per-block `sum code * q` over a TQ1_0 row, with the best kernel here.
#[inline]
pub fn tq1_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    debug_assert_eq!(row.len() / 54 * 256, q.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI and AVX2.
        Isa::Avx512Vnni => unsafe { tq1_block_dots_vnni(row, q, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { tq1_block_dots_avx2(row, q, out) },
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tq2_block_dots_x4_avx2(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    for (b, block) in row.chunks_exact(66).enumerate() {
        let mut acc = [_mm256_setzero_si256(); 4];
        for j in [0usize, 32] {
            // SAFETY (all loads): block has 66 bytes; each q has 256 per block.
            let w = _mm256_loadu_si256(block.as_ptr().add(j).cast());
            let planes = [
                _mm256_and_si256(w, mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
                _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            ];
            for (t, acc) in acc.iter_mut().enumerate() {
                let qb = q[t].as_ptr().add(b * 256 + j * 4);
                for (l, codes) in planes.iter().enumerate() {
                    let a = _mm256_loadu_si256(qb.add(l * 32).cast());
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_maddubs_epi16(*codes, a), ones));
                }
            }
        }
        for (t, acc) in acc.into_iter().enumerate() {
            out[t][b] = hsum_i32(acc);
        }
    }
}

/// `tq2_block_dots` for four tokens, with the best kernel here.
#[inline]
pub fn tq2_block_dots_x4(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { tq2_block_dots_x4_avx2(row, q, out) },
        _ => tq2_block_dots_x4_scalar(row, q, out),
    }
}

/// Per-block `sum code * q` over a TQ2_0 row, with the best kernel here.
#[inline]
pub fn tq2_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    debug_assert_eq!(row.len() / 66 * 256, q.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { tq2_block_dots_avx2(row, q, out) },
        _ => tq2_block_dots_scalar(row, q, out),
    }
}

/// Reference for four tokens at once: `dot_i2s_scalar` for each.
pub fn dot_i2s_x4_scalar(row: &[u8], q: [&[i8]; 4]) -> [i32; 4] {
    q.map(|q| dot_i2s_scalar(row, q))
}

/// Four tokens against one row: the codes are unpacked once and used four
/// times (prompt processing; the row is read once per four tokens).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i2s_x4_avx2(row: &[u8], q: [&[i8]; 4]) -> [i32; 4] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 4];
    for (b, block) in row.chunks_exact(32).enumerate() {
        // SAFETY (all loads): block has 32 bytes; each q has 128 per block.
        let w = _mm256_loadu_si256(block.as_ptr().cast());
        let planes = [
            _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
            _mm256_and_si256(w, mask),
        ];
        for (t, acc) in acc.iter_mut().enumerate() {
            let qb = q[t].as_ptr().add(b * 128);
            for (k, codes) in planes.iter().enumerate() {
                let a = _mm256_loadu_si256(qb.add(k * 32).cast());
                let p = _mm256_maddubs_epi16(*codes, a);
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(p, ones));
            }
        }
    }
    acc.map(|a| hsum_i32(a))
}

/// `N` tokens at once (a multiple of 4) with AVX-512 VNNI on prepared
/// (interleaved) activations: each 64 bytes of weights unpacked once for
/// all N, one 64-byte load per plane and token (the plain layout took two
/// 32-byte loads and an insert).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
unsafe fn dot_i2s_xn_vnni_interleaved<const N: usize>(row: &[u8], qi: [&[i8]; N], q: [&[i8]; N]) -> [i32; N] {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(3);
    let mut acc = [_mm512_setzero_si512(); N];
    let pairs = row.len() / 64;
    for p in 0..pairs {
        // SAFETY (all loads): within row and each qi by the loop bound.
        let w = _mm512_loadu_si512(row.as_ptr().add(p * 64).cast());
        let planes = [
            _mm512_and_si512(_mm512_srli_epi16(w, 6), mask),
            _mm512_and_si512(_mm512_srli_epi16(w, 4), mask),
            _mm512_and_si512(_mm512_srli_epi16(w, 2), mask),
            _mm512_and_si512(w, mask),
        ];
        for (t, acc) in acc.iter_mut().enumerate() {
            let a = qi[t].as_ptr().add(p * 256);
            for (k, codes) in planes.iter().enumerate() {
                *acc = _mm512_dpbusd_epi32(*acc, *codes, _mm512_loadu_si512(a.add(64 * k).cast()));
            }
        }
    }
    let mut out = acc.map(|a| _mm512_reduce_add_epi32(a));
    if !row.len().is_multiple_of(64) {
        for t in (0..N).step_by(4) {
            let tail =
                [&q[t][pairs * 256..], &q[t + 1][pairs * 256..], &q[t + 2][pairs * 256..], &q[t + 3][pairs * 256..]];
            let rest = dot_i2s_x4_avx2(&row[pairs * 64..], tail);
            for (o, r) in out[t..t + 4].iter_mut().zip(rest) {
                *o += r;
            }
        }
    }
    out
}

/// `dot_i2s` for four tokens at once, with the best kernel here.
#[inline]
pub fn dot_i2s_x4(row: &[u8], q: [&[i8]; 4]) -> [i32; 4] {
    debug_assert!(q.iter().all(|q| q.len() == row.len() * 4));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked the CPU has AVX2 (also under Avx512Vnni).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { dot_i2s_x4_avx2(row, q) },
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
        Isa::Avx512Vnni => unsafe { dot_i2s_xn_vnni_interleaved(row, a.map(|a| &a.interleaved[..]), a.map(|a| a.q)) },
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

pub fn dot_f16_scalar(row: &[f16], x: &[f32]) -> f32 {
    row.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(row: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    let pf = prefetch_distance();
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 16 <= n <= row.len() == x.len().
        let h0 = _mm_loadu_si128(row.as_ptr().add(i).cast());
        if i % 32 == 0 {
            prefetch(row.as_ptr().cast::<u8>().wrapping_add(2 * i), pf);
        }
        let h1 = _mm_loadu_si128(row.as_ptr().add(i + 8).cast());
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(h0), _mm256_loadu_ps(x.as_ptr().add(i)), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(h1), _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
        i += 16;
    }
    let s = _mm256_add_ps(a0, a1);
    let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s) + dot_f16_scalar(&row[n..], &x[n..])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_f16_avx512(row: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / 32 * 32;
    let pf = prefetch_distance();
    let mut a0 = _mm512_setzero_ps();
    let mut a1 = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: i + 32 <= n <= row.len() == x.len().
        let h0 = _mm256_loadu_si256(row.as_ptr().add(i).cast());
        prefetch(row.as_ptr().cast::<u8>().wrapping_add(2 * i), pf);
        let h1 = _mm256_loadu_si256(row.as_ptr().add(i + 16).cast());
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(h0), _mm512_loadu_ps(x.as_ptr().add(i)), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(h1), _mm512_loadu_ps(x.as_ptr().add(i + 16)), a1);
        i += 32;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + dot_f16_avx2(&row[n..], &x[n..])
}

/// An f16 row times f32 activations.
#[inline]
pub fn dot_f16(row: &[f16], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len(), x.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F with AVX2, FMA and F16C.
        Isa::Avx512Vnni => unsafe { dot_f16_avx512(row, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { dot_f16_avx2(row, x) },
        _ => dot_f16_scalar(row, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{decode_i2s, dot_codes};
    use crate::sampler::Rng;

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
                assert_eq!(unsafe { dot_i2s_avx2(&row, &q) }, want, "avx2 n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                // SAFETY: checked just above (AVX2 comes with AVX-512 here).
                assert_eq!(unsafe { dot_i2s_vnni(&row, &q) }, want, "avx512-vnni n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { dot_i2s_avxvnni(&row, &q) }, want, "avx-vnni n={n}");
            }
            assert_eq!(dot_i2s(&row, &q), want);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                // SAFETY: checked just above.
                let got = unsafe { dot_i2s_vnni_interleaved(&row, &interleave(&q), &q) };
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
                assert_eq!(unsafe { dot_i2s_x4_avx2(&row, four) }, want4, "x4 avx2 n={n}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                let qi: Vec<Vec<i8>> = qs.iter().map(|q| interleave(q)).collect();
                let qi = [&qi[0][..], &qi[1][..], &qi[2][..], &qi[3][..]];
                // SAFETY: checked just above.
                assert_eq!(unsafe { dot_i2s_xn_vnni_interleaved(&row, qi, four) }, want4, "x4 avx512-vnni n={n}");
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
                unsafe { tq1_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 blocks={blocks}");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                let mut got = vec![0i32; blocks];
                // SAFETY: checked just above (AVX2 comes with AVX-512 here).
                unsafe { tq1_block_dots_vnni(&row, &q, &mut got) };
                assert_eq!(got, want, "avx512-vnni blocks={blocks}");
            }
            let mut got = vec![0i32; blocks];
            tq1_block_dots(&row, &q, &mut got);
            assert_eq!(got, want);
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
                unsafe { tq2_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 blocks={blocks}");
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
                unsafe { tq2_block_dots_x4_avx2(&row, four, [g0, g1, g2, g3]) };
                assert_eq!(gots, wants, "x4 avx2 blocks={blocks}");
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
                let got = unsafe { dot_f16_avx512(&row, &x) };
                assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "avx512 n={n}: {got} vs {want}");
            }
        }
    }
}
