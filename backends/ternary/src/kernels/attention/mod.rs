//! Attention of query rows that share one kv head: the rows of several
//! tokens (a prompt chunk, a cached turn's new tokens) and of the query
//! heads grouped on that kv head, against the keys and values in the
//! cache, causal per token.
//!
//! Every row gets exactly what the per-row loop gives (`attend_rows_lanes`,
//! the reference): scores q.k_p * scale (a dot in 16 running lanes added
//! pairwise, as `float::dot_lanes`), softmax (`exp_f32`, the sum in 16
//! lanes), and sum_p w_p v_p added in order of p (`float::axpy_lanes`).
//! Each product and its add are one fused multiply-add (`float::fma_f32`:
//! one rounding; half the operations of a multiply then an add, which the
//! tiles were bound by). So every build, every tile shape
//! and every split of the work into tasks gives the same bits, and a
//! cached turn computes what the uncached one computes.
//!
//! How it is fast (`attend_blocked`): positions go in blocks whose keys
//! (then values) fit in L1, and every row of the call runs over a block
//! before the next block is read, so the cache is read once per call,
//! not once per row (a 20-token turn over 1,000 cached positions read
//! each kv head 40 times from L3). Inside a block the SIMD builds work in
//! register tiles (`x86`): scores for 4 rows x 4 positions (2 x 8, 1 x
//! 16) as 16 accumulators reduced by one transposing add tree that keeps
//! the pairwise order, weighted values for up to 4 rows x 64 columns
//! kept in registers across the block. When more than one tile of rows
//! reads a block (a prompt chunk, a cached turn), the block is staged
//! first (`Stage`): copied, or widened from f16, once into an aligned f32
//! buffer, and the query rows copied to a 64-byte boundary, so the tiles'
//! loads never span two cache lines and f16 widens once per call, not
//! once per tile. A decoding token's heads are one tile, which reads the
//! cache as it is (f16 widened in the tile).

use super::float::{axpy_lanes, dot_lanes, exp_f32, sum_lanes, LANES};
use super::isa;
#[cfg(target_arch = "x86_64")]
use super::Isa;
use std::ops::Range;

mod q8;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use q8::{attend_q8, Q8KeyCache, Q8Keys};

/// Where one kv head's keys and values sit in the cache: position p's
/// vector is `k[p * stride + offset..][..len]` (likewise `v`). `T`: how
/// the cache stores them (f32, or f16 bits).
#[derive(Clone, Copy)]
pub struct KvHead<'a, T = f32> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
    pub offset: usize,
    pub len: usize,
}

impl<T> KvHead<'_, T> {
    #[inline(always)]
    fn key(&self, p: usize) -> &[T] {
        &self.k[p * self.stride + self.offset..][..self.len]
    }

    #[inline(always)]
    fn value(&self, p: usize) -> &[T] {
        &self.v[p * self.stride + self.offset..][..self.len]
    }
}

/// The query rows of one call: token t's `heads` rows (`kv.len` floats
/// each) follow token t - 1's in `q`, and token t sees positions
/// `0..visible[t]` (its own position + 1: causal).
#[derive(Clone, Copy)]
pub struct Queries<'a> {
    pub q: &'a [f32],
    pub heads: usize,
    pub visible: &'a [usize],
}

impl Queries<'_> {
    #[inline(always)]
    fn visible_of(&self, row: usize) -> usize {
        self.visible[row / self.heads]
    }
}

/// The widest head attention handles (BitNet models use 64 or 128).
pub const MAX_HEAD_DIM: usize = 256;

/// A KV cache element: f32 as it is, or f16 (its bits, halving the
/// cache's memory and the bytes long-context attention reads).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Whether the elements are f16 bits (the SIMD tiles widen them with
    /// one instruction per 8 or 16).
    const F16: bool;
    /// `src` as f32 (converted into `buf` when it has to be).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32];
    /// `src` as f32 into `dst` (as long).
    fn widen_into(src: &[Self], dst: &mut [f32]);
}

impl KvElem for f32 {
    const F16: bool = false;
    #[inline(always)]
    fn widen<'a>(src: &'a [f32], _: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        src
    }
    #[inline(always)]
    fn widen_into(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

/// f16 bits. Every f16 widens exactly, so attention over an f16 cache is
/// attention over the f32 values it holds, bit for bit.
impl KvElem for u16 {
    const F16: bool = true;
    #[inline(always)]
    fn widen<'a>(src: &'a [u16], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        for (o, h) in buf.iter_mut().zip(src) {
            *o = super::f16_bits_to_f32(*h);
        }
        &buf[..src.len()]
    }
    #[inline(always)]
    fn widen_into(src: &[u16], dst: &mut [f32]) {
        for (o, h) in dst.iter_mut().zip(src) {
            *o = super::f16_bits_to_f32(*h);
        }
    }
}

