//! Keys in q8_0 (llama-server's `--cache-type-k q8_0`): each 32 values
//! of a key as int8 codes with one scale (`quant::quantize_q8_0`, the
//! activations' quantizer), and the query rows quantized the same way, so
//! a score is integer dot products, which VNNI does 64 at a time where
//! f32 does 16.
//!
//! The score of query row r and position p (the reference,
//! `scores_scalar`): per 32-value block b, in order of b,
//! `s += (dq_rb * dk_pb) * isum_rb` (a multiply, then an add: never
//! fused), then `s * scale`; `isum` is an exact integer sum, so any order
//! of the integer work gives these bits, and every build gives them.
//!
//! The codes are stored for that integer work, not in position order:
//! positions go in tiles of 16, and within a tile, block b's group of 4
//! values j (`4 j..4 j + 4`) of the 16 positions lie together (64 bytes,
//! position-major), so one broadcast of a query's 4 codes against one
//! load gives 16 positions' partial sums with no horizontal sum. The
//! codes are kept offset by 128 (`k + 128` as u8): `vpdpbusd` multiplies
//! unsigned by signed bytes, and sum (k + 128) q = sum k q + 128 sum q,
//! with sum q known per query block.
//!
//! Values stay f16 (or f32): their products with the softmax weights
//! have no integer form, as in llama.cpp, which widens quantized values.

use super::{attend_blocks, isa, KvElem, KvHead, Queries, Tiles};
use crate::quant::quantize_q8_0;
use std::ops::Range;

/// Positions per tile.
pub const TILE: usize = 16;
/// Values per quantization block.
pub const QK: usize = 32;
/// Bytes of one block of one tile: 16 positions x 32 codes.
const BLOCK_CODES: usize = TILE * QK;

/// One layer's keys in q8_0, every kv head of `kv_dim` values per
/// position (heads are whole blocks, so block i of a position is block
/// i % (head_dim / 32) of head i / (head_dim / 32)).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8KeyCache {
    /// Tile t: block i's 512 bytes at (t * blocks + i) * 512, its group j
    /// of 16 positions x 4 codes at 64 j, offset by 128.
    codes: Vec<u8>,
    /// Tile t: block i's 16 scales (one per position) at (t * blocks + i) * 16.
    scales: Vec<f32>,
    /// Blocks per position.
    blocks: usize,
    len: usize,
}

