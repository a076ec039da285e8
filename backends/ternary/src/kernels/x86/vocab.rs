//! The quantized vocabulary-matrix kernels (Q8_0 and Q6_K, the output
//! matrices llama.cpp's quantizer writes) with AVX2 and AVX-512: block
//! dots, rows against one token, and groups of rows against up to four.

use super::*;

#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn q8_0_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let blocks = out.len().min(row.len() / Q8_0_BLOCK).min(q.len() / 32);
    for (b, o) in out.iter_mut().enumerate().take(blocks) {
        // SAFETY: block b lies within row and q (bounded above).
        let w = _mm256_loadu_si256(row.as_ptr().add(b * Q8_0_BLOCK + 2).cast());
        let x = _mm256_loadu_si256(q.as_ptr().add(b * 32).cast());
        // |w| (as unsigned, exact even for -128) times x with w's sign:
        // x is within -127..=127 so negating it cannot overflow, and pair
        // sums stay below 2 * 128 * 127, inside i16.
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        *o = hsum_i32(_mm256_madd_epi16(p, ones));
    }
}

/// One Q6_K block's dot with its 256 activations at `a` and their 16
/// sums of 16 (`q6k_sums`, at `sums`), as 8 lanes to be summed.
#[inline(always)]
unsafe fn q6k_block_avx2(blk: *const u8, a: *const i8, sums: *const i16) -> std::arch::x86_64::__m256i {
    Q6kBlockAvx2::unpack(blk).dot(a, sums)
}

/// A Q6_K block unpacked for AVX2: its 256 values as bytes 0..=63 in 8
/// vectors (elements 32 v..32 v + 32) and its 16 sub-block scales as i16,
/// also doubled into dwords for `vpermd`. `dot` takes one token: per 32
/// values one `vpmaddubsw` of the values (|pair| <= 2 * 63 * 127) and one
/// `vpmaddwd` by the sub-block scales; the -32 offset once per block, as
/// 32 x (the sums by the scales): the same integer as (w - 32) x per
/// value, a `vpmaddubsw` and a subtraction fewer per 32 values.
#[derive(Clone, Copy)]
struct Q6kBlockAvx2 {
    vals: [std::arch::x86_64::__m256i; 8],
    scales: std::arch::x86_64::__m256i,
    /// Each scale in both halves of a dword: scales 0..4 and 8..12 in
    /// `doubled[0]`, 4..8 and 12..16 in `doubled[1]` (per 128-bit lane),
    /// so one `vpermd` gives 32 values their pair of scales (a broadcast
    /// and an insert per scale from memory took most of the kernel's
    /// operations).
    doubled: [std::arch::x86_64::__m256i; 2],
}

impl Q6kBlockAvx2 {
    #[inline(always)]
    unsafe fn unpack(blk: *const u8) -> Q6kBlockAvx2 {
        use std::arch::x86_64::*;
        let m4 = _mm256_set1_epi8(0xF);
        let m2 = _mm256_set1_epi8(3);
        let mut vals = [_mm256_setzero_si256(); 8];
        for half in 0..2 {
            // SAFETY (all loads): the caller's block has Q6K_BLOCK bytes.
            let ql0 = _mm256_loadu_si256(blk.add(half * 64).cast());
            let ql1 = _mm256_loadu_si256(blk.add(half * 64 + 32).cast());
            let qh = _mm256_loadu_si256(blk.add(128 + half * 32).cast());
            vals[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            vals[4 * half + 1] = _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
            );
            vals[4 * half + 2] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
            );
            vals[4 * half + 3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
            );
        }
        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
        let doubled = [_mm256_unpacklo_epi16(scales, scales), _mm256_unpackhi_epi16(scales, scales)];
        Q6kBlockAvx2 { vals, scales, doubled }
    }

    /// The block's dot with 256 activations at `a` and their 16 sums at `sums`.
    #[inline(always)]
    unsafe fn dot(&self, a: *const i8, sums: *const i16) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY (all loads): the caller's 256 activations and 16 sums.
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256(sums.cast()), self.scales), 5);
        let mut acc = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
        for (v, w) in self.vals.iter().enumerate() {
            let p = _mm256_maddubs_epi16(*w, _mm256_loadu_si256(a.add(32 * v).cast()));
            // Elements 0..16 of vector v = 4 half + part use scale
            // j = 8 half + 2 part, 16..32 scale j + 1: dwords k and k + 1
            // of doubled[part / 2].
            let (half, part) = (v / 4, v % 4);
            let k = (half * 4 + (part % 2) * 2) as i32;
            let at = _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1);
            let s = _mm256_permutevar8x32_epi32(self.doubled[part / 2], at);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
        }
        acc
    }
}

