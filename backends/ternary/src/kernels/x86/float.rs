//! The float kernels of the F16 matrices (the output matrix 2B4T ties to
//! its embedding) with AVX2 and AVX-512: one row's dot, and tiles of rows
//! against several vectors.

use super::*;

/// `float::gate_lanes` in 16 lanes.
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) unsafe fn gate_avx512(act: crate::kernels::Gate, g: &mut [f32], u: &[f32]) {
    crate::kernels::float::gate_lanes(act, g, u)
}

/// `float::gate_lanes` in 8 lanes.
#[target_feature(enable = "avx2,fma")]
pub(in crate::kernels) unsafe fn gate_avx2(act: crate::kernels::Gate, g: &mut [f32], u: &[f32]) {
    crate::kernels::float::gate_lanes(act, g, u)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_f16_avx2(row: &[f16], x: &[f32]) -> f32 {
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

/// Columns per pass of the many-vector f16 products: a pass keeps this
/// much of every vector in L1 (8 vectors: 16 KiB) while it goes down the
/// rows. Whole vectors would not fit beside the rows (2560 columns x 4
/// vectors is 40 KiB; L1 is 32-48 KiB), and streaming them from L2 for
/// every row made 4 vectors cost 3x what 2 did. 512 columns and 8 rows a
/// tile measured best of 256-1024 x 4-16 (AMD Zen 4).
const F16_PASS_COLS: usize = 512;

/// Rows of `rows` (`cols` each, at most `F16_TILE_ROWS`) against `N`
/// vectors (up to 4) with AVX2, into `out[r * N + j]`: each f16 lane
/// converted once for all N vectors, the columns in passes of
/// `F16_PASS_COLS` (the accumulators kept between passes). Per row and
/// vector the accumulators take the same values in the same order as in
/// `dot_f16_avx2` and are reduced as it does: the same bits.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn f16_tile_avx2<const N: usize>(
    rows: &[f16],
    cols: usize,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(xs.len() >= N, "f16 tile vectors");
    let m = rows.len() / cols;
    assert!(m <= F16_TILE_ROWS && rows.len() == m * cols && out.len() >= m * N, "f16 tile shape");
    let n = cols / 16 * 16;
    let pf = prefetch_distance();
    let mut acc = [[[_mm256_setzero_ps(); 2]; N]; F16_TILE_ROWS];
    for c0 in (0..n).step_by(F16_PASS_COLS) {
        let c1 = (c0 + F16_PASS_COLS).min(n);
        for (r, acc) in acc.iter_mut().enumerate().take(m) {
            let row = rows.as_ptr().add(r * cols);
            let (mut a0, mut a1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            for j in 0..N {
                (a0[j], a1[j]) = (acc[j][0], acc[j][1]);
            }
            let mut i = c0;
            while i < c1 {
                // SAFETY: i + 16 <= n <= cols, the length of every x (checked by the caller).
                let h0 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i).cast()));
                if i % 32 == 0 {
                    prefetch(row.cast::<u8>().wrapping_add(2 * i), pf);
                }
                let h1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(i + 8).cast()));
                for j in 0..N {
                    a0[j] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(xs[j].as_ptr().add(i)), a0[j]);
                    a1[j] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(xs[j].as_ptr().add(i + 8)), a1[j]);
                }
                i += 16;
            }
            for j in 0..N {
                acc[j] = [a0[j], a1[j]];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(m) {
        let row = &rows[r * cols..(r + 1) * cols];
        for (j, [a0, a1]) in acc.iter().enumerate() {
            let s = _mm256_add_ps(*a0, *a1);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            out[r * N + j] = _mm_cvtss_f32(s) + super::dot_f16_scalar(&row[n..], &xs[j][n..]);
        }
    }
}

/// Rows per many-vector f16 tile: their accumulators (rows x vectors x 2
/// registers) live in a small array between column passes.
pub(in crate::kernels) const F16_TILE_ROWS: usize = 8;

