//! Attention's register tiles for AVX-512 and AVX2 (with F16C). Each
//! does the reference's operations per row and position in the same
//! order: one fused multiply-add per value, the 16 lanes of a dot
//! added pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1), values added in order of
//! position. Head sizes that are not a multiple of 16 take `Lanes`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::q8::{attend_q8_with, Q8Keys, Q8Rows, Q8Scores};
use super::{attend_blocked, KvElem, KvHead, Lanes, Queries, Tiles};

/// AVX-512 F tiles. Made only inside `attend_avx512`, which runs after
/// the CPU was found to have AVX-512 F: that is what makes its calls of
/// the `#[target_feature]` functions below sound.
struct Avx512(());

/// AVX2 + FMA + F16C tiles, made only inside `attend_avx2` (same reason).
struct Avx2(());

/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend_avx512<T: KvElem>(
    q: Queries,
    kv: KvHead<T>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    if kv.len.is_multiple_of(16) {
        attend_blocked(&Avx512(()), q, kv, scale, scores, out)
    } else {
        attend_blocked(&Lanes, q, kv, scale, scores, out)
    }
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_avx2<T: KvElem>(
    q: Queries,
    kv: KvHead<T>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    if kv.len.is_multiple_of(16) {
        attend_blocked(&Avx2(()), q, kv, scale, scores, out)
    } else {
        attend_blocked(&Lanes, q, kv, scale, scores, out)
    }
}

/// `attend_q8` with AVX-512 VNNI scores and AVX-512 values.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn attend_q8_avx512<V: KvElem>(
    q: Queries,
    keys: Q8Keys,
    values: KvHead<V>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_q8_with(&Avx512Vnni(()), q, keys, values, scale, scores, out)
}

/// `attend_q8` with AVX2 scores and values.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_q8_avx2<V: KvElem>(
    q: Queries,
    keys: Q8Keys,
    values: KvHead<V>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_q8_with(&Avx2(()), q, keys, values, scale, scores, out)
}

/// AVX-512 tiles with VNNI integer scores, made only inside
/// `attend_q8_avx512` (after AVX-512 F, BW and VNNI were found).
struct Avx512Vnni(());

impl<T: KvElem> Tiles<T> for Avx512Vnni {
    #[inline(always)]
    fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize) {
        Avx512(()).scores(q, kv, ps, scale, scores, stride)
    }

    #[inline(always)]
    fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]) {
        Avx512(()).values(w, stride, kv, ps, out)
    }
}

impl Q8Scores for Avx512Vnni {
    #[inline(always)]
    fn q8_scores(
        &self,
        q: &Q8Rows,
        keys: &Q8Keys,
        rows: Range<usize>,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: an Avx512Vnni exists only where AVX-512 F, BW and VNNI were checked.
        unsafe { super::q8::x86::scores_avx512(q, keys, rows, ps, scale, dst, stride) }
    }
}

impl Q8Scores for Avx2 {
    #[inline(always)]
    fn q8_scores(
        &self,
        q: &Q8Rows,
        keys: &Q8Keys,
        rows: Range<usize>,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: an Avx2 exists only where AVX2, FMA and F16C were checked.
        unsafe { super::q8::x86::scores_avx2(q, keys, rows, ps, scale, dst, stride) }
    }
}

/// Where the pairwise add tree (`lane_sums_f32x16`) leaves accumulator
/// `i`'s total: lane `slot(i)` holds accumulator `4 * (i % 4) + i / 4`'s,
/// so a tile accumulates result lane L's dot in `acc[slot(L)]` (the
/// mapping is its own inverse).
const fn slot(lane: usize) -> usize {
    4 * (lane % 4) + lane / 4
}

/// Positions ahead whose key / value lines the tiles request: one head's
/// vector is 512 bytes every `stride` floats (2.5 KiB in 2B4T), a pattern
/// the hardware prefetcher follows poorly.
const KV_AHEAD: usize = 8;