#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn q6k_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
    let blocks = out.len().min(row.len() / Q6K_BLOCK).min(q.len() / 256);
    for (b, o) in out.iter_mut().enumerate().take(blocks) {
        let a = &q[b * 256..][..256];
        let sums: [i16; 16] = std::array::from_fn(|j| a[16 * j..][..16].iter().map(|&v| i16::from(v)).sum());
        // SAFETY: block b is inside row and q (blocks bounds both).
        *o = hsum_i32(q6k_block_avx2(row.as_ptr().add(b * Q6K_BLOCK), a.as_ptr(), sums.as_ptr()));
    }
}

/// Q6_K rows against Q8_K activations (with their `q6k_sums`) with AVX2
/// (see `blockwise_rows_avx2`; no block sums: the -32 offset is inside
/// each block's dot).
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn q6k_rows_avx2(
    rows: &[u8],
    row_bytes: usize,
    q: &[i8],
    sums: &[i16],
    d: &[f32],
    out: &mut [f32],
) {
    let blocks = row_bytes / Q6K_BLOCK;
    assert!(q.len() >= blocks * 256 && sums.len() >= blocks * 16, "Q6_K activations");
    // SAFETY: block b is inside its row, q has its 256 activations and sums their 16 sums (asserted).
    blockwise_rows_avx2::<{ Q6K_BLOCK }>(rows, row_bytes, &[], d, out, |block, b| {
        q6k_block_avx2(block, q.as_ptr().add(b * 256), sums.as_ptr().add(b * 16))
    })
}

/// Q6_K rows (up to 8, one `blockwise_rows_avx2` group) against `N`
/// tokens (1-4) with AVX2: per block each row is unpacked once for every
/// token and one scale gather serves them all. Token t's results go to
/// `out[t * stride..][..rows]`, bit for bit what `q6k_rows_avx2` gives it
/// alone (the same integer block dots, the same finish).
// Blocks by index: block b is read from every row, token and scale array.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn q6k_rows_tokens_avx2<const N: usize>(
    group: &[u8],
    row_bytes: usize,
    qs: [&[i8]; N],
    sums: [&[i16]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let n = group.len() / row_bytes;
    let blocks = row_bytes / Q6K_BLOCK;
    assert!(n <= AVX2_LANES && group.len() == n * row_bytes && row_bytes == blocks * Q6K_BLOCK, "Q6_K group shape");
    for t in 0..N {
        assert!(qs[t].len() >= blocks * 256 && sums[t].len() >= blocks * 16 && d[t].len() >= blocks, "Q6_K tokens");
    }
    assert!(out.len() >= (N - 1) * stride + n, "Q6_K tokens output");
    let pf = prefetch_distance().map(|_| AVX2_LANES * row_bytes);
    let block_scales = BlockScalesX8::new(row_bytes, Q6K_BLOCK, n);
    let mut acc = [_mm256_setzero_ps(); N];
    // Rows past n stay zero, as in `blockwise_rows_avx2`.
    let mut v = [[_mm256_setzero_si256(); AVX2_LANES]; N];
    for b in 0..blocks {
        for r in 0..n {
            // SAFETY: block b of row r < n is inside group.
            let block = group.as_ptr().add(r * row_bytes + b * Q6K_BLOCK);
            prefetch_block::<{ Q6K_BLOCK }>(block, pf);
            let unpacked = Q6kBlockAvx2::unpack(block);
            for ((v, q), s) in v.iter_mut().zip(qs).zip(sums) {
                // SAFETY: block b's activations and sums are inside q, s (asserted).
                v[r] = unpacked.dot(q.as_ptr().add(b * 256), s.as_ptr().add(16 * b));
            }
        }
        // SAFETY: rows < n hold block b.
        let scales = block_scales.gather(group.as_ptr(), b);
        for (t, acc) in acc.iter_mut().enumerate() {
            let scale = _mm256_mul_ps(scales, _mm256_set1_ps(d[t][b]));
            *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(lane_sums_x8(&v[t])), scale));
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        store_lanes_x8(*acc, &mut out[t * stride..][..n]);
    }
}