impl Q8KeyCache {
    /// Room for `cap` positions of `kv_dim` values (a multiple of 32).
    pub fn new(kv_dim: usize, cap: usize) -> Self {
        assert!(kv_dim.is_multiple_of(QK), "q8_0 keys: {kv_dim} values per position");
        let blocks = kv_dim / QK;
        let tiles = cap.div_ceil(TILE);
        Q8KeyCache {
            codes: Vec::with_capacity(tiles * blocks * BLOCK_CODES),
            scales: Vec::with_capacity(tiles * blocks * TILE),
            blocks,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the keys of the positions held take.
    pub fn bytes(&self) -> usize {
        self.len * self.blocks * (QK + std::mem::size_of::<f32>())
    }

    /// Index of code `i` (of block `b`) of position `p` in `codes`.
    #[inline(always)]
    fn code_at(&self, p: usize, b: usize, i: usize) -> usize {
        ((p / TILE) * self.blocks + b) * BLOCK_CODES + (i / 4) * (4 * TILE) + (p % TILE) * 4 + i % 4
    }

    #[inline(always)]
    fn scale_at(&self, p: usize, b: usize) -> usize {
        ((p / TILE) * self.blocks + b) * TILE + p % TILE
    }

    /// Append the keys of new positions (rows of `kv_dim` values).
    pub fn extend(&mut self, rows: &[f32]) {
        let kv_dim = self.blocks * QK;
        assert!(rows.len().is_multiple_of(kv_dim), "q8_0 keys: rows of {kv_dim}");
        for row in rows.chunks_exact(kv_dim) {
            let p = self.len;
            if p.is_multiple_of(TILE) {
                // A new tile; its codes start as 0 (offset 128) and its scales as 0.
                self.codes.resize(self.codes.len() + self.blocks * BLOCK_CODES, 128);
                self.scales.resize(self.scales.len() + self.blocks * TILE, 0.0);
            }
            let q = quantize_q8_0(row);
            for b in 0..self.blocks {
                for i in 0..QK {
                    let at = self.code_at(p, b, i);
                    self.codes[at] = (q.q[b * QK + i] as u8) ^ 0x80;
                }
                let at = self.scale_at(p, b);
                self.scales[at] = q.d[b];
            }
            self.len += 1;
        }
    }

    /// Forget everything from position `n` on (the lanes of the last tile
    /// past `n` go back to 0, so equal contents compare equal).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len);
        let tiles = n.div_ceil(TILE);
        self.codes.truncate(tiles * self.blocks * BLOCK_CODES);
        self.scales.truncate(tiles * self.blocks * TILE);
        for p in n..tiles * TILE {
            for b in 0..self.blocks {
                for i in 0..QK {
                    let at = self.code_at(p, b, i);
                    self.codes[at] = 128;
                }
                let at = self.scale_at(p, b);
                self.scales[at] = 0.0;
            }
        }
        self.len = n;
    }

    /// A copy of the first `n` positions with room for `cap`.
    pub fn prefix(&self, n: usize, cap: usize) -> Self {
        let mut c = Q8KeyCache::new(self.blocks * QK, cap);
        let tiles = n.min(self.len).div_ceil(TILE);
        c.codes.extend_from_slice(&self.codes[..tiles * self.blocks * BLOCK_CODES]);
        c.scales.extend_from_slice(&self.scales[..tiles * self.blocks * TILE]);
        c.len = tiles * TILE;
        c.truncate(n.min(self.len));
        c
    }

    /// Position `p`'s keys as the values they stand for (code x scale).
    pub fn key(&self, p: usize) -> Vec<f32> {
        assert!(p < self.len);
        let mut k = Vec::with_capacity(self.blocks * QK);
        for b in 0..self.blocks {
            let d = self.scales[self.scale_at(p, b)];
            k.extend((0..QK).map(|i| f32::from((self.codes[self.code_at(p, b, i)] ^ 0x80) as i8) * d));
        }
        k
    }

    /// kv head `h`'s keys (heads of `head_dim` values, a multiple of 32).
    pub fn head(&self, h: usize, head_dim: usize) -> Q8Keys<'_> {
        assert!(head_dim.is_multiple_of(QK) && (h + 1) * head_dim <= self.blocks * QK, "q8_0 keys: head {h}");
        Q8Keys { cache: self, first: h * head_dim / QK, blocks: head_dim / QK }
    }
}

/// One kv head's keys in a `Q8KeyCache`.
#[derive(Clone, Copy)]
pub struct Q8Keys<'a> {
    cache: &'a Q8KeyCache,
    /// The head's first block in a position.
    first: usize,
    /// Its blocks.
    blocks: usize,
}

impl Q8Keys<'_> {
    pub fn len(&self) -> usize {
        self.cache.len
    }

    pub fn is_empty(&self) -> bool {
        self.cache.len == 0
    }

    /// Block b's codes of tile t (512 bytes, offset by 128) and its 16 scales.
    #[inline(always)]
    fn tile_block(&self, t: usize, b: usize) -> (&[u8], &[f32]) {
        let i = t * self.cache.blocks + self.first + b;
        (&self.cache.codes[i * BLOCK_CODES..][..BLOCK_CODES], &self.cache.scales[i * TILE..][..TILE])
    }
}

/// Query rows in q8_0: row r's block b has codes `q[(r * blocks + b) *
/// 32..]`, scale `d[r * blocks + b]` and code sum `sums[..]`.
pub(super) struct Q8Rows {
    q: Vec<i8>,
    d: Vec<f32>,
    /// Only the VNNI build's offset (its keys' codes go in unsigned).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    sums: Vec<i32>,
    blocks: usize,
}

impl Q8Rows {
    pub(super) fn new(q: &[f32], head_dim: usize) -> Self {
        let a = quantize_q8_0(q);
        let sums = a.q.chunks_exact(QK).map(|c| c.iter().map(|&x| i32::from(x)).sum()).collect();
        Q8Rows { q: a.q, d: a.d, sums, blocks: head_dim / QK }
    }