/// Ask for the lines of the `n` elements at `x` (the part of one
/// position's vector a tile reads) `KV_AHEAD` positions on. The value
/// tiles pass a constant, so the loop unrolls (a loop over the head's
/// lines ran once per position beside 16 FMAs); the score tiles ask for
/// each of their positions' keys (asking for the first of 4 left three
/// in four keys to come from memory on demand in a long decode).
#[inline(always)]
fn prefetch_lines<T>(x: *const T, n: usize, stride: usize) {
    let p = x.wrapping_add(KV_AHEAD * stride).cast::<u8>();
    for line in 0..(n * std::mem::size_of::<T>()).div_ceil(64) {
        super::super::prefetch(p.wrapping_add(64 * line), Some(0));
    }
}

impl<T: KvElem> Tiles<T> for Avx512 {
    #[inline(always)]
    fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize) {
        let (hd, rows) = (kv.len, q.len() / kv.len);
        let mut r = 0;
        while r < rows {
            let (q, dst) = (&q[r * hd..], &mut scores[r * stride..]);
            // SAFETY: an Avx512 exists only where AVX-512 F was checked.
            r += unsafe {
                match rows - r {
                    4.. => scores_avx512::<T, 4, 4>(q, kv, ps.clone(), scale, dst, stride),
                    2 | 3 => scores_avx512::<T, 2, 8>(q, kv, ps.clone(), scale, dst, stride),
                    _ => scores_avx512::<T, 1, 16>(q, kv, ps.clone(), scale, dst, stride),
                }
            };
        }
    }

    #[inline(always)]
    fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]) {
        let (hd, rows) = (kv.len, out.len() / kv.len);
        let mut r = 0;
        while r < rows {
            let (w, out) = (&w[r * stride..], &mut out[r * hd..]);
            let n = match rows - r {
                4.. => 4,
                2 | 3 => 2,
                _ => 1,
            };
            let mut col = 0;
            while col < hd {
                // SAFETY: an Avx512 exists only where AVX-512 F was checked.
                col += unsafe {
                    match (n, hd - col) {
                        (4, 64..) => values_avx512::<T, 4, 4>(w, stride, kv, ps.clone(), out, col),
                        (4, _) => values_avx512::<T, 4, 1>(w, stride, kv, ps.clone(), out, col),
                        (2, 128..) => values_avx512::<T, 2, 8>(w, stride, kv, ps.clone(), out, col),
                        (2, 64..) => values_avx512::<T, 2, 4>(w, stride, kv, ps.clone(), out, col),
                        (2, _) => values_avx512::<T, 2, 1>(w, stride, kv, ps.clone(), out, col),
                        (_, 128..) => values_avx512::<T, 1, 8>(w, stride, kv, ps.clone(), out, col),
                        (_, 64..) => values_avx512::<T, 1, 4>(w, stride, kv, ps.clone(), out, col),
                        _ => values_avx512::<T, 1, 1>(w, stride, kv, ps.clone(), out, col),
                    }
                };
            }
            r += n;
        }
    }
}

/// 16 floats of a key or value at `p`, widened from f16 when the cache
/// holds f16.
#[inline(always)]
unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
    // SAFETY: the caller's promise: 16 elements readable at p, AVX-512 F.
    unsafe {
        if T::F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_loadu_ps(p.cast())
        }
    }
}

