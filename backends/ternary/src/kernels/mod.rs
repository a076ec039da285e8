//! Hot loops, each with a scalar reference and SIMD versions chosen once at
//! run time from the CPU (never from compile-time target flags), so one
//! binary runs everywhere. `BITNET_KERNEL=scalar` forces the reference;
//! on x86_64 `avx2` the AVX2 paths, `avxvnni` AVX2 with AVX-VNNI for I2_S and TQ2_0;
//! on aarch64 `neon` the plain NEON paths (`dotprod` is the default where
//! the CPU has `sdot`). The SIMD code lives per architecture in `x86` and
//! `aarch64`; `isa` chooses among them once; this file holds the
//! references and the dispatch (their tests are in `tests`).
//!
//! - `dot_i2s`: one I2_S row (2-bit codes 0/1/2 packed four to a byte, as
//!   bitnet.cpp stores them) against int8 activations: sum code * q (the
//!   caller subtracts sum q once per token for the -1 offset).
//!   The weights stay in the file's layout in memory: a token reads 2 bits
//!   per weight.
//! - `dot_f16`: an f16 row (the output matrix) against f32 activations.

use half::f16;

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod attention;
mod float;
mod grouped;
mod grouped_i2s;
mod isa;
mod q6k_permuted;
mod vocab;
#[cfg(target_arch = "x86_64")]
mod x86;
pub(crate) use attention::max_values;
pub use attention::{attend, attend_q8, KvElem, KvHead, Q8KeyCache, Q8Keys, Queries, MAX_HEAD_DIM};
pub use float::{f16_bits_to_f32, Gate};
pub use grouped::{
    group_bytes, group_tq2, grouped_len, tq2_grouped_rows, tq2_grouped_rows_tokens, tq2_grouping, GROUP_ROWS,
};
#[cfg(test)]
pub(crate) use grouped_i2s::i2s_file_rows;
pub use grouped_i2s::{
    group_i2s, i2s_group_bytes, i2s_grouped_len, i2s_grouped_rows, i2s_grouped_rows_tokens, i2s_grouping,
};
#[cfg(test)]
use isa::detected;
pub(crate) use isa::prefetch;
pub use isa::{amx, avx_vnni, in_use, isa, isa_for, prefetch_distance, Isa};
pub use q6k_permuted::{
    permute_q6k, permute_q6k_acts, q6k_permuted_rows, q6k_permuted_rows_tokens, q6k_permuting, unpermute_q6k,
};
pub use vocab::{
    q6k_block_dots, q6k_finish, q6k_rows, q6k_rows_tokens, q6k_sums, q8_0_block_dots, Q6K_BLOCK, Q8_0_BLOCK,
};

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

/// The first `N` of `s` as an array (a tile's tokens). One copy: built
/// with `std::array::from_fn` it stayed a call per element, out of line
/// (a store-forwarding stall per tile, 3.7% of an AVX-512 TQ2_0 prompt).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_n<T: Copy, const N: usize>(s: &[T]) -> [T; N] {
    s[..N].try_into().expect("N elements")
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

/// The FFN's gate in place, g = act(g) x u, with the widest build this
/// CPU runs (the same bits in each: `float::gate_lanes`).
pub fn gate(act: Gate, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "gate: gate and up differ in length");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { x86::gate_avx512(act, g, u) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::gate_avx2(act, g, u) },
        _ => float::gate_lanes(act, g, u),
    }
}

/// x / rms(x) * w. The squares are summed in f64, as llama.cpp sums them
/// (`ggml_float`), in 8 running lanes: one running f32 sum is a chain of
/// dependent adds, 3 us for a row of 2,560, when the norms ran on one
/// thread between a step's parallel jobs, 0.9 ms of a 4-sequence step.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut lanes = [0f64; 8];
    let c = x.chunks_exact(8);
    let tail: f64 = c.remainder().iter().map(|v| f64::from(v * v)).sum();
    for v in c {
        for i in 0..8 {
            lanes[i] += f64::from(v[i] * v[i]);
        }
    }
    let ms = ((lanes.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
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

    /// Without the rearranged copy: for the regrouped matrices' many-token
    /// kernels (`i2s_grouped_rows_tokens`, `tq2_grouped_rows_tokens`), which
    /// read the plain activations only. (Interleaving each token before
    /// every product was 0.2 ms of a 4-sequence step, on one thread.) A
    /// kernel that reads the copy panics on these.
    pub fn plain(q: &'a [i8]) -> Self {
        Self { q, interleaved: Vec::new() }
    }

    /// The rearranged copy, which `new` made for AVX-512.
    #[cfg(target_arch = "x86_64")]
    fn interleaved(&self) -> &[i8] {
        // `interleave` rearranges whole pairs of 128-weight blocks.
        assert_eq!(
            self.interleaved.len(),
            self.q.len() / 256 * 256,
            "activations prepared without the interleaved copy"
        );
        &self.interleaved
    }
}

/// What the AMX kernel makes of several tokens' activations before its
/// first product, made once per product, before its parallel job, for
/// every part to read: each part staging its own copy took 1.3% of a
/// 4-sequence decoding step, and staging on first use (`OnceLock`) made
/// the other thread wait on a futex, 7% slower. Empty (`default`) where
/// the AMX kernel does not run; then a call stages for itself.
#[derive(Default)]
pub struct Staging {
    #[cfg(target_arch = "x86_64")]
    staged: Option<x86::StagedTokens>,
}

impl Staging {
    /// `qs`'s first k activations each, staged where the many-token
    /// kernels would give them to AMX (`amx()`, enough tokens, whole
    /// blocks); otherwise empty.
    pub fn new(qs: &[&[i8]], k: usize) -> Staging {
        #[cfg(target_arch = "x86_64")]
        if amx() && qs.len() >= grouped::AMX_MIN_TOKENS && k.is_multiple_of(256) && qs.iter().all(|q| q.len() >= k) {
            return Staging { staged: Some(x86::StagedTokens::new(qs, k)) };
        }
        let _ = (qs, k);
        Staging::default()
    }

    /// `f` of `qs`'s first k activations staged: this staging where it
    /// holds them, else a fresh one.
    #[cfg(target_arch = "x86_64")]
    fn with<R>(&self, qs: &[&[i8]], k: usize, f: impl FnOnce(&x86::StagedTokens) -> R) -> R {
        match &self.staged {
            Some(staged) if staged.holds(qs, k) => f(staged),
            _ => f(&x86::StagedTokens::new(qs, k)),
        }
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
        Isa::Avx512Vnni => unsafe { x86::dot_i2s_vnni_interleaved(row, a.interleaved(), a.q) },
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
        Isa::Avx512Vnni => unsafe { x86::i2s_rows_vnni_interleaved(rows, row_bytes, a.interleaved(), a.q, out) },
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
        Isa::Avx512Vnni => unsafe { x86::tq2_rows_vnni(rows, row_bytes, a.interleaved(), bsums, d, out) },
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
            let qs: Vec<&[i8]> = a.iter().map(|a| a.interleaved()).collect();
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
        Isa::Avx512Vnni => unsafe { x86::dot_i2s_xn_vnni_interleaved(row, a.map(|a| a.interleaved()), a.map(|a| a.q)) },
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
        let interleaved: Vec<&[i8]> = a.iter().map(|a| a.interleaved()).collect();
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
mod tests;