    /// Row r's codes of block b.
    #[inline(always)]
    fn codes(&self, r: usize, b: usize) -> &[i8] {
        &self.q[(r * self.blocks + b) * QK..][..QK]
    }
}

/// The query rows `rows` of a block's scores, as many at a time as
/// `tile(r, rows left, row r's scores)` does (it returns how many).
#[inline(always)]
fn each_row_tile(
    rows: Range<usize>,
    dst: &mut [f32],
    stride: usize,
    mut tile: impl FnMut(usize, usize, &mut [f32]) -> usize,
) {
    let mut r = rows.start;
    while r < rows.end {
        let i = r - rows.start;
        r += tile(r, rows.end - r, &mut dst[i * stride..]);
    }
}

/// `row[p] = lanes[p - first]` for the positions of `lanes` (from `first`)
/// inside `ps`.
#[inline(always)]
fn store_inside(lanes: &[f32], first: usize, ps: &Range<usize>, row: &mut [f32]) {
    let (lo, hi) = (first.max(ps.start), (first + lanes.len()).min(ps.end));
    if lo < hi {
        row[lo..hi].copy_from_slice(&lanes[lo - first..hi - first]);
    }
}

/// The reference: `dst[(r - rows.start) * stride + p] = score(r, p)` for
/// the query rows `rows` and positions `ps`. A tile's 16 positions at
/// once, lane by lane as the SIMD builds go (plain loops over lanes, which
/// compilers vectorize where the target has no kernel of its own).
fn scores_scalar(
    q: &Q8Rows,
    keys: &Q8Keys,
    rows: Range<usize>,
    ps: Range<usize>,
    scale: f32,
    dst: &mut [f32],
    stride: usize,
) {
    for t in ps.start / TILE..ps.end.div_ceil(TILE) {
        for (i, r) in rows.clone().enumerate() {
            let mut s = [0f32; TILE];
            for b in 0..keys.blocks {
                let (codes, scales) = keys.tile_block(t, b);
                let mut isum = [0i32; TILE];
                for (group, x) in codes.chunks_exact(4 * TILE).zip(q.codes(r, b).chunks_exact(4)) {
                    let x = [x[0], x[1], x[2], x[3]].map(i32::from);
                    // Lanes innermost, each lane's 4 codes 4 apart: an
                    // interleaved load the vectorizer turns into one
                    // de-interleaving load (NEON `ld4`).
                    for (sum, k) in isum.iter_mut().zip(group.chunks_exact(4)) {
                        let k = [k[0], k[1], k[2], k[3]].map(|k| i32::from((k ^ 0x80) as i8));
                        *sum += k[0] * x[0] + k[1] * x[1] + k[2] * x[2] + k[3] * x[3];
                    }
                }
                let dq = q.d[r * keys.blocks + b];
                for ((s, &isum), &dk) in s.iter_mut().zip(&isum).zip(scales) {
                    *s += (dq * dk) * isum as f32;
                }
            }
            store_inside(&s.map(|s| s * scale), t * TILE, &ps, &mut dst[i * stride..]);
        }
    }
}

/// How a build computes a block's scores for q8_0 keys; the values are
/// its `Tiles`.
pub(super) trait Q8Scores {
    #[allow(clippy::too_many_arguments)]
    fn q8_scores(
        &self,
        q: &Q8Rows,
        keys: &Q8Keys,
        rows: Range<usize>,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    );
}

impl Q8Scores for super::Lanes {
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
        scores_scalar(q, keys, rows, ps, scale, dst, stride)
    }
}

/// Attention over q8_0 keys and the values of `values` (its `k` unused):
/// the blocked loop of `attend_blocked`, scores from `builds`.
#[inline(always)]
pub(super) fn attend_q8_with<V: KvElem, B: Tiles<V> + Tiles<f32> + Q8Scores>(
    build: &B,
    q: Queries,
    keys: Q8Keys,
    values: KvHead<V>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let rows = Q8Rows::new(q.q, values.len);
    let key_block = super::block_positions(values.len, std::mem::size_of::<V>());
    attend_blocks(build, q, &values, scores, out, key_block, |rs, _, ps, dst, stride| {
        build.q8_scores(&rows, &keys, rs, ps, scale, dst, stride)
    })
}