/// Scores of R rows (R x P = 16) against the positions `ps`, P at a time:
/// accumulator `slot(r * P + j)` holds row r's dot with position j in 16
/// lanes, one add tree reduces all 16. Returns R (rows done).
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512<T: KvElem, const R: usize, const P: usize>(
    q: &[f32],
    kv: &KvHead<T>,
    ps: Range<usize>,
    scale: f32,
    dst: &mut [f32],
    stride: usize,
) -> usize {
    const { assert!(R * P == 16) };
    let hd = kv.len;
    assert!(q.len() >= R * hd && hd.is_multiple_of(16));
    let scale = _mm512_set1_ps(scale);
    if ps.is_empty() {
        return R;
    }
    // Every key up to the range's last is inside the cache (checked once:
    // the keys below are addressed from the first by the stride).
    let first = kv.key(ps.start).as_ptr();
    let _ = kv.key(ps.end - 1);
    let mut p = ps.start;
    while p < ps.end {
        let count = (ps.end - p).min(P);
        // Positions past the range repeat the last one (computed, not stored).
        let mut keys = [first; P];
        for (j, k) in keys.iter_mut().enumerate() {
            *k = first.wrapping_add((p - ps.start + j.min(count - 1)) * kv.stride);
        }
        for k in keys {
            prefetch_lines(k, hd, kv.stride);
        }
        let mut acc = [_mm512_setzero_ps(); 16];
        for c in (0..hd).step_by(16) {
            let mut qv = [_mm512_setzero_ps(); R];
            for (r, x) in qv.iter_mut().enumerate() {
                // SAFETY: row r's columns c..c + 16 are within q (asserted length).
                *x = unsafe { _mm512_loadu_ps(q.as_ptr().add(r * hd + c)) };
            }
            for (j, k) in keys.iter().enumerate() {
                // SAFETY: each key is a full head (kv.key), c + 16 <= hd.
                let kx = unsafe { load16(k.add(c)) };
                for (r, x) in qv.iter().enumerate() {
                    let i = slot(r * P + j);
                    acc[i] = _mm512_fmadd_ps(*x, kx, acc[i]);
                }
            }
        }
        let sums = _mm512_mul_ps(lane_sums_f32x16(acc), scale);
        // Row r's scores are lanes r P..r P + count: a masked store each
        // (a copy through memory was a memcpy call per row).
        let first = (1u32 << count) - 1;
        for r in 0..R {
            let row = &mut dst[r * stride + p..][..count];
            // SAFETY: only the `count` lanes from r P on are written, at
            // row[0..count]; the base pointer before the row is never
            // dereferenced (masked-out lanes do not access memory).
            unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr().wrapping_sub(r * P), (first << (r * P)) as u16, sums) };
        }
        p += count;
    }
    R
}

/// The 16 accumulators' totals, each added pairwise in the order of
/// `float::sum_lanes`, into one vector: lane `slot(i)` holds `acc[i]`'s.
/// 8 + 4 + 2 + 1 vector adds and two shuffles each, instead of a
/// reduction per accumulator.
#[inline]
#[target_feature(enable = "avx512f")]
fn lane_sums_f32x16(acc: [__m512; 16]) -> __m512 {
    // Lanes i + i + 8: each pair of accumulators' 256-bit halves.
    let mut s = [_mm512_setzero_ps(); 8];
    for (k, x) in s.iter_mut().enumerate() {
        let (a, b) = (acc[2 * k], acc[2 * k + 1]);
        *x = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
    }
    // Lanes i + i + 4: 128-bit blocks 0 + 1 of each 8-lane partial.
    let mut t = [_mm512_setzero_ps(); 4];
    for (k, x) in t.iter_mut().enumerate() {
        let (a, b) = (s[2 * k], s[2 * k + 1]);
        *x = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
    }
    // Lanes i + i + 2, within 128-bit blocks.
    let mut u = [_mm512_setzero_ps(); 2];
    for (k, x) in u.iter_mut().enumerate() {
        let (a, b) = (_mm512_castps_pd(t[2 * k]), _mm512_castps_pd(t[2 * k + 1]));
        *x = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // Lanes i + i + 1.
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(u[0], u[1]), _mm512_shuffle_ps::<0xDD>(u[0], u[1]))
}