/// How a build computes the two halves of attention over one block of
/// positions; `attend_blocked` does the rest. Both must give exactly the
/// reference's bits for every row and position.
trait Tiles<T: KvElem> {
    /// `scores[r * stride + p] = (q_r . k_p) * scale` for the rows of `q`
    /// (`kv.len` floats each) and p in `ps`.
    fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize);
    /// `out_r += w[r * stride + p] * v_p` for the rows of `out` and p in
    /// `ps`, in order of p.
    fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]);
}

/// The reference's arithmetic, one row and one position at a time (the
/// baseline build, aarch64's, and any head size the SIMD tiles do not
/// take).
struct Lanes;

impl<T: KvElem> Tiles<T> for Lanes {
    #[inline(always)]
    fn scores(&self, q: &[f32], kv: &KvHead<T>, ps: Range<usize>, scale: f32, scores: &mut [f32], stride: usize) {
        let mut buf = [0f32; MAX_HEAD_DIM];
        for p in ps {
            let k = T::widen(kv.key(p), &mut buf);
            for (r, qr) in q.chunks_exact(kv.len).enumerate() {
                scores[r * stride + p] = dot_lanes(qr, k) * scale;
            }
        }
    }

    #[inline(always)]
    fn values(&self, w: &[f32], stride: usize, kv: &KvHead<T>, ps: Range<usize>, out: &mut [f32]) {
        let mut buf = [0f32; MAX_HEAD_DIM];
        for p in ps {
            let v = T::widen(kv.value(p), &mut buf);
            for (r, o) in out.chunks_exact_mut(kv.len).enumerate() {
                axpy_lanes(o, w[r * stride + p], v);
            }
        }
    }
}

/// Rows per tile of the blocked loop: the rows whose scores one register
/// tile computes together.
const TILE_ROWS: usize = 4;

/// Bytes of keys (then values) one block of positions holds: well inside
/// a 32 KiB L1 beside a tile's query rows and outputs.
const BLOCK_BYTES: usize = 16 << 10;

/// Softmax of one row's scores in place: the exponentials in one pass,
/// their sum in 16 running lanes (`sum_values`), the weights (e x 1/sum)
/// in another pass: one divide per row, not per weight (a vector divide
/// is several times a multiply's cost, and this pass ran once per score).
#[inline(always)]
fn softmax(s: &mut [f32]) {
    let m = max_values(s);
    for x in s.iter_mut() {
        *x = exp_f32(*x - m);
    }
    let inverse = 1.0 / sum_values(s);
    for x in s.iter_mut() {
        *x *= inverse;
    }
}