/// The baseline build of `attend_q8`.
pub fn attend_q8_scalar<V: KvElem>(
    q: Queries,
    keys: Q8Keys,
    values: KvHead<V>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_q8_with(&super::Lanes, q, keys, values, scale, scores, out)
}

/// Attention of the query rows `q` (as `attend`) over q8_0 keys and the
/// values of `values` (its `k` is not read), with the widest build this
/// CPU runs.
pub fn attend_q8<V: KvElem>(
    q: Queries,
    keys: Q8Keys,
    values: KvHead<V>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    check(&q, &keys, &values, out);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F, BW and VNNI.
        crate::kernels::Isa::Avx512Vnni => unsafe { super::x86::attend_q8_avx512(q, keys, values, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 and F16C.
        crate::kernels::Isa::Avx2 => unsafe { super::x86::attend_q8_avx2(q, keys, values, scale, scores, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: isa() checked the dot-product extension.
        crate::kernels::Isa::NeonDot => unsafe { aarch64::attend_q8_sdot(q, keys, values, scale, scores, out) },
        #[cfg(target_arch = "aarch64")]
        crate::kernels::Isa::Neon => aarch64::attend_q8_neon(q, keys, values, scale, scores, out),
        _ => attend_q8_scalar(q, keys, values, scale, scores, out),
    }
}

fn check<V>(q: &Queries, keys: &Q8Keys, values: &KvHead<V>, out: &[f32]) {
    let hd = values.len;
    assert!(hd > 0 && hd.is_multiple_of(QK) && hd <= super::MAX_HEAD_DIM, "q8_0 keys: head dimension {hd}");
    assert_eq!(keys.blocks * QK, hd, "q8_0 keys: key and value heads differ");
    assert!(values.offset + hd <= values.stride, "attention: the head is not inside a position's vector");
    assert_eq!(q.q.len(), out.len(), "attention: query and output differ in length");
    assert_eq!(q.q.len(), q.visible.len() * q.heads * hd, "attention: rows are not tokens x heads");
    let n_max = q.visible.iter().copied().max().unwrap_or(0);
    if n_max > 0 {
        assert!(n_max <= keys.len(), "attention: positions past the keys");
        assert!(
            (n_max - 1) * values.stride + values.offset + hd <= values.v.len(),
            "attention: positions past the cache"
        );
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    //! The integer scores with AVX-512 VNNI and with AVX2.
    use super::{each_row_tile, store_inside, Q8Keys, Q8Rows, QK, TILE};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows `rows` (R at a time, then the rest one by one) against the
    /// tiles holding `ps`: per block, 8 `vpdpbusd` per row give the 16
    /// positions' integer sums in 16 lanes; less 128 x the row's code sum,
    /// times (dq x dk), added in block order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn scores_avx512(
        q: &Q8Rows,
        keys: &Q8Keys,
        rows: Range<usize>,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) {
        // SAFETY (each tile): AVX-512 F, BW, VNNI (this function's own features).
        each_row_tile(rows, dst, stride, |r, left, dst| unsafe {
            match left {
                4.. => tile_rows_avx512::<4>(q, keys, r, ps.clone(), scale, dst, stride),
                2 | 3 => tile_rows_avx512::<2>(q, keys, r, ps.clone(), scale, dst, stride),
                _ => tile_rows_avx512::<1>(q, keys, r, ps.clone(), scale, dst, stride),
            }
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_rows_avx512<const R: usize>(
        q: &Q8Rows,
        keys: &Q8Keys,
        r0: usize,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) -> usize {
        assert!(ps.end <= keys.len() && dst.len() >= (R - 1) * stride + ps.end);
        let scale = _mm512_set1_ps(scale);
        for t in ps.start / TILE..ps.end.div_ceil(TILE) {
            let mut s = [_mm512_setzero_ps(); R];
            for b in 0..keys.blocks {
                let (codes, scales) = keys.tile_block(t, b);
                let mut acc = [_mm512_setzero_si512(); R];
                for j in 0..QK / 4 {
                    // SAFETY: group j's 64 bytes are inside the block's 512.
                    let k = unsafe { _mm512_loadu_si512(codes.as_ptr().add(64 * j).cast()) };
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let c = q.codes(r0 + i, b);
                        // SAFETY: 4 of the row's 32 codes.
                        let four = unsafe { c.as_ptr().add(4 * j).cast::<i32>().read_unaligned() };
                        *acc = _mm512_dpbusd_epi32(*acc, k, _mm512_set1_epi32(four));
                    }
                }
                // SAFETY: 16 scales.
                let dk = unsafe { _mm512_loadu_ps(scales.as_ptr()) };
                for (i, s) in s.iter_mut().enumerate() {
                    let at = (r0 + i) * q.blocks + b;
                    let isum = _mm512_sub_epi32(acc[i], _mm512_set1_epi32(128 * q.sums[at]));
                    let w = _mm512_mul_ps(_mm512_set1_ps(q.d[at]), dk);
                    *s = _mm512_add_ps(*s, _mm512_mul_ps(w, _mm512_cvtepi32_ps(isum)));
                }
            }
            // The lanes of this tile inside ps.
            let (lo, hi) = ((t * TILE).max(ps.start), (t * TILE + TILE).min(ps.end));
            let mask = (((1u32 << (hi - lo)) - 1) << (lo - t * TILE)) as u16;
            for (i, s) in s.iter().enumerate() {
                // SAFETY: only lanes lo..hi are written, at dst[i * stride + lo..hi]
                // (inside dst, asserted); masked-out lanes do not access memory.
                unsafe {
                    _mm512_mask_storeu_ps(
                        dst.as_mut_ptr().wrapping_add(i * stride + t * TILE),
                        mask,
                        _mm512_mul_ps(*s, scale),
                    )
                };
            }
        }
        R
    }

    /// `scores_avx512` without VNNI: each tile as two halves of 8
    /// positions; a group's products by `vpmaddubsw` of |q| with the key
    /// codes carrying q's sign (each pair at most 2 x 127 x 127, inside
    /// i16), then `vpmaddwd` by 1.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn scores_avx2(
        q: &Q8Rows,
        keys: &Q8Keys,
        rows: Range<usize>,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) {
        // SAFETY (each tile): AVX2 (this function's own feature).
        each_row_tile(rows, dst, stride, |r, left, dst| unsafe {
            match left {
                2.. => tile_rows_avx2::<2>(q, keys, r, ps.clone(), scale, dst, stride),
                _ => tile_rows_avx2::<1>(q, keys, r, ps.clone(), scale, dst, stride),
            }
        })
    }

    #[target_feature(enable = "avx2")]
    unsafe fn tile_rows_avx2<const R: usize>(
        q: &Q8Rows,
        keys: &Q8Keys,
        r0: usize,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) -> usize {
        assert!(ps.end <= keys.len() && dst.len() >= (R - 1) * stride + ps.end);
        let scale = _mm256_set1_ps(scale);
        let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
        for t in ps.start / TILE..ps.end.div_ceil(TILE) {
            for half in 0..2 {
                let mut s = [_mm256_setzero_ps(); R];
                for b in 0..keys.blocks {
                    let (codes, scales) = keys.tile_block(t, b);
                    let mut acc = [_mm256_setzero_si256(); R];
                    for j in 0..QK / 4 {
                        // SAFETY: 32 of group j's 64 bytes.
                        let k = unsafe { _mm256_loadu_si256(codes.as_ptr().add(64 * j + 32 * half).cast()) };
                        let k = _mm256_xor_si256(k, flip);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let c = q.codes(r0 + i, b);
                            // SAFETY: 4 of the row's 32 codes.
                            let four =
                                _mm256_set1_epi32(unsafe { c.as_ptr().add(4 * j).cast::<i32>().read_unaligned() });
                            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(four), _mm256_sign_epi8(k, four));
                            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                    // SAFETY: 8 of the 16 scales.
                    let dk = unsafe { _mm256_loadu_ps(scales.as_ptr().add(8 * half)) };
                    for (i, s) in s.iter_mut().enumerate() {
                        let at = (r0 + i) * q.blocks + b;
                        let w = _mm256_mul_ps(_mm256_set1_ps(q.d[at]), dk);
                        *s = _mm256_add_ps(*s, _mm256_mul_ps(w, _mm256_cvtepi32_ps(acc[i])));
                    }
                }
                for (i, s) in s.iter().enumerate() {
                    let mut lanes = [0f32; 8];
                    // SAFETY: 8 floats into lanes.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(*s, scale)) };
                    store_inside(&lanes, t * TILE + 8 * half, &ps, &mut dst[i * stride..]);
                }
            }
        }
        R
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) mod aarch64 {
    //! The integer scores with NEON: a group's 64 bytes are 4 registers of
    //! 4 positions, each against the row's 4 codes broadcast, summed 4
    //! products to an i32 lane (one position's) by `sdot` where the CPU has
    //! ARMv8.2's dot-product extension, else by widening multiplies and
    //! pairwise adds. The values are `Lanes`' (aarch64 has no attention
    //! tiles of its own yet).
    use super::super::{KvElem, KvHead, Lanes, Queries, Tiles};
    use super::{attend_q8_with, each_row_tile, store_inside, Q8Keys, Q8Rows, Q8Scores, QK, TILE};
    use crate::kernels::aarch64::{Dot, Sdot};
    use std::arch::aarch64::*;
    use std::ops::Range;

    /// acc + in each i32 lane the sum of the 4 products of the lane's 4
    /// bytes (one position's codes against the row's 4).
    trait GroupDot: Sized {
        /// # Safety
        /// The CPU has what the implementation uses (`WithSdot`: dotprod).
        unsafe fn dot(acc: int32x4_t, k: int8x16_t, x: int8x16_t) -> int32x4_t;

        /// `tile_rows` with this dot, built with what it needs.
        ///
        /// # Safety
        /// As `dot`.
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        unsafe fn rows<const R: usize>(
            q: &Q8Rows,
            keys: &Q8Keys,
            r0: usize,
            ps: Range<usize>,
            scale: f32,
            dst: &mut [f32],
            stride: usize,
        ) -> usize {
            // SAFETY: the caller's promise.
            unsafe { tile_rows::<Self, R>(q, keys, r0, ps, scale, dst, stride) }
        }
    }

    /// `sdot` sums each lane's own 4 products.
    struct WithSdot;

    impl GroupDot for WithSdot {
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, k: int8x16_t, x: int8x16_t) -> int32x4_t {
            // SAFETY: the caller's function enables dotprod.
            unsafe { Sdot::dot(acc, k, x) }
        }

        #[inline(always)]
        unsafe fn rows<const R: usize>(
            q: &Q8Rows,
            keys: &Q8Keys,
            r0: usize,
            ps: Range<usize>,
            scale: f32,
            dst: &mut [f32],
            stride: usize,
        ) -> usize {
            // SAFETY: the caller's promise (dotprod).
            unsafe { tile_rows_sdot::<R>(q, keys, r0, ps, scale, dst, stride) }
        }
    }

    /// `tile_rows` with `sdot`, in a function built for dotprod (the
    /// instruction must be assembled where that feature is on).
    #[target_feature(enable = "dotprod")]
    unsafe fn tile_rows_sdot<const R: usize>(
        q: &Q8Rows,
        keys: &Q8Keys,
        r0: usize,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) -> usize {
        // SAFETY: dotprod (this function's feature).
        unsafe { tile_rows::<WithSdot, R>(q, keys, r0, ps, scale, dst, stride) }
    }

    /// Plain NEON: products widened to i16 (each at most 127 x 127), then
    /// adjacent pairs, then adjacent pairs again, so lane j holds bytes 4 j..4 j + 4.
    struct Widening;

    impl GroupDot for Widening {
        #[inline(always)]
        unsafe fn dot(acc: int32x4_t, k: int8x16_t, x: int8x16_t) -> int32x4_t {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(k), vget_low_s8(x)));
            let hi = vpaddlq_s16(vmull_high_s8(k, x));
            vaddq_s32(acc, vpaddq_s32(lo, hi))
        }
    }

    /// `attend_q8` with `sdot` scores.
    ///
    /// # Safety
    /// The CPU must have the dot-product extension.
    #[target_feature(enable = "dotprod")]
    pub(in crate::kernels) unsafe fn attend_q8_sdot<V: KvElem>(
        q: Queries,
        keys: Q8Keys,
        values: KvHead<V>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        attend_q8_with(&Neon::<WithSdot>(std::marker::PhantomData), q, keys, values, scale, scores, out)
    }

    /// `attend_q8` with plain NEON scores (every aarch64 CPU).
    pub(in crate::kernels) fn attend_q8_neon<V: KvElem>(
        q: Queries,
        keys: Q8Keys,
        values: KvHead<V>,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        attend_q8_with(&Neon::<Widening>(std::marker::PhantomData), q, keys, values, scale, scores, out)
    }

    /// Scores by `D`; a `Neon<WithSdot>` is made only inside
    /// `attend_q8_sdot` (after dotprod was found).
    struct Neon<D>(std::marker::PhantomData<D>);

    impl<D, T: KvElem> Tiles<T> for Neon<D> {
        #[inline(always)]
        fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize) {
            Lanes.scores(q, kv, ps, scale, scores, stride)
        }

        #[inline(always)]
        fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]) {
            Lanes.values(w, stride, kv, ps, out)
        }
    }

    impl<D: GroupDot> Q8Scores for Neon<D> {
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
            // SAFETY (each tile): a Neon<WithSdot> exists only where dotprod
            // was checked; Widening is baseline NEON.
            each_row_tile(rows, dst, stride, |r, left, dst| unsafe {
                match left {
                    2.. => D::rows::<2>(q, keys, r, ps.clone(), scale, dst, stride),
                    _ => D::rows::<1>(q, keys, r, ps.clone(), scale, dst, stride),
                }
            })
        }
    }

    /// R rows against the tiles holding `ps`: per block, 8 groups x 4
    /// registers of `D::dot` per row, then (dq x dk) x isum added in block
    /// order, 4 positions per register.
    #[inline(always)]
    unsafe fn tile_rows<D: GroupDot, const R: usize>(
        q: &Q8Rows,
        keys: &Q8Keys,
        r0: usize,
        ps: Range<usize>,
        scale: f32,
        dst: &mut [f32],
        stride: usize,
    ) -> usize {
        assert!(ps.end <= keys.len() && dst.len() >= (R - 1) * stride + ps.end);
        let flip = vdupq_n_u8(0x80);
        for t in ps.start / TILE..ps.end.div_ceil(TILE) {
            let mut s = [[vdupq_n_f32(0.0); 4]; R];
            for b in 0..keys.blocks {
                let (codes, scales) = keys.tile_block(t, b);
                let mut acc = [[vdupq_n_s32(0); 4]; R];
                for j in 0..QK / 4 {
                    let mut k = [vdupq_n_s8(0); 4];
                    for (g, k) in k.iter_mut().enumerate() {
                        // SAFETY: 16 of group j's 64 bytes.
                        *k = vreinterpretq_s8_u8(veorq_u8(
                            unsafe { vld1q_u8(codes.as_ptr().add(64 * j + 16 * g)) },
                            flip,
                        ));
                    }
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let c = q.codes(r0 + i, b);
                        // SAFETY: 4 of the row's 32 codes.
                        let four = unsafe { c.as_ptr().add(4 * j).cast::<i32>().read_unaligned() };
                        let x = vreinterpretq_s8_s32(vdupq_n_s32(four));
                        for (a, k) in acc.iter_mut().zip(&k) {
                            // SAFETY: what D uses (the caller's promise).
                            *a = unsafe { D::dot(*a, *k, x) };
                        }
                    }
                }
                for (i, s) in s.iter_mut().enumerate() {
                    let dq = vdupq_n_f32(q.d[(r0 + i) * q.blocks + b]);
                    for (g, s) in s.iter_mut().enumerate() {
                        // SAFETY: 4 of the 16 scales.
                        let w = vmulq_f32(dq, unsafe { vld1q_f32(scales.as_ptr().add(4 * g)) });
                        *s = vaddq_f32(*s, vmulq_f32(w, vcvtq_f32_s32(acc[i][g])));
                    }
                }
            }
            for (i, s) in s.iter().enumerate() {
                let mut lanes = [0f32; TILE];
                for (g, s) in s.iter().enumerate() {
                    // SAFETY: 4 floats into lanes.
                    unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * g), vmulq_n_f32(*s, scale)) };
                }
                store_inside(&lanes, t * TILE, &ps, &mut dst[i * stride..]);
            }
        }
        R
    }
}

#[cfg(test)]
mod tests;