/// out rows (R of them, `kv.len` apart) columns col..col + 16 C, plus
/// w_p v_p for p in ps, in order of p; the sums stay in registers across
/// the positions. Returns the columns done (16 C).
#[target_feature(enable = "avx512f")]
unsafe fn values_avx512<T: KvElem, const R: usize, const C: usize>(
    w: &[f32],
    stride: usize,
    kv: &KvHead<T>,
    ps: Range<usize>,
    out: &mut [f32],
    col: usize,
) -> usize {
    let hd = kv.len;
    assert!(col + 16 * C <= hd && out.len() >= (R - 1) * hd + hd);
    assert!(ps.is_empty() || (R - 1) * stride + ps.end <= w.len());
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            // SAFETY: within out (asserted above).
            *x = unsafe { _mm512_loadu_ps(out.as_ptr().add(r * hd + col + 16 * c)) };
        }
    }
    if !ps.is_empty() {
        // Every value up to the range's last is inside the cache (checked
        // once: the loop steps from the first by the stride).
        let _ = kv.value(ps.end - 1);
        let mut v = kv.value(ps.start)[col..].as_ptr();
        let mut wp = w[ps.start..].as_ptr();
        for _ in ps {
            prefetch_lines(v, 16 * C, kv.stride);
            let mut x = [_mm512_setzero_ps(); C];
            for (c, x) in x.iter_mut().enumerate() {
                // SAFETY: v is this position's vector from col, and col + 16 C <= hd.
                *x = unsafe { load16(v.add(16 * c)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: r * stride + p < w.len() for p in ps (asserted above).
                let wr = _mm512_set1_ps(unsafe { *wp.add(r * stride) });
                for (a, x) in row.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(wr, *x, *a);
                }
            }
            v = v.wrapping_add(kv.stride);
            wp = wp.wrapping_add(1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            // SAFETY: within out (asserted above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(r * hd + col + 16 * c), *x) };
        }
    }
    16 * C
}

impl<T: KvElem> Tiles<T> for Avx2 {
    #[inline(always)]
    fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize) {
        let (hd, rows) = (kv.len, q.len() / kv.len);
        let mut r = 0;
        while r < rows {
            let (q, dst) = (&q[r * hd..], &mut scores[r * stride..]);
            // SAFETY: an Avx2 exists only where AVX2, FMA and F16C were checked.
            r += unsafe {
                if rows - r >= 2 {
                    scores_avx2::<T, 2, 2>(q, kv, ps.clone(), scale, dst, stride)
                } else {
                    scores_avx2::<T, 1, 4>(q, kv, ps.clone(), scale, dst, stride)
                }
            };
        }
    }

    #[inline(always)]
    fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]) {
        let (hd, rows) = (kv.len, out.len() / kv.len);
        let mut r = 0;
        while r < rows {
            let (w, out) = (&w[r * stride..], &mut out[r * hd..]);
            let two = rows - r >= 2;
            let mut col = 0;
            while col < hd {
                // SAFETY: an Avx2 exists only where AVX2, FMA and F16C were checked.
                col += unsafe {
                    match (two, hd - col >= 32) {
                        (true, true) => values_avx2::<T, 2, 4>(w, stride, kv, ps.clone(), out, col),
                        (true, false) => values_avx2::<T, 2, 1>(w, stride, kv, ps.clone(), out, col),
                        (false, true) => values_avx2::<T, 1, 4>(w, stride, kv, ps.clone(), out, col),
                        (false, false) => values_avx2::<T, 1, 1>(w, stride, kv, ps.clone(), out, col),
                    }
                };
            }
            r += if two { 2 } else { 1 };
        }
    }
}