/// Q6_K rows against Q8_K activations with AVX-512 (see
/// `blockwise_group_avx512`: 16 rows read across, one scale gather and a
/// vectorized finish per block; Q6_K's finish has no block sum to
/// subtract). Per half block, the 64 low-nibble bytes are one load whose
/// low nibbles are elements 0..64 and high nibbles 64..128, in order; the
/// 32 high-bit bytes are broadcast to both 256-bit halves and shifted per
/// half so bits 2k..2k+2 land at bits 4..6 for elements 32k... Each 64
/// values go through `vpmaddubsw` (values 0..=63 unsigned) and `vpmaddwd`
/// with their sub-block scales spread by `vpermw`. The -32 offset is taken
/// out once per block: 32 sum_j scale_j * (sum of sub-block j's
/// activations), from the token's `q6k_sums`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(in crate::kernels) unsafe fn q6k_rows_avx512(
    rows: &[u8],
    row_bytes: usize,
    q: &[i8],
    sums: &[i16],
    d: &[f32],
    out: &mut [f32],
) {
    let blocks = row_bytes / Q6K_BLOCK;
    assert!(q.len() >= blocks * 256 && sums.len() >= blocks * 16, "Q6_K activations");
    let unpack = Q6kUnpack::new();
    blockwise_rows_avx512::<{ Q6K_BLOCK }, false>(rows, row_bytes, &[], d, out, |block, b| {
        // SAFETY: block b has Q6K_BLOCK bytes, q and sums 256 and 16 from b.
        let (w, s, scales) = unpack.block(block);
        Q6kUnpack::dot(&w, &s, scales, q.as_ptr().add(b * 256), sums.as_ptr().add(16 * b))
    })
}

/// A Q6_K block unpacked for `vpmaddubsw`: its 256 6-bit values as bytes
/// 0..=63 in four vectors (elements 64 v..64 v + 64), and each vector's
/// sub-block scales spread to the i16 lanes `vpmaddwd` pairs them with.
#[derive(Clone, Copy)]
struct Q6kUnpack {
    m4: std::arch::x86_64::__m512i,
    m30: std::arch::x86_64::__m512i,
    shl_lo: std::arch::x86_64::__m512i,
    shr_hi: std::arch::x86_64::__m512i,
    spread: [std::arch::x86_64::__m512i; 4],
}

impl Q6kUnpack {
    #[inline(always)]
    unsafe fn new() -> Q6kUnpack {
        use std::arch::x86_64::*;
        // High bits of elements 0..32 | 32..64 (bits 0-1 | 2-3) and 64..96 | 96..128 (4-5 | 6-7) to bits 4-5.
        let shl_lo = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shr_hi = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        // i16 lane l of the 64 values starting at element 64 v has sub-block 4 v + l / 8.
        // A loop, not `array::from_fn`: its closure has no target
        // features, so the load in it was a call (0.6% of a 4-stream step).
        let mut spread = [_mm512_setzero_si512(); 4];
        for (v, s) in spread.iter_mut().enumerate() {
            let lanes: [i16; 32] = std::array::from_fn(|l| (4 * v + l / 8) as i16);
            *s = _mm512_loadu_si512(lanes.as_ptr().cast());
        }
        Q6kUnpack { m4: _mm512_set1_epi8(0xf), m30: _mm512_set1_epi8(0x30), shl_lo, shr_hi, spread }
    }