/// The largest of `x` (NaN ignored, -inf when empty) in 16 running lanes:
/// the maximum does not depend on the order it is taken in, and a fold
/// through one running value stays scalar (f32::max's NaN rule keeps the
/// compiler from vectorizing it). In lanes it vectorizes; softmax's time
/// did not measurably move (its exponentials dominate).
#[inline(always)]
pub(crate) fn max_values(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let c = x.chunks_exact(LANES);
    let tail = c.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for v in c {
        for i in 0..LANES {
            acc[i] = acc[i].max(v[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// sum x_i in 16 running lanes, then `sum_lanes`.
#[inline(always)]
fn sum_values(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let c = x.chunks_exact(LANES);
    let tail: f32 = c.remainder().iter().sum();
    for v in c {
        for i in 0..LANES {
            acc[i] += v[i];
        }
    }
    sum_lanes(acc) + tail
}

/// The reference: each row alone, position by position (what the model
/// ran before tiles; the tests hold every build to its bits).
#[cfg(test)]
pub(crate) fn attend_rows_lanes<T: KvElem>(q: Queries, kv: KvHead<T>, scale: f32, out: &mut [f32]) {
    let hd = kv.len;
    let mut buf = [0f32; MAX_HEAD_DIM];
    for (r, (qr, o)) in q.q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let n = q.visible_of(r);
        let mut s: Vec<f32> = (0..n).map(|p| dot_lanes(qr, T::widen(kv.key(p), &mut buf)) * scale).collect();
        softmax(&mut s);
        o.fill(0.0);
        for (p, w) in s.iter().enumerate() {
            axpy_lanes(o, *w, T::widen(kv.value(p), &mut buf));
        }
    }
}

/// Attention with blocks of positions shared by all rows (see the module
/// notes); `tiles` does each block's arithmetic.
#[inline(always)]
fn attend_blocked<T: KvElem>(
    tiles: &(impl Tiles<T> + Tiles<f32>),
    q: Queries,
    kv: KvHead<T>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = kv.len;
    if !staged(&q, hd) {
        let block = block_positions(hd, std::mem::size_of::<T>());
        return attend_blocks(tiles, q, &kv, scores, out, block, |_, q, ps, dst, stride| {
            Tiles::<T>::scores(tiles, q, &kv, ps, scale, dst, stride)
        });
    }
    let n_max = q.visible.iter().copied().max().unwrap_or(0);
    let mut keys = Stage::new(n_max);
    attend_blocks(tiles, q, &kv, scores, out, Stage::positions(hd), |_, q, ps, dst, stride| {
        let (local, first) = keys.take(ps, hd, |p| kv.key(p));
        Tiles::<f32>::scores(tiles, q, &keys.head(hd), local, scale, &mut dst[first..], stride)
    })
}

/// Whether a call stages each block of keys and values (`Stage`): when
/// more than one tile of rows reads it. A decoding token's heads are one
/// tile, which reads each vector once: copying it first would only add
/// a pass.
#[inline(always)]
fn staged(q: &Queries, hd: usize) -> bool {
    q.q.len() / hd > TILE_ROWS
}

/// One block of positions' keys or values as f32, `hd` apart from a
/// 64-byte boundary: f16 widened once per block instead of once per tile
/// of rows, and every vector aligned (the cache's are where the allocator
/// put them, mostly 16 bytes past a line: each 64-byte load then spans
/// two lines, which cost the score tiles a fifth of their speed).
#[repr(C, align(64))]
struct Stage {
    buf: [f32; BLOCK_BYTES / 4],
    held: Range<usize>,
    /// The call's positions end here.
    end: usize,
}

impl Stage {
    fn new(end: usize) -> Self {
        Stage { buf: [0.0; BLOCK_BYTES / 4], held: 0..0, end }
    }

    /// Positions per staged block.
    fn positions(hd: usize) -> usize {
        block_positions(hd, std::mem::size_of::<f32>())
    }

    /// Positions `ps` (inside one block of `positions`) of the vectors
    /// `vector(p)`, staging their block unless it is the one held.
    /// Returns `ps` relative to the stage and where it starts.
    #[inline(always)]
    fn take<'a, T: KvElem>(
        &mut self,
        ps: Range<usize>,
        hd: usize,
        vector: impl Fn(usize) -> &'a [T],
    ) -> (Range<usize>, usize) {
        if ps.start < self.held.start || ps.end > self.held.end {
            self.held = ps.start..(ps.start + Self::positions(hd)).min(self.end);
            for (p, w) in self.held.clone().zip(self.buf.chunks_exact_mut(hd)) {
                T::widen_into(vector(p), w);
            }
        }
        (ps.start - self.held.start..ps.end - self.held.start, self.held.start)
    }

    /// The staged block as a kv head (keys and values both: a stage holds
    /// one or the other).
    fn head(&self, hd: usize) -> KvHead<'_, f32> {
        let held = &self.buf[..self.held.len() * hd];
        KvHead { k: held, v: held, stride: hd, offset: 0, len: hd }
    }
}

/// Positions per block whose vectors of `hd` elements of `bytes` each fit
/// `BLOCK_BYTES` (a multiple of 16, at least 16).
fn block_positions(hd: usize, bytes: usize) -> usize {
    (BLOCK_BYTES / (hd * bytes)).max(LANES) / LANES * LANES
}

/// `attend_blocked` with the scores of a block from `scores_of(rows,
/// their queries, positions, the rows' scores, their stride)` (q8_0 keys
/// have their own) and the values (`kv.v`) from `tiles`. A staged call
/// (`staged`) hands `scores_of` a copy of the queries from a 64-byte
/// boundary (after the scores in `scores`): 6% of a cached turn's call.
#[inline(always)]
fn attend_blocks<T: KvElem>(
    tiles: &(impl Tiles<T> + Tiles<f32>),
    q: Queries,
    kv: &KvHead<T>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    key_block: usize,
    mut scores_of: impl FnMut(Range<usize>, &[f32], Range<usize>, &mut [f32], usize),
) {
    let hd = kv.len;
    let rows = q.q.len() / hd;
    let n_max = q.visible.iter().copied().max().unwrap_or(0);
    let stage = staged(&q, hd);
    // Grown, never cleared: every score a row reads (its positions below
    // `visible`) is written first, so zeroing 300 KB per call of a cached
    // turn bought nothing.
    let need = rows * n_max + if stage { q.q.len() + LANES } else { 0 };
    if scores.len() < need {
        scores.resize(need, 0.0);
    }
    out.fill(0.0);
    if n_max == 0 {
        return;
    }
    let (scores, rest) = scores.split_at_mut(rows * n_max);
    let queries = if stage {
        let skip = rest.as_ptr().align_offset(64).min(LANES);
        let aligned = &mut rest[skip..][..q.q.len()];
        aligned.copy_from_slice(q.q);
        &*aligned
    } else {
        q.q
    };
    let block = if stage { Stage::positions(hd) } else { block_positions(hd, std::mem::size_of::<T>()) };
    let tiles_of = || (0..rows).step_by(TILE_ROWS).map(move |r0| r0..(r0 + TILE_ROWS).min(rows));
    let reach = |rs: &Range<usize>| rs.clone().map(|r| q.visible_of(r)).max().unwrap_or(0);
    let common = |rs: &Range<usize>| rs.clone().map(|r| q.visible_of(r)).min().unwrap_or(0);
    for p0 in (0..n_max).step_by(key_block) {
        let p1 = (p0 + key_block).min(n_max);
        for rs in tiles_of() {
            // Scores past a row's own reach (a later token's positions,
            // in a tile spanning two tokens) are computed and not used.
            let hi = p1.min(reach(&rs));
            if hi > p0 {
                let dst = &mut scores[rs.start * n_max..rs.end * n_max];
                scores_of(rs.clone(), &queries[rs.start * hd..rs.end * hd], p0..hi, dst, n_max);
            }
        }
    }
    for r in 0..rows {
        softmax(&mut scores[r * n_max..][..q.visible_of(r)]);
    }
    let mut values = stage.then(|| Stage::new(n_max));
    for p0 in (0..n_max).step_by(block) {
        let p1 = (p0 + block).min(n_max);
        for rs in tiles_of() {
            // Positions every row of the tile sees, then each row's own
            // rest of the block: in order of p for every row either way.
            let shared = common(&rs);
            let hi = p1.min(shared);
            if hi > p0 {
                let w = &scores[rs.start * n_max..rs.end * n_max];
                add_values(tiles, values.as_mut(), kv, w, n_max, p0..hi, &mut out[rs.start * hd..rs.end * hd]);
            }
            for r in rs.clone() {
                let (lo, hi) = (p0.max(shared), p1.min(q.visible_of(r)));
                if hi > lo {
                    let w = &scores[r * n_max..(r + 1) * n_max];
                    add_values(tiles, values.as_mut(), kv, w, n_max, lo..hi, &mut out[r * hd..(r + 1) * hd]);
                }
            }
        }
    }
}

/// out rows += their weights (rows of `w`, `stride` apart) x the values
/// of `ps`, through `stage` when there is one. (A function, not a closure:
/// an inlined function keeps the SIMD build's target features; a closure
/// was compiled apart, without them.)
#[inline(always)]
fn add_values<T: KvElem>(
    tiles: &(impl Tiles<T> + Tiles<f32>),
    stage: Option<&mut Stage>,
    kv: &KvHead<T>,
    w: &[f32],
    stride: usize,
    ps: Range<usize>,
    out: &mut [f32],
) {
    match stage {
        Some(stage) => {
            let (local, first) = stage.take(ps, kv.len, |p| kv.value(p));
            Tiles::<f32>::values(tiles, &w[first..], stride, &stage.head(kv.len), local, out)
        }
        None => Tiles::<T>::values(tiles, w, stride, kv, ps, out),
    }
}

/// The baseline build of `attend_blocked` (and the test's reference of
/// the blocking itself).
pub fn attend_scalar<T: KvElem>(q: Queries, kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_blocked(&Lanes, q, kv, scale, scores, out)
}

/// Attention of the query rows `q` over one kv head into `out` (the same
/// layout as `q`), with the widest build this CPU runs. `scores`: scratch
/// (rows x positions), kept by the caller between calls.
#[inline]
pub fn attend<T: KvElem>(q: Queries, kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    check(&q, &kv, out);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { x86::attend_avx512(q, kv, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2 and F16C.
        Isa::Avx2 => unsafe { x86::attend_avx2(q, kv, scale, scores, out) },
        _ => attend_scalar(q, kv, scale, scores, out),
    }
}

/// The shapes every build relies on, checked once per call.
fn check<T>(q: &Queries, kv: &KvHead<T>, out: &[f32]) {
    let hd = kv.len;
    assert!(hd > 0 && hd <= MAX_HEAD_DIM, "head dimension {hd} not in 1..={MAX_HEAD_DIM}");
    assert!(kv.offset + hd <= kv.stride, "attention: the head is not inside a position's vector");
    assert_eq!(q.q.len(), out.len(), "attention: query and output differ in length");
    assert_eq!(q.q.len(), q.visible.len() * q.heads * hd, "attention: rows are not tokens x heads");
    let n_max = q.visible.iter().copied().max().unwrap_or(0);
    if n_max > 0 {
        let last = (n_max - 1) * kv.stride + kv.offset + hd;
        assert!(last <= kv.k.len() && last <= kv.v.len(), "attention: positions past the cache");
    }
}

#[cfg(test)]
mod tests;