/// `f16_tile_avx2` with AVX-512 (up to 4 vectors), the same bits as
/// `dot_f16_avx512` per row and vector. Rows go two at a time through a
/// pass, so each load of a vector feeds two rows' multiply-adds: loads, not
/// multiply-adds, bound this loop (one load per FMA ran at half the FMA
/// rate).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn f16_tile_avx512<const N: usize>(
    rows: &[f16],
    cols: usize,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(xs.len() >= N, "f16 tile vectors");
    let xs: [&[f32]; N] = std::array::from_fn(|j| xs[j]);
    let m = rows.len() / cols;
    assert!(m <= F16_TILE_ROWS && rows.len() == m * cols && out.len() >= m * N, "f16 tile shape");
    let n = cols / 32 * 32;
    let mut acc = [[[_mm512_setzero_ps(); 2]; N]; F16_TILE_ROWS];
    for c0 in (0..n).step_by(F16_PASS_COLS) {
        let c1 = (c0 + F16_PASS_COLS).min(n);
        let mut r = 0;
        while r + 2 <= m {
            let (head, tail) = acc.split_at_mut(r + 1);
            f16_pass_avx512::<2, N>(rows.as_ptr().add(r * cols), cols, &xs, c0, c1, [&mut head[r], &mut tail[0]]);
            r += 2;
        }
        if r < m {
            f16_pass_avx512::<1, N>(rows.as_ptr().add(r * cols), cols, &xs, c0, c1, [&mut acc[r]]);
        }
    }
    for (r, acc) in acc.iter().enumerate().take(m) {
        let row = &rows[r * cols..(r + 1) * cols];
        for (j, [a0, a1]) in acc.iter().enumerate() {
            out[r * N + j] = _mm512_reduce_add_ps(_mm512_add_ps(*a0, *a1)) + dot_f16_avx2(&row[n..], &xs[j][n..]);
        }
    }
}

/// Columns c0..c1 of `R` rows (`cols` apart from `rows`) into their
/// accumulators, as `dot_f16_avx512` accumulates them.
#[inline(always)]
unsafe fn f16_pass_avx512<const R: usize, const N: usize>(
    rows: *const f16,
    cols: usize,
    xs: &[&[f32]; N],
    c0: usize,
    c1: usize,
    acc: [&mut [[std::arch::x86_64::__m512; 2]; N]; R],
) {
    use std::arch::x86_64::*;
    // The same place in the next tile: a tile's rows are read across in
    // passes, so "ahead in this row" is a line this tile reads next.
    let pf = prefetch_distance().map(|_| 2 * F16_TILE_ROWS * cols);
    let mut a = [[[_mm512_setzero_ps(); 2]; N]; R];
    for (a, acc) in a.iter_mut().zip(&acc) {
        *a = **acc;
    }
    let mut i = c0;
    while i < c1 {
        let mut h = [[_mm512_setzero_ps(); 2]; R];
        for (r, h) in h.iter_mut().enumerate() {
            // SAFETY: i + 32 <= c1 <= cols within row r (the caller's tile).
            let row = rows.add(r * cols);
            prefetch(row.cast::<u8>().wrapping_add(2 * i), pf);
            *h = [
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(i).cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(i + 16).cast())),
            ];
        }
        for j in 0..N {
            // SAFETY: i + 32 <= cols, the length of every x (checked by the caller).
            let x0 = _mm512_loadu_ps(xs[j].as_ptr().add(i));
            let x1 = _mm512_loadu_ps(xs[j].as_ptr().add(i + 16));
            for r in 0..R {
                a[r][j][0] = _mm512_fmadd_ps(h[r][0], x0, a[r][j][0]);
                a[r][j][1] = _mm512_fmadd_ps(h[r][1], x1, a[r][j][1]);
            }
        }
        i += 32;
    }
    for (r, acc) in acc.into_iter().enumerate() {
        *acc = a[r];
    }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_f16_avx512(row: &[f16], x: &[f32]) -> f32 {
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