    /// The block's 256 values as bytes 0..=63 in four vectors, in the
    /// block's stored order (elements 64 v..64 v + 64 in the file's).
    #[inline(always)]
    unsafe fn values(&self, block: *const u8) -> [std::arch::x86_64::__m512i; 4] {
        use std::arch::x86_64::*;
        let mut w = [_mm512_setzero_si512(); 4];
        // SAFETY (all loads): the caller's block has Q6K_BLOCK bytes.
        for half in 0..2 {
            let low = _mm512_loadu_si512(block.add(64 * half).cast());
            let high = _mm512_broadcast_i64x4(_mm256_loadu_si256(block.add(128 + 32 * half).cast()));
            // (low & 0xf) | (high bits & 0x30)
            w[2 * half] = _mm512_ternarylogic_epi32::<0xf8>(
                _mm512_and_si512(low, self.m4),
                _mm512_sllv_epi16(high, self.shl_lo),
                self.m30,
            );
            w[2 * half + 1] = _mm512_ternarylogic_epi32::<0xf8>(
                _mm512_and_si512(_mm512_srli_epi16(low, 4), self.m4),
                _mm512_srlv_epi16(high, self.shr_hi),
                self.m30,
            );
        }
        w
    }

    /// The block's values, their spread scales, and the 16 scales as i16.
    #[inline(always)]
    unsafe fn block(
        &self,
        block: *const u8,
    ) -> ([std::arch::x86_64::__m512i; 4], [std::arch::x86_64::__m512i; 4], std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // SAFETY: the caller's block has Q6K_BLOCK bytes.
        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(192).cast()));
        let scales_x = _mm512_castsi256_si512(scales);
        let s = std::array::from_fn(|v| _mm512_permutexvar_epi16(self.spread[v], scales_x));
        (self.values(block), s, scales)
    }

    /// 16 lanes whose sum is the block's dot with the 256 activations at
    /// `a` (their 16-value sums at `sums`): sum scale_j (value - 32) a,
    /// the -32 taken out once as 32 sum_j scale_j sums_j.
    #[inline(always)]
    unsafe fn dot(
        w: &[std::arch::x86_64::__m512i; 4],
        s: &[std::arch::x86_64::__m512i; 4],
        scales: std::arch::x86_64::__m256i,
        a: *const i8,
        sums: *const i16,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let mut acc = _mm512_setzero_si512();
        for v in 0..4 {
            // SAFETY: the caller's 256 activations at a.
            let x = _mm512_loadu_si512(a.add(64 * v).cast());
            acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w[v], x), s[v]));
        }
        // SAFETY: the caller's 16 sums.
        let bsums = _mm256_loadu_si256(sums.cast());
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales, bsums), 5);
        _mm512_sub_epi32(acc, _mm512_zextsi256_si512(offset))
    }
}

/// `q6k_rows_avx512` for N tokens (sequences decoded together) over up to
/// 16 rows: each row's blocks unpacked once for all N (two rows at a time,
/// their values and scales kept in registers while each token's
/// activations are loaded once for both), each scale gather serving every
/// token. Token t's results go to `out[t * stride..][..rows]`, bit for bit
/// what `q6k_rows_avx512` gives it alone (the same integer block dots, the
/// same finish).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(in crate::kernels) unsafe fn q6k_rows_tokens_avx512<const N: usize>(
    group: &[u8],
    row_bytes: usize,
    qs: [&[i8]; N],
    sums: [&[i16]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    q6k_group_tokens::<N, false>(group, row_bytes, qs, sums, d, out, stride)
}

/// Permuted Q6_K rows (`super::q6k_permuted`: dword lane j of each of a
/// block's four vectors holds sub-block j's values) against N tokens'
/// activations permuted the same way, over up to 16 rows: per row and
/// token, four chained `vpdpbusd` give the 16 sub-block dots, the -32
/// offset comes off as 32 times each sub-block's activation sum, and one
/// `vpmulld` applies the 16 scales; the block's integer is then the lanes'
/// sum, as in `q6k_rows_tokens_avx512`, whose finish (and so bits) this
/// shares. Two rows at a time, each token's activations loaded once for
/// both.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(in crate::kernels) unsafe fn q6k_permuted_rows_tokens_avx512<const N: usize>(
    group: &[u8],
    row_bytes: usize,
    qs: [&[i8]; N],
    sums: [&[i16]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    q6k_group_tokens::<N, true>(group, row_bytes, qs, sums, d, out, stride)
}

