//! Activation quantization with AVX-512 and AVX2: the largest |x| of a
//! block, the first value reaching it, and the values scaled and rounded
//! to int8. Every matrix product quantizes its input on one thread while
//! the others wait; compiled for the x86-64 baseline (SSE2) the references
//! ran a value at a time: 1.4% of a 2-thread TQ2_0 decode's samples, so
//! about 3% of its time with the second core idle.

use std::arch::x86_64::*;

/// `super::super::abs_max` with AVX-512: `vmaxps` returns its second
/// operand when either is NaN, so a NaN value leaves the running maximum
/// as it was (as `f32::max` does).
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) unsafe fn abs_max_avx512(x: &[f32]) -> f32 {
    let n = x.len() / 16 * 16;
    let mut m = [_mm512_setzero_ps(); 2];
    let mut chunks = x[..n].chunks_exact(32);
    for c in &mut chunks {
        for (k, m) in m.iter_mut().enumerate() {
            // SAFETY: 16 values at 16 k inside the 32-value chunk.
            let v = _mm512_abs_ps(_mm512_loadu_ps(c.as_ptr().add(16 * k)));
            *m = _mm512_max_ps(v, *m);
        }
    }
    for c in chunks.remainder().chunks_exact(16) {
        // SAFETY: a 16-value chunk.
        m[0] = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(c.as_ptr())), m[0]);
    }
    // No lane holds NaN, so the order of the reduction does not matter.
    let m = _mm512_reduce_max_ps(_mm512_max_ps(m[0], m[1]));
    x[n..].iter().fold(m, |a, v| a.max(v.abs()))
}

#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn abs_max_avx2(x: &[f32]) -> f32 {
    let n = x.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = [_mm256_setzero_ps(); 2];
    let mut chunks = x[..n].chunks_exact(16);
    for c in &mut chunks {
        for (k, m) in m.iter_mut().enumerate() {
            // SAFETY: 8 values at 8 k inside the 16-value chunk.
            let v = _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr().add(8 * k)));
            *m = _mm256_max_ps(v, *m);
        }
    }
    for c in chunks.remainder().chunks_exact(8) {
        // SAFETY: an 8-value chunk.
        m[0] = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr())), m[0]);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(m[0], m[1]));
    let m = lanes.iter().fold(0f32, |a, v| a.max(*v));
    x[n..].iter().fold(m, |a, v| a.max(v.abs()))
}

/// The first value whose |x| is `amax` (0 when none is).
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) unsafe fn first_with_abs_avx512(x: &[f32], amax: f32) -> f32 {
    let n = x.len() / 16 * 16;
    let want = _mm512_set1_ps(amax);
    for (i, c) in x[..n].chunks_exact(16).enumerate() {
        // SAFETY: a 16-value chunk.
        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(_mm512_loadu_ps(c.as_ptr())), want);
        if hit != 0 {
            return x[16 * i + hit.trailing_zeros() as usize];
        }
    }
    x[n..].iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn first_with_abs_avx2(x: &[f32], amax: f32) -> f32 {
    let n = x.len() / 8 * 8;
    let (want, sign) = (_mm256_set1_ps(amax), _mm256_set1_ps(-0.0));
    for (i, c) in x[..n].chunks_exact(8).enumerate() {
        // SAFETY: an 8-value chunk.
        let abs = _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr()));
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs, want));
        if hit != 0 {
            return x[8 * i + hit.trailing_zeros() as usize];
        }
    }
    x[n..].iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// `super::super::quantize_row_scalar` with AVX-512: clamped to
/// -128..=127 first (so out-of-range values do not convert to the integer
/// "indefinite"), converted in the default rounding mode (to nearest, ties
/// to even, as the reference's magic-number rounding), NaN lanes zeroed.
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) unsafe fn quantize_row_avx512(x: &[f32], scale: f32, out: &mut [i8]) {
    let n = x.len().min(out.len()) / 16 * 16;
    let (s, lo, hi) = (_mm512_set1_ps(scale), _mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    for (x, o) in x[..n].chunks_exact(16).zip(out[..n].chunks_exact_mut(16)) {
        // SAFETY: 16 values in, 16 bytes out.
        let y = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), s);
        let number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
        let i = _mm512_maskz_cvtps_epi32(number, _mm512_min_ps(_mm512_max_ps(y, lo), hi));
        _mm_storeu_si128(o.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(i));
    }
    super::super::quantize_row_scalar(&x[n..], scale, &mut out[n..]);
}

#[target_feature(enable = "avx2")]
pub(in crate::kernels) unsafe fn quantize_row_avx2(x: &[f32], scale: f32, out: &mut [i8]) {
    let n = x.len().min(out.len()) / 32 * 32;
    let (s, lo, hi) = (_mm256_set1_ps(scale), _mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // packs interleaves the 128-bit halves: dwords back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, o) in x[..n].chunks_exact(32).zip(out[..n].chunks_exact_mut(32)) {
        let i: [__m256i; 4] = std::array::from_fn(|k| {
            // SAFETY: 8 values at 8 k inside the 32-value chunk.
            let y = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), s);
            let number = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
            _mm256_and_si256(number, _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi)))
        });
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        // SAFETY: 32 bytes out.
        _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm256_permutevar8x32_epi32(bytes, order));
    }
    super::super::quantize_row_scalar(&x[n..], scale, &mut out[n..]);
}