/// 8 floats of a key or value at `p`, widened from f16 when the cache
/// holds f16.
#[inline(always)]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    // SAFETY: the caller's promise: 8 elements readable at p, AVX + F16C.
    unsafe {
        if T::F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// Scores of R rows (R x P = 4) against the positions `ps`, P at a time:
/// each dot's 16 lanes in two 8-lane accumulators (lanes 0-7, 8-15),
/// whose sum is the tree's first step; the rest of the tree on all four.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_avx2<T: KvElem, const R: usize, const P: usize>(
    q: &[f32],
    kv: &KvHead<T>,
    ps: Range<usize>,
    scale: f32,
    dst: &mut [f32],
    stride: usize,
) -> usize {
    const { assert!(R * P == 4) };
    let hd = kv.len;
    assert!(q.len() >= R * hd && hd.is_multiple_of(16));
    let scale = _mm256_set1_ps(scale);
    if ps.is_empty() {
        return R;
    }
    // As scores_avx512: bounds once, then keys by the stride.
    let first = kv.key(ps.start).as_ptr();
    let _ = kv.key(ps.end - 1);
    let mut p = ps.start;
    while p < ps.end {
        let count = (ps.end - p).min(P);
        let mut keys = [first; P];
        for (j, k) in keys.iter_mut().enumerate() {
            *k = first.wrapping_add((p - ps.start + j.min(count - 1)) * kv.stride);
        }
        for k in keys {
            prefetch_lines(k, hd, kv.stride);
        }
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        for c in (0..hd).step_by(16) {
            let mut qv = [(_mm256_setzero_ps(), _mm256_setzero_ps()); R];
            for (r, x) in qv.iter_mut().enumerate() {
                // SAFETY: row r's columns c..c + 16 are within q (asserted length).
                *x = unsafe {
                    (_mm256_loadu_ps(q.as_ptr().add(r * hd + c)), _mm256_loadu_ps(q.as_ptr().add(r * hd + c + 8)))
                };
            }
            for (j, k) in keys.iter().enumerate() {
                // SAFETY: each key is a full head (kv.key), c + 16 <= hd.
                let (k0, k1) = unsafe { (load8(k.add(c)), load8(k.add(c + 8))) };
                for (r, (q0, q1)) in qv.iter().enumerate() {
                    let i = r * P + j;
                    lo[i] = _mm256_fmadd_ps(*q0, k0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(*q1, k1, hi[i]);
                }
            }
        }
        let mut x = [_mm256_setzero_ps(); 4];
        for (i, x) in x.iter_mut().enumerate() {
            *x = _mm256_add_ps(lo[i], hi[i]);
        }
        // Lanes i + i + 4: the 128-bit halves, accumulators in pairs.
        let s01 = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x[0], x[1]), _mm256_permute2f128_ps::<0x31>(x[0], x[1]));
        let s23 = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x[2], x[3]), _mm256_permute2f128_ps::<0x31>(x[2], x[3]));
        // Lanes i + i + 2: [0 0 2 2 | 1 1 3 3] (accumulators).
        let (a, b) = (_mm256_castps_pd(s01), _mm256_castps_pd(s23));
        let u = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
        // Lanes i + i + 1: accumulators 0, 2 in lanes 0, 1; 1, 3 in lanes 4, 5.
        let sums = _mm256_add_ps(_mm256_shuffle_ps::<0x88>(u, u), _mm256_shuffle_ps::<0xDD>(u, u));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats into lanes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(sums, scale)) };
        let totals = [lanes[0], lanes[4], lanes[1], lanes[5]];
        for r in 0..R {
            let row = &mut dst[r * stride + p..][..count];
            // Element by element (P is 2 or 4): a slice copy of `count`
            // floats is a memcpy call.
            for j in 0..P {
                if j < count {
                    row[j] = totals[r * P + j];
                }
            }
        }
        p += count;
    }
    R
}

/// `values_avx512` with 8-float registers: R rows x C registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_avx2<T: KvElem, const R: usize, const C: usize>(
    w: &[f32],
    stride: usize,
    kv: &KvHead<T>,
    ps: Range<usize>,
    out: &mut [f32],
    col: usize,
) -> usize {
    let hd = kv.len;
    assert!(col + 8 * C <= hd && out.len() >= (R - 1) * hd + hd);
    assert!(ps.is_empty() || (R - 1) * stride + ps.end <= w.len());
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            // SAFETY: within out (asserted above).
            *x = unsafe { _mm256_loadu_ps(out.as_ptr().add(r * hd + col + 8 * c)) };
        }
    }
    if !ps.is_empty() {
        // As values_avx512: bounds once, then steps by the stride.
        let _ = kv.value(ps.end - 1);
        let mut v = kv.value(ps.start)[col..].as_ptr();
        let mut wp = w[ps.start..].as_ptr();
        for _ in ps {
            prefetch_lines(v, 8 * C, kv.stride);
            let mut x = [_mm256_setzero_ps(); C];
            for (c, x) in x.iter_mut().enumerate() {
                // SAFETY: v is this position's vector from col, and col + 8 C <= hd.
                *x = unsafe { load8(v.add(8 * c)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: r * stride + p < w.len() for p in ps (asserted above).
                let wr = _mm256_set1_ps(unsafe { *wp.add(r * stride) });
                for (a, x) in row.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(wr, *x, *a);
                }
            }
            v = v.wrapping_add(kv.stride);
            wp = wp.wrapping_add(1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            // SAFETY: within out (asserted above).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r * hd + col + 8 * c), *x) };
        }
    }
    8 * C
}