/// The two Q6_K many-token kernels: up to 16 rows x N tokens, two rows
/// at a time, each row's block unpacked once for all N and each token's
/// activations loaded once for both rows; per block the rows' integer
/// dots go through one add tree per token and one scale gather serves
/// every token. `PERMUTED`: blocks and activations in
/// `super::q6k_permuted`'s order (four chained `vpdpbusd`, one `vpmulld`);
/// otherwise the file's (`Q6kUnpack::dot`).
// Blocks by index: block b is read from every row, token and scale array.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
unsafe fn q6k_group_tokens<const N: usize, const PERMUTED: bool>(
    group: &[u8],
    row_bytes: usize,
    qs: [&[i8]; N],
    sums: [&[i16]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    const R: usize = 2;
    let n = group.len() / row_bytes;
    let blocks = row_bytes / Q6K_BLOCK;
    assert!(n <= TQ2_LANES && group.len() == n * row_bytes && row_bytes == blocks * Q6K_BLOCK, "Q6_K group shape");
    for t in 0..N {
        assert!(qs[t].len() >= blocks * 256 && sums[t].len() >= blocks * 16 && d[t].len() >= blocks, "Q6_K tokens");
    }
    assert!(out.len() >= (N - 1) * stride + n, "Q6_K tokens output");
    let unpack = Q6kUnpack::new();
    let g = FileRows::<{ Q6K_BLOCK }>::new(group, row_bytes);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); N];
    // Rows past n stay zero, as in `blockwise_group_avx512`.
    let mut v = [[zero; TQ2_LANES]; N];
    for b in 0..blocks {
        // Permuted: per token, -32 x each sub-block's activation sum, one
        // lane each: where each row's dots start (no subtraction per row).
        let mut offset = [zero; N];
        if PERMUTED {
            for t in 0..N {
                // SAFETY: block b's 16 sums are inside sums[t] (asserted).
                let s = _mm512_cvtepi16_epi32(_mm256_loadu_si256(sums[t].as_ptr().add(16 * b).cast()));
                offset[t] = _mm512_sub_epi32(zero, _mm512_slli_epi32(s, 5));
            }
        }
        for r0 in (0..n).step_by(R) {
            let rn = (n - r0).min(R);
            // Values, spread scales (file order) or scales as i32 lanes
            // (permuted), and the scales as i16.
            let mut rows = [([zero; 4], [zero; 4], _mm256_setzero_si256()); R];
            for (i, row) in rows.iter_mut().enumerate().take(rn) {
                // SAFETY: block b of row r0 + i < n is inside group.
                let block = g.block(r0 + i, b);
                *row = if PERMUTED {
                    let scales = _mm512_cvtepi8_epi32(_mm_loadu_si128(block.add(192).cast()));
                    (unpack.values(block), [scales; 4], _mm256_setzero_si256())
                } else {
                    unpack.block(block)
                };
            }
            for t in 0..N {
                // SAFETY: block b's activations and sums are inside qs[t], sums[t] (asserted).
                let (a, s16) = (qs[t].as_ptr().add(b * 256), sums[t].as_ptr().add(16 * b));
                if PERMUTED {
                    // Not `array::from_fn`: a closure here has no target features.
                    let x: [__m512i; 4] = [
                        _mm512_loadu_si512(a.cast()),
                        _mm512_loadu_si512(a.add(64).cast()),
                        _mm512_loadu_si512(a.add(128).cast()),
                        _mm512_loadu_si512(a.add(192).cast()),
                    ];
                    for (i, (w, s, _)) in rows.iter().enumerate().take(rn) {
                        let mut dots = _mm512_dpbusd_epi32(offset[t], w[0], x[0]);
                        dots = _mm512_dpbusd_epi32(dots, w[1], x[1]);
                        dots = _mm512_dpbusd_epi32(dots, w[2], x[2]);
                        dots = _mm512_dpbusd_epi32(dots, w[3], x[3]);
                        v[t][r0 + i] = _mm512_mullo_epi32(dots, s[0]);
                    }
                } else {
                    for (i, (w, s, scales)) in rows.iter().enumerate().take(rn) {
                        v[t][r0 + i] = Q6kUnpack::dot(w, s, *scales, a, s16);
                    }
                }
            }
        }
        // SAFETY: rows < n hold block b.
        let scales = g.scales(b);
        for t in 0..N {
            let scale = _mm512_mul_ps(scales, _mm512_set1_ps(d[t][b]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(lane_sums_x16(&v[t])), scale));
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        store_lanes(*acc, &mut out[t * stride..][..n]);
    }
}
