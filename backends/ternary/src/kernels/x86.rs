//! The x86_64 kernels (AVX2, AVX-VNNI, AVX-512 VNNI, AMX), each equal to its
//! scalar reference in `super` (tested there). Only `super`'s dispatchers
//! call them, after `isa()` has checked the CPU.

use half::f16;

mod acts;
mod amx;
mod float;
mod vocab;
pub(super) use acts::*;
pub(super) use amx::{amx_permitted, grouped_rows_tokens_amx, I2sSums, StagedTokens, Tq2Sums};
pub(super) use float::*;
pub(super) use vocab::*;

use super::vocab::{Q6K_BLOCK, Q8_0_BLOCK};
use super::{dot_f16_scalar, first_n, prefetch, prefetch_distance};

/// Rows a TQ2_0 AVX-512 step finishes together, one per f32 lane.
const TQ2_LANES: usize = 16;

/// I2_S with AVX2: a block's four planes through `planes_dot` (their
/// `vpmaddubsw` pairs added as i16, widened once).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_i2s_avx2(row: &[u8], q: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
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
        let mut xs = [_mm256_setzero_si256(); 4];
        for (k, x) in xs.iter_mut().enumerate() {
            *x = _mm256_loadu_si256(qb.as_ptr().add(k * 32).cast());
        }
        acc = _mm256_add_epi32(acc, planes_dot::<4, false>(&planes, xs));
    }
    hsum_i32(acc)
}

/// I2_S with AVX-VNNI: one vpdpbusd per plane, the planes left in place
/// (one AND each, no shift: plane k's accumulator holds 4^(3 - k) times
/// its dots, an exact multiple shifted back once at the end).
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn dot_i2s_avxvnni(row: &[u8], q: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let masks = [0xc0u8, 0x30, 0x0c, 0x03].map(|m| _mm256_set1_epi8(m as i8));
    let mut acc = [_mm256_setzero_si256(); 4];
    let pf = prefetch_distance();
    for (i, (block, qb)) in row.chunks_exact(32).zip(q.chunks_exact(128)).enumerate() {
        // SAFETY (all loads): block has 32 bytes, qb 128.
        let w = _mm256_loadu_si256(block.as_ptr().cast());
        if i % 2 == 0 {
            prefetch(block.as_ptr(), pf);
        }
        for (k, (mask, acc)) in masks.iter().zip(acc.iter_mut()).enumerate() {
            let a = _mm256_loadu_si256(qb.as_ptr().add(k * 32).cast());
            *acc = _mm256_dpbusd_avx_epi32(*acc, _mm256_and_si256(w, *mask), a);
        }
    }
    let high = _mm256_add_epi32(_mm256_srai_epi32::<6>(acc[0]), _mm256_srai_epi32::<4>(acc[1]));
    hsum_i32(_mm256_add_epi32(high, _mm256_add_epi32(_mm256_srai_epi32::<2>(acc[2]), acc[3])))
}

#[target_feature(enable = "avx2")]
pub(super) unsafe fn hsum_i32(v: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn dot_i2s_vnni(row: &[u8], q: &[i8]) -> i32 {
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

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn dot_i2s_vnni_interleaved(row: &[u8], qi: &[i8], q: &[i8]) -> i32 {
    let mut out = [0];
    i2s_rows_vnni_interleaved(row, row.len(), qi, q, &mut out);
    out[0]
}

/// `dot_i2s_vnni_interleaved` for each `row_bytes` row of `rows`: the loop
/// over rows inside the AVX-512 function, so a row costs no dispatch, call
/// or prefetch-setting lookup (rows are 640 bytes in 2B4T's attention).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn i2s_rows_vnni_interleaved(rows: &[u8], row_bytes: usize, qi: &[i8], q: &[i8], out: &mut [i32]) {
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

#[target_feature(enable = "avx2")]
pub(super) unsafe fn tq2_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
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

/// Lane i of the result: the sum of the 16 lanes of `v[i]` (16 horizontal
/// sums at once). The add tree pairs vectors as they come: after level 1
/// each 128-bit lane of t[k] holds v[2k] and v[2k+1]'s sums of lanes 0+2
/// and 1+3; after level 2, of u[k], v[4k..4k+4] whole per 128-bit lane;
/// levels 3 and 4 add the 128-bit lanes, leaving v[i]'s sum in lane i.
/// Integer adds: the same sums as any other order.
#[inline(always)]
unsafe fn lane_sums_x16(v: &[std::arch::x86_64::__m512i; 16]) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let t: [__m512i; 8] = std::array::from_fn(|k| {
        let (x, y) = (v[2 * k], v[2 * k + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y))
    });
    let pairs = |x: __m512i, y: __m512i| _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    let u = [pairs(t[0], t[1]), pairs(t[2], t[3]), pairs(t[4], t[5]), pairs(t[6], t[7])];
    let lanes = |x: __m512i, y: __m512i| {
        _mm512_add_epi32(_mm512_shuffle_i32x4(x, y, 0b10_00_10_00), _mm512_shuffle_i32x4(x, y, 0b11_01_11_01))
    };
    lanes(lanes(u[0], u[1]), lanes(u[2], u[3]))
}

/// Prefetch (`pf` ahead) every line a `BLOCK`-byte block touches: rows
/// read across are 16 streams, too many for the hardware prefetcher, and a
/// block may start near the end of a line (66-byte TQ2_0 blocks) or span
/// four (Q6_K's 210 bytes). Blocks start at even addresses (even block
/// sizes in tensors aligned to 32 bytes), so a line asked for at
/// `off` < `BLOCK` - 2 is one the last byte's line does not already cover:
/// a TQ2_0 block takes 2 prefetches, not 3 (each one a load slot; fewer
/// made the kernel 3% faster from memory).
#[inline(always)]
fn prefetch_block<const BLOCK: usize>(block: *const u8, pf: Option<usize>) {
    for off in (0..BLOCK - 2).step_by(64) {
        prefetch(block.wrapping_add(off), pf);
    }
    prefetch(block.wrapping_add(BLOCK - 1), pf);
}

/// The f16 scales of one block column of up to 16 rows (`BLOCK`-byte
/// blocks ending with their scale, rows `row_bytes` apart), gathered in one
/// instruction as 16 f32 lanes, lane r = row r; lanes of rows past the
/// group's end stay 0 and are never read.
#[derive(Clone, Copy)]
struct BlockScales {
    /// Byte offset of the 4 bytes ending row r's block 0 (its scale in the high half).
    scale_at: std::arch::x86_64::__m512i,
    live: std::arch::x86_64::__mmask16,
    block: usize,
}

impl BlockScales {
    #[inline(always)]
    unsafe fn new(row_bytes: usize, block: usize, rows: usize) -> BlockScales {
        use std::arch::x86_64::*;
        let lane_ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let scale_at = _mm512_add_epi32(
            _mm512_mullo_epi32(lane_ids, _mm512_set1_epi32(row_bytes as i32)),
            _mm512_set1_epi32(block as i32 - 4),
        );
        let live = if rows >= TQ2_LANES { !0 } else { (1u16 << rows) - 1 };
        BlockScales { scale_at, live, block }
    }

    /// Block b's scales of the group starting at `group` (its live rows
    /// must hold block b).
    #[inline(always)]
    unsafe fn gather(&self, group: *const u8, b: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let at_b = _mm512_add_epi32(self.scale_at, _mm512_set1_epi32((b * self.block) as i32));
        // SAFETY: only live lanes (rows < n) are read, each inside its row (the caller's promise).
        let words = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), self.live, at_b, group.cast());
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(words, 16)))
    }
}

/// The first `out.len()` lanes of `acc` into `out`.
#[inline(always)]
unsafe fn store_lanes(acc: std::arch::x86_64::__m512, out: &mut [f32]) {
    let mut lanes = [0f32; TQ2_LANES];
    std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    out.copy_from_slice(&lanes[..out.len()]);
}

/// One group of up to 16 rows as the file holds them, as the AVX-512
/// blockwise kernels read them: `BLOCK`-byte blocks, each ending with its
/// f16 scale, row after row. Read across, they are 16 streams: each block
/// is prefetched one group ahead and the scales come by a gather.
struct FileRows<const BLOCK: usize> {
    group: *const u8,
    row_bytes: usize,
    n: usize,
    scales: BlockScales,
    pf: Option<usize>,
}

impl<const BLOCK: usize> FileRows<BLOCK> {
    /// `group`: up to 16 whole rows of `row_bytes`.
    #[inline(always)]
    unsafe fn new(group: &[u8], row_bytes: usize) -> Self {
        let n = group.len() / row_bytes;
        debug_assert!(n <= TQ2_LANES && group.len() == n * row_bytes);
        let pf = prefetch_distance().map(|_| TQ2_LANES * row_bytes);
        FileRows { group: group.as_ptr(), row_bytes, n, scales: BlockScales::new(row_bytes, BLOCK, n), pf }
    }

    /// Rows in the group (1 to 16).
    #[inline(always)]
    fn rows(&self) -> usize {
        self.n
    }

    /// Block b of row r < `rows()`, prefetching its lines a group ahead.
    #[inline(always)]
    unsafe fn block(&self, r: usize, b: usize) -> *const u8 {
        let block = self.group.add(r * self.row_bytes + b * BLOCK);
        prefetch_block::<BLOCK>(block, self.pf);
        block
    }

    /// Block b's scales as 16 f32 lanes, lane r = row r (0 past `rows()`).
    #[inline(always)]
    unsafe fn scales(&self, b: usize) -> std::arch::x86_64::__m512 {
        self.scales.gather(self.group, b)
    }
}

/// One group of rows of a format with a scale per 256-weight block
/// (TQ2_0, TQ1_0, Q6_K) against Q8K activations, with AVX-512:
/// `partial(block, b)` gives 16 lanes whose sum is the code dot of `block`
/// (block b of some row); 16 lanes of results, lane r = row r.
///
/// Block by block: block b of the rows gives 16 vectors of partial sums,
/// which one transposing add tree turns into one vector holding the rows'
/// block dots (lane r = row r), and their scales of block b come in as one
/// vector. The finish (per block: (dot - bsum) * (scale * d), summed in
/// block order; no bsum where `bsums` is empty, as for Q6_K) then runs on
/// the 16 rows at once, one row per lane: the same operations in the same
/// order per row as `ternary_blocks_finish`, so the same bits. Per block
/// and row that is a sixth of an add tree where there was a horizontal
/// sum, a scalar f16 conversion and two scratch stores.
#[inline(always)]
unsafe fn blockwise_group_avx512<const BLOCK: usize, const UNROLLED: bool>(
    g: &FileRows<BLOCK>,
    blocks: usize,
    bsums: &[i32],
    d: &[f32],
    partial: &impl Fn(*const u8, usize) -> std::arch::x86_64::__m512i,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_si512();
    let n = g.rows();
    let mut acc = _mm512_setzero_ps();
    for (b, &d_b) in d.iter().enumerate().take(blocks) {
        // SAFETY: block b of row r < n is inside the group (the caller's promise).
        let at = |r: usize| partial(g.block(r, b), b);
        let v: [__m512i; TQ2_LANES] = if UNROLLED && n == TQ2_LANES {
            // A whole group (every group but a matrix's last): the
            // rows unrolled, so the 16 sums stay in registers (a loop
            // to n kept them on the stack: a store, 16 zeroing stores
            // and 16 loads per block column). For TQ2_0 that is 17%
            // more weights a second in L1, the same from memory; Q6_K,
            // whose unpacking needs 8 more registers, read 8% slower
            // from memory unrolled, so it keeps the loop.
            std::array::from_fn(at)
        } else {
            let mut v = [zero; TQ2_LANES];
            for (r, v) in v.iter_mut().enumerate().take(n) {
                *v = at(r);
            }
            v
        };
        let dots = lane_sums_x16(&v);
        let scales = g.scales(b);
        let dot = match bsums.get(b) {
            Some(&bsum) => _mm512_sub_epi32(dots, _mm512_set1_epi32(bsum)),
            None => dots,
        };
        let scale = _mm512_mul_ps(scales, _mm512_set1_ps(d_b));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
    }
    acc
}

/// `blockwise_group_avx512` over rows as the file holds them (`BLOCK`
/// bytes per block, ending with its f16 scale), 16 at a time.
#[inline(always)]
unsafe fn blockwise_rows_avx512<const BLOCK: usize, const UNROLLED: bool>(
    rows: &[u8],
    row_bytes: usize,
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
    partial: impl Fn(*const u8, usize) -> std::arch::x86_64::__m512i,
) {
    let blocks = row_bytes / BLOCK;
    for (group, out) in rows.chunks(TQ2_LANES * row_bytes).zip(out.chunks_mut(TQ2_LANES)) {
        let g = FileRows::<BLOCK>::new(group, row_bytes);
        store_lanes(blockwise_group_avx512::<_, UNROLLED>(&g, blocks, bsums, d, &partial), out);
    }
}

/// 64 bytes' four 2-bit planes (plane p: bits 2p of each byte) with
/// AVX-512. For a TQ2_0 block as the file holds it, plane l of its low
/// half pairs with activations 32l.., of its high half with 128 + 32l..
/// (`interleave`'s layout, the same as I2_S's); for a regrouped line l,
/// dword lane r of plane p holds weights 16 l + 4 p.. of row r.
#[inline(always)]
unsafe fn tq2_planes_avx512(block: *const u8) -> [std::arch::x86_64::__m512i; 4] {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(3);
    let w = _mm512_loadu_si512(block.cast());
    [
        _mm512_and_si512(w, mask),
        _mm512_and_si512(_mm512_srli_epi16(w, 2), mask),
        _mm512_and_si512(_mm512_srli_epi16(w, 4), mask),
        _mm512_and_si512(_mm512_srli_epi16(w, 6), mask),
    ]
}

/// 64 bytes' four 2-bit planes left in place (plane p: the byte's bits 2p
/// and 2p + 1, so 4^p times the codes): one AND each, against
/// `tq2_planes_avx512`'s shift and AND, for kernels whose chains keep the
/// planes apart and scale them back once (`chains_sum`).
#[inline(always)]
unsafe fn tq2_planes_in_place_avx512(block: *const u8) -> [std::arch::x86_64::__m512i; 4] {
    use std::arch::x86_64::*;
    let w = _mm512_loadu_si512(block.cast());
    [
        _mm512_and_si512(w, _mm512_set1_epi8(0x03)),
        _mm512_and_si512(w, _mm512_set1_epi8(0x0c)),
        _mm512_and_si512(w, _mm512_set1_epi8(0x30)),
        _mm512_and_si512(w, _mm512_set1_epi8(0xc0u8 as i8)),
    ]
}

/// One TQ2_0 block's 16 partial dot lanes against interleaved activations
/// `a` (256 bytes) with VNNI.
#[inline(always)]
unsafe fn tq2_partial_vnni(block: *const u8, a: *const i8) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let c = tq2_planes_avx512(block);
    // One chain: 16 rows of independent chains hide its latency, and it
    // saves the add of two.
    let acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[0], _mm512_loadu_si512(a.cast()));
    let acc = _mm512_dpbusd_epi32(acc, c[1], _mm512_loadu_si512(a.add(64).cast()));
    let acc = _mm512_dpbusd_epi32(acc, c[2], _mm512_loadu_si512(a.add(128).cast()));
    _mm512_dpbusd_epi32(acc, c[3], _mm512_loadu_si512(a.add(192).cast()))
}

/// One block of a regrouped group (`super::grouped`: 16 lines at `base`,
/// dword lane r of each holding 4 weights of row r, plane p at bits 2p)
/// against N tokens' 256 activations at `a` (file order), summed into
/// each token's 8 chains of lanes (lane r = row r). Each line is unpacked
/// once and each plane meets one broadcast dword of each token's
/// activations in one `vpdpbusd`: no add tree, so a line costs 4
/// unpacking operations (the planes left in place: chain p holds 4^p
/// times its dots, `chains_sum` scales it back) and 4N products.
#[inline(always)]
unsafe fn lanes_block<const N: usize>(
    base: *const u8,
    a: [*const i8; N],
    s: &mut [[std::arch::x86_64::__m512i; 8]; N],
    pf: Option<usize>,
) {
    use std::arch::x86_64::*;
    // Per token, 8 chains (4 planes x 2 for one token, whose 4 chains
    // alone would wait on vpdpbusd's latency; more tokens give enough).
    // Lines in pairs, so each line's chains are fixed indices (kept in
    // registers; an index by line number put them on the stack).
    for l in (0..16).step_by(2) {
        for h in 0..2 {
            let line = base.add(64 * (l + h));
            prefetch(line, pf);
            let c = tq2_planes_in_place_avx512(line);
            let chain = if N == 1 { 4 * h } else { 0 };
            for t in 0..N {
                let a = a[t].add(16 * (l + h));
                for (p, c) in c.iter().enumerate() {
                    let x = _mm512_set1_epi32(std::ptr::read_unaligned(a.add(4 * p).cast::<i32>()));
                    s[t][chain + p] = _mm512_dpbusd_epi32(s[t][chain + p], *c, x);
                }
            }
        }
    }
}

/// A token's chains summed: 16 lanes, lane r = row r. Chain c holds
/// plane c % 4 in place (`lanes_block`), 4^(c % 4) times its dots: an
/// exact multiple, so the arithmetic shift back is exact.
#[inline(always)]
unsafe fn chains_sum<const N: usize>(s: &[std::arch::x86_64::__m512i; 8]) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let plane = |p: usize| if N == 1 { _mm512_add_epi32(s[p], s[4 + p]) } else { s[p] };
    let low = _mm512_add_epi32(plane(0), _mm512_srai_epi32::<2>(plane(1)));
    let high = _mm512_add_epi32(_mm512_srai_epi32::<4>(plane(2)), _mm512_srai_epi32::<6>(plane(3)));
    _mm512_add_epi32(low, high)
}

/// One regrouped TQ2_0 group (`super::grouped`: 16 rows, lanes = rows)
/// against N tokens' activations in file order: per token, 16 lanes of
/// results, lane r = row r (`lanes_block` per block). The finish per
/// block ((dot - bsum) * (scale * d), summed in block order) is
/// `ternary_blocks_finish`'s, one row per lane: the same bits.
#[inline(always)]
unsafe fn tq2_lanes_group<const N: usize>(
    group: *const u8,
    blocks: usize,
    qs: [&[i8]; N],
    bsums: [&[i32]; N],
    d: [&[f32]; N],
    pf: Option<usize>,
) -> [std::arch::x86_64::__m512; N] {
    use std::arch::x86_64::*;
    let codes = group.add(super::grouped::scales_bytes(blocks));
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..blocks {
        let mut s = [[_mm512_setzero_si512(); 8]; N];
        let a: [*const i8; N] = std::array::from_fn(|t| qs[t].as_ptr().add(b * 256));
        lanes_block::<N>(codes.add(b * 1024), a, &mut s, pf);
        let scales = _mm512_cvtph_ps(_mm256_loadu_si256(group.add(32 * b).cast()));
        for t in 0..N {
            let dot = _mm512_sub_epi32(chains_sum::<N>(&s[t]), _mm512_set1_epi32(bsums[t][b]));
            let scale = _mm512_mul_ps(scales, _mm512_set1_ps(d[t][b]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
        }
    }
    acc
}

/// One regrouped I2_S group (`super::grouped_i2s`: 16 rows, lanes = rows,
/// no scales) against N tokens' activations in file order: per token, the
/// 16 rows' integer dots (codes 0..=2 times activations), lane r = row r.
/// The chains run across every block: I2_S has one scale per matrix.
#[inline(always)]
unsafe fn i2s_lanes_group<const N: usize>(
    group: *const u8,
    blocks: usize,
    qs: [&[i8]; N],
    pf: Option<usize>,
) -> [std::arch::x86_64::__m512i; N] {
    let mut s = [[std::arch::x86_64::_mm512_setzero_si512(); 8]; N];
    for b in 0..blocks {
        let a: [*const i8; N] = std::array::from_fn(|t| qs[t].as_ptr().add(b * 256));
        lanes_block::<N>(group.add(b * 1024), a, &mut s, pf);
    }
    // A loop, not `array::from_fn`: its closure has no target features.
    let mut dots = [std::arch::x86_64::_mm512_setzero_si512(); N];
    for (dots, s) in dots.iter_mut().zip(&s) {
        *dots = chains_sum::<N>(s);
    }
    dots
}

/// Regrouped I2_S rows (`super::grouped_i2s`: out.len() rows of `blocks`
/// 256-weight blocks in whole groups of 16) against activations `q` in
/// file order, with AVX-512 VNNI: each row's integer dot, `dot_i2s`'s.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn i2s_grouped_rows_vnni(groups: &[u8], blocks: usize, q: &[i8], out: &mut [i32]) {
    let len = super::grouped_i2s::i2s_group_bytes(blocks);
    assert!(q.len() >= blocks * 256, "I2_S activations");
    assert!(blocks * 256 <= super::grouped_i2s::I2S_GROUPED_MAX_COLS, "I2_S rows too wide for int32 chains");
    assert_eq!(groups.len(), out.len().div_ceil(TQ2_LANES) * len, "I2_S groups for {} rows", out.len());
    let pf = prefetch_distance();
    for (g, out) in out.chunks_mut(TQ2_LANES).enumerate() {
        // SAFETY: group g's bytes are inside groups (asserted), q's blocks too.
        let [dots] = i2s_lanes_group::<1>(groups.as_ptr().add(g * len), blocks, [q], pf);
        store_lanes_i32(dots, out);
    }
}

/// `i2s_grouped_rows_vnni` for N tokens (1 to 4) over one group whose
/// first `rows` rows are the matrix's: token t's dots go to
/// `out[t * stride..][..rows]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn i2s_grouped_rows_tokens_vnni<const N: usize>(
    group: &[u8],
    rows: usize,
    blocks: usize,
    qs: [&[i8]; N],
    out: &mut [i32],
    stride: usize,
) {
    assert!(
        group.len() == super::grouped_i2s::i2s_group_bytes(blocks) && (1..=TQ2_LANES).contains(&rows),
        "I2_S group"
    );
    assert!(blocks * 256 <= super::grouped_i2s::I2S_GROUPED_MAX_COLS, "I2_S rows too wide for int32 chains");
    for q in qs {
        assert!(q.len() >= blocks * 256, "I2_S tokens");
    }
    assert!(out.len() >= (N - 1) * stride + rows, "I2_S tokens output");
    // SAFETY: the group's and the tokens' bytes are checked above.
    let dots = i2s_lanes_group::<N>(group.as_ptr(), blocks, qs, prefetch_distance());
    for (t, dots) in dots.iter().enumerate() {
        store_lanes_i32(*dots, &mut out[t * stride..][..rows]);
    }
}

/// The first out.len() of 16 int32 lanes.
#[inline(always)]
unsafe fn store_lanes_i32(v: std::arch::x86_64::__m512i, out: &mut [i32]) {
    let mut lanes = [0i32; TQ2_LANES];
    std::arch::x86_64::_mm512_storeu_si512(lanes.as_mut_ptr().cast(), v);
    out.copy_from_slice(&lanes[..out.len()]);
}

/// Regrouped TQ2_0 rows (`super::grouped`: out.len() rows of `blocks`
/// blocks in whole groups of 16) against activations `q` in file order,
/// with AVX-512 VNNI: `tq2_rows_vnni`'s bits from one front-to-back stream.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn tq2_grouped_rows_vnni(
    groups: &[u8],
    blocks: usize,
    q: &[i8],
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
) {
    let len = super::grouped::group_bytes(blocks);
    assert!(q.len() >= blocks * 256 && bsums.len() >= blocks && d.len() >= blocks, "TQ2_0 activations");
    assert_eq!(groups.len(), out.len().div_ceil(TQ2_LANES) * len, "TQ2_0 groups for {} rows", out.len());
    let pf = prefetch_distance();
    for (g, out) in out.chunks_mut(TQ2_LANES).enumerate() {
        // SAFETY: group g's bytes are inside groups (asserted), q's blocks too.
        let [acc] = tq2_lanes_group::<1>(groups.as_ptr().add(g * len), blocks, [q], [bsums], [d], pf);
        store_lanes(acc, out);
    }
}

/// `tq2_grouped_rows_vnni` for N tokens (1 to 4) over one group whose
/// first `rows` rows are the matrix's: token t's results go to
/// `out[t * stride..][..rows]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn tq2_grouped_rows_tokens_vnni<const N: usize>(
    group: &[u8],
    rows: usize,
    blocks: usize,
    qs: [&[i8]; N],
    bsums: [&[i32]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    assert!(group.len() == super::grouped::group_bytes(blocks) && (1..=TQ2_LANES).contains(&rows), "TQ2_0 group");
    for t in 0..N {
        assert!(qs[t].len() >= blocks * 256 && bsums[t].len() >= blocks && d[t].len() >= blocks, "TQ2_0 tokens");
    }
    assert!(out.len() >= (N - 1) * stride + rows, "TQ2_0 tokens output");
    // SAFETY: the group's and the tokens' bytes are checked above.
    let acc = tq2_lanes_group::<N>(group.as_ptr(), blocks, qs, bsums, d, prefetch_distance());
    for (t, acc) in acc.iter().enumerate() {
        store_lanes(*acc, &mut out[t * stride..][..rows]);
    }
}

/// TQ2_0 rows with AVX-512 VNNI (see `blockwise_group_avx512`), as the
/// file holds them: a block's 64 code bytes in one load
/// (`tq2_planes_avx512`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn tq2_rows_vnni(
    rows: &[u8],
    row_bytes: usize,
    qi: &[i8],
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
) {
    // SAFETY: blocks are 66 bytes (64 loaded); qi has 256 per block.
    blockwise_rows_avx512::<66, true>(rows, row_bytes, bsums, d, out, |block, b| {
        tq2_partial_vnni(block, qi.as_ptr().add(b * 256))
    })
}

/// Rows per group of the AVX2 blockwise kernel: one per 32-bit lane.
const AVX2_LANES: usize = 8;

/// Lane i of the result: the sum of the 8 lanes of `v[i]`, as
/// `lane_sums_x16` does for 16 (pairs within 128-bit lanes, then the two
/// halves). Integer adds: any order gives the same sums.
#[inline(always)]
unsafe fn lane_sums_x8(v: &[std::arch::x86_64::__m256i; AVX2_LANES]) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let t: [__m256i; 4] = std::array::from_fn(|k| {
        let (x, y) = (v[2 * k], v[2 * k + 1]);
        _mm256_add_epi32(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y))
    });
    let pairs = |x: __m256i, y: __m256i| _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y));
    let (u0, u1) = (pairs(t[0], t[1]), pairs(t[2], t[3]));
    _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31))
}

/// Rows of a format with an f16 scale ending each `BLOCK`-byte block of
/// 256 weights (TQ2_0, Q6_K) against Q8K activations, with AVX2: the
/// structure of `blockwise_group_avx512` on 8 lanes. `partial(block, b)`
/// gives 8 lanes whose sum is the integer dot of `block` (block b of some
/// row). Rows go 8 at a time, block by block: one add tree turns the 8
/// rows' partials into one vector (lane r = row r), one gather brings
/// their scales, and the finish ((dot - bsum) * (scale * d), summed in
/// block order; no bsum where `bsums` is empty, as for Q6_K) runs on the
/// 8 rows at once: the same operations in the same order per row as
/// `ternary_blocks_finish` / `q6k_finish`, so the same bits. This replaced
/// a horizontal sum per block and a scalar finish per row.
#[inline(always)]
unsafe fn blockwise_rows_avx2<const BLOCK: usize>(
    rows: &[u8],
    row_bytes: usize,
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
    partial: impl Fn(*const u8, usize) -> std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    let blocks = row_bytes / BLOCK;
    assert!(rows.len() == out.len() * row_bytes && d.len() >= blocks, "blockwise rows shape");
    let zero = _mm256_setzero_si256();
    let pf = prefetch_distance().map(|_| AVX2_LANES * row_bytes);
    for (group, out) in rows.chunks(AVX2_LANES * row_bytes).zip(out.chunks_mut(AVX2_LANES)) {
        let n = group.len() / row_bytes;
        let block_scales = BlockScalesX8::new(row_bytes, BLOCK, n);
        let mut acc = _mm256_setzero_ps();
        for (b, &d_b) in d.iter().enumerate().take(blocks) {
            // SAFETY: block b of row r < n is inside `group`.
            let at = |r: usize| {
                let block = group.as_ptr().add(r * row_bytes + b * BLOCK);
                prefetch_block::<BLOCK>(block, pf);
                partial(block, b)
            };
            let v: [__m256i; AVX2_LANES] = if n == AVX2_LANES {
                std::array::from_fn(at)
            } else {
                std::array::from_fn(|r| if r < n { at(r) } else { zero })
            };
            let dots = lane_sums_x8(&v);
            // SAFETY: rows < n hold block b.
            let scales = block_scales.gather(group.as_ptr(), b);
            let dot = match bsums.get(b) {
                Some(&bsum) => _mm256_sub_epi32(dots, _mm256_set1_epi32(bsum)),
                None => dots,
            };
            let scale = _mm256_mul_ps(scales, _mm256_set1_ps(d_b));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
        }
        store_lanes_x8(acc, out);
    }
}

/// The first `out.len()` lanes of `acc` into `out`.
#[inline(always)]
unsafe fn store_lanes_x8(acc: std::arch::x86_64::__m256, out: &mut [f32]) {
    let mut lanes = [0f32; AVX2_LANES];
    std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    out.copy_from_slice(&lanes[..out.len()]);
}

/// `BlockScales` on 8 lanes (AVX2): one block column's f16 scales of up
/// to 8 rows in one gather, lane r = row r; lanes of rows past the
/// group's end stay 0 and are never read.
#[derive(Clone, Copy)]
struct BlockScalesX8 {
    /// Byte offset of the 4 bytes ending row r's block 0 (its scale in the high half).
    scale_at: std::arch::x86_64::__m256i,
    live: std::arch::x86_64::__m256i,
    block: usize,
}

impl BlockScalesX8 {
    #[inline(always)]
    unsafe fn new(row_bytes: usize, block: usize, rows: usize) -> BlockScalesX8 {
        use std::arch::x86_64::*;
        let lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let scale_at = _mm256_add_epi32(
            _mm256_mullo_epi32(lane_ids, _mm256_set1_epi32(row_bytes as i32)),
            _mm256_set1_epi32(block as i32 - 4),
        );
        let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows as i32), lane_ids);
        BlockScalesX8 { scale_at, live, block }
    }

    /// Block b's scales of the group starting at `group` (its live rows
    /// must hold block b).
    #[inline(always)]
    unsafe fn gather(&self, group: *const u8, b: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let zero = _mm256_setzero_si256();
        let offsets = _mm256_add_epi32(self.scale_at, _mm256_set1_epi32((b * self.block) as i32));
        // SAFETY: only live lanes (rows < n) are read, each inside its row.
        let words = _mm256_mask_i32gather_epi32::<1>(zero, group.cast(), offsets, self.live);
        // The f16 bits in each lane's low half, packed to 8 u16 (packus
        // works per 128-bit lane; the permute puts lanes 4..8 after 0..4).
        let bits = _mm256_packus_epi32(_mm256_srli_epi32(words, 16), zero);
        _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(bits, 0b11_01_10_00)))
    }
}

/// TQ2_0 rows against Q8K activations (file order) with AVX2 (see
/// `blockwise_rows_avx2`): a block's 8 planes through `planes_dot`
/// (`tq2_partial_avx2`). Without AVX-VNNI their products are summed as i16
/// and widened once: 1.6x the rows per second of a per-row kernel with a
/// horizontal sum per block and a scalar finish, in L1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tq2_rows_avx2(rows: &[u8], row_bytes: usize, q: &[i8], bsums: &[i32], d: &[f32], out: &mut [f32]) {
    check_tq2_activations(row_bytes, q, bsums);
    // The closure is written here, not in a shared generic function: a
    // closure gets the target features of the function it is written in,
    // and one without AVX2 ran its intrinsics as calls (50x slower).
    blockwise_rows_avx2::<66>(rows, row_bytes, bsums, d, out, |block, b| {
        tq2_partial_avx2::<false>(block, q.as_ptr().add(b * 256))
    })
}

/// `tq2_rows_avx2` with AVX-VNNI: one `vpdpbusd` per plane.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn tq2_rows_avxvnni(
    rows: &[u8],
    row_bytes: usize,
    q: &[i8],
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
) {
    check_tq2_activations(row_bytes, q, bsums);
    blockwise_rows_avx2::<66>(rows, row_bytes, bsums, d, out, |block, b| {
        tq2_partial_avx2::<true>(block, q.as_ptr().add(b * 256))
    })
}

fn check_tq2_activations(row_bytes: usize, q: &[i8], bsums: &[i32]) {
    let blocks = row_bytes / 66;
    assert!(q.len() >= blocks * 256 && bsums.len() >= blocks, "TQ2_0 activations");
}

/// One TQ2_0 block (66 bytes at `block`) against its 256 activations at
/// `a` (file order), as 8 lanes whose sum is the code dot.
#[inline(always)]
unsafe fn tq2_partial_avx2<const VNNI: bool>(block: *const u8, a: *const i8) -> std::arch::x86_64::__m256i {
    tq2_planes_dot_avx2::<VNNI>(&tq2_planes_avx2(block), a)
}

/// A TQ2_0 block's 8 planes of codes: plane l of its 32-byte half j is
/// plane k = 4 (j / 32) + l, which pairs with activations 4 j + 32 l =
/// 32 k.. (file order).
#[inline(always)]
unsafe fn tq2_planes_avx2(block: *const u8) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    // SAFETY: the callers' (66 bytes at block).
    let (w0, w1) = (_mm256_loadu_si256(block.cast()), _mm256_loadu_si256(block.add(32).cast()));
    [
        _mm256_and_si256(w0, mask),
        _mm256_and_si256(_mm256_srli_epi16(w0, 2), mask),
        _mm256_and_si256(_mm256_srli_epi16(w0, 4), mask),
        _mm256_and_si256(_mm256_srli_epi16(w0, 6), mask),
        _mm256_and_si256(w1, mask),
        _mm256_and_si256(_mm256_srli_epi16(w1, 2), mask),
        _mm256_and_si256(_mm256_srli_epi16(w1, 4), mask),
        _mm256_and_si256(_mm256_srli_epi16(w1, 6), mask),
    ]
}

/// A block's planes against its 256 activations at `a` (`planes_dot`).
#[inline(always)]
unsafe fn tq2_planes_dot_avx2<const VNNI: bool>(
    planes: &[std::arch::x86_64::__m256i; 8],
    a: *const i8,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the callers' (256 activations at a).
    planes_dot::<8, VNNI>(planes, std::array::from_fn(|k| _mm256_loadu_si256(a.add(32 * k).cast())))
}

/// TQ2_0 rows (up to 8, one `blockwise_rows_avx2` group) against 1-4
/// tokens at once (prompts, sequences decoded together): token t's
/// results go to `out[t * stride..][..rows]`, bit for bit what
/// `tq2_rows_avx2` (`VNNI`: `tq2_rows_avxvnni`) gives it alone. Per block
/// each row's planes are unpacked once for every token (token by token
/// through the one-token kernel, unpacking was 14 of a block's 22
/// operations with AVX-VNNI), and one scale gather serves every token.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tq2_rows_tokens_avx2_n<const VNNI: bool>(
    group: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
    stride: usize,
) {
    assert!(bsums.len() == qs.len() && d.len() == qs.len(), "TQ2_0 tokens");
    macro_rules! tokens {
        ($n:literal) => {
            tq2_rows_tokens_avx2_k::<$n, VNNI>(group, row_bytes, first_n(qs), first_n(bsums), first_n(d), out, stride)
        };
    }
    match qs.len() {
        4 => tokens!(4),
        3 => tokens!(3),
        2 => tokens!(2),
        1 => tokens!(1),
        n => panic!("{n} tokens in one TQ2_0 tile (1 to 4)"),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tq2_rows_tokens_avx2_k<const N: usize, const VNNI: bool>(
    group: &[u8],
    row_bytes: usize,
    qs: [&[i8]; N],
    bsums: [&[i32]; N],
    d: [&[f32]; N],
    out: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    let n = group.len() / row_bytes;
    let blocks = row_bytes / 66;
    assert!(n <= AVX2_LANES && group.len() == n * row_bytes && row_bytes == blocks * 66, "TQ2_0 group shape");
    for t in 0..N {
        assert!(qs[t].len() >= blocks * 256 && bsums[t].len() >= blocks && d[t].len() >= blocks, "TQ2_0 tokens");
    }
    assert!(out.len() >= (N - 1) * stride + n, "TQ2_0 tokens output");
    let pf = prefetch_distance().map(|_| AVX2_LANES * row_bytes);
    let block_scales = BlockScalesX8::new(row_bytes, 66, n);
    let mut acc = [_mm256_setzero_ps(); N];
    // Rows past n stay zero, as in `blockwise_rows_avx2`.
    let mut v = [[_mm256_setzero_si256(); AVX2_LANES]; N];
    for b in 0..blocks {
        for r in 0..n {
            // SAFETY: block b of row r < n is inside group.
            let block = group.as_ptr().add(r * row_bytes + b * 66);
            prefetch_block::<66>(block, pf);
            let planes = tq2_planes_avx2(block);
            for (v, q) in v.iter_mut().zip(qs) {
                // SAFETY: block b's 256 activations are inside q (asserted).
                v[r] = tq2_planes_dot_avx2::<VNNI>(&planes, q.as_ptr().add(b * 256));
            }
        }
        // SAFETY: rows < n hold block b.
        let scales = block_scales.gather(group.as_ptr(), b);
        for t in 0..N {
            let dot = _mm256_sub_epi32(lane_sums_x8(&v[t]), _mm256_set1_epi32(bsums[t][b]));
            let scale = _mm256_mul_ps(scales, _mm256_set1_ps(d[t][b]));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        store_lanes_x8(*acc, &mut out[t * stride..][..n]);
    }
}

/// `tq2_rows_tokens_avx2_n` with AVX2 alone.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tq2_rows_tokens_avx2(
    group: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
    stride: usize,
) {
    tq2_rows_tokens_avx2_n::<false>(group, row_bytes, qs, bsums, d, out, stride)
}

/// `tq2_rows_tokens_avx2_n` with AVX-VNNI.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn tq2_rows_tokens_avxvnni(
    group: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
    stride: usize,
) {
    tq2_rows_tokens_avx2_n::<true>(group, row_bytes, qs, bsums, d, out, stride)
}

/// The ternary block formats the many-token kernel reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum TernaryBlocks {
    /// 66-byte blocks as the file holds them, activations interleaved (`interleave`).
    Tq2,
    /// 54-byte blocks, activations in file order.
    Tq1,
}

/// Rows (up to 16, one `blockwise_group_avx512` group) against 1-4 tokens
/// at once (prompts, sequences decoded together): token t's results go to
/// `out[t * stride..][..rows]`, bit for bit what `tq2_rows_vnni` /
/// `tq1_rows_vnni` give it alone. `qs[t]`: token t's activations in the
/// layout the format's kernel takes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn ternary_rows_tokens_vnni(
    format: TernaryBlocks,
    group: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    bsums: &[&[i32]],
    d: &[&[f32]],
    out: &mut [f32],
    stride: usize,
) {
    // SAFETY: the kernel passes a block inside its group (64 of 66 bytes loaded).
    let tq2 = |block: *const u8| unsafe { tq2_planes_avx512(block) };
    // SAFETY: the kernel passes a 54-byte block inside its group.
    let tq1 = |block: *const u8| unsafe { tq1_digits_vnni(block) };
    macro_rules! tokens {
        ($n:literal) => {{
            let qs: [&[i8]; $n] = first_n(qs);
            let bsums: [&[i32]; $n] = first_n(bsums);
            let d: [&[f32]; $n] = first_n(d);
            let out = (out, stride);
            match format {
                TernaryBlocks::Tq2 => {
                    assert!(row_bytes.is_multiple_of(66) && group.len().is_multiple_of(row_bytes), "TQ2_0 group shape");
                    let g = FileRows::<66>::new(group, row_bytes);
                    blockwise_rows_tokens_avx512::<_, $n>(&g, row_bytes / 66, qs, bsums, d, out, tq2)
                }
                TernaryBlocks::Tq1 => {
                    assert!(row_bytes.is_multiple_of(54) && group.len().is_multiple_of(row_bytes), "TQ1_0 group shape");
                    let g = FileRows::<54>::new(group, row_bytes);
                    blockwise_rows_tokens_avx512::<_, $n>(&g, row_bytes / 54, qs, bsums, d, out, tq1)
                }
            }
        }};
    }
    assert!(bsums.len() == qs.len() && d.len() == qs.len(), "ternary tokens");
    match qs.len() {
        4 => tokens!(4),
        3 => tokens!(3),
        2 => tokens!(2),
        1 => tokens!(1),
        n => panic!("{n} tokens in one ternary tile (1 to 4)"),
    }
}

/// `blockwise_group_avx512` for N tokens: per block, each row's codes are
/// unpacked once (`planes`: four vectors, plane k paired with activations
/// 64 k..64 k + 64) for all N tokens, four rows at a time (their planes
/// stay in registers while each token's activations are loaded once for
/// the four), and each block's scales serve every token. Token t's
/// results go to `out.0[t * out.1..][..rows]`.
#[inline(always)]
unsafe fn blockwise_rows_tokens_avx512<const BLOCK: usize, const N: usize>(
    g: &FileRows<BLOCK>,
    blocks: usize,
    qs: [&[i8]; N],
    bsums: [&[i32]; N],
    d: [&[f32]; N],
    (out, stride): (&mut [f32], usize),
    planes: impl Fn(*const u8) -> [std::arch::x86_64::__m512i; 4],
) {
    use std::arch::x86_64::*;
    let n = g.rows();
    for t in 0..N {
        assert!(qs[t].len() >= blocks * 256 && bsums[t].len() >= blocks && d[t].len() >= blocks, "ternary tokens");
    }
    assert!(out.len() >= (N - 1) * stride + n, "ternary tokens output");
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); N];
    // Rows past n stay zero, as in `blockwise_group_avx512`.
    let mut v = [[zero; TQ2_LANES]; N];
    for b in 0..blocks {
        for r0 in (0..n).step_by(4) {
            let rn = (n - r0).min(4);
            let mut codes = [[zero; 4]; 4];
            for (i, c) in codes.iter_mut().enumerate().take(rn) {
                // SAFETY: block b of row r0 + i < n is inside the group.
                *c = planes(g.block(r0 + i, b));
            }
            for (t, v) in v.iter_mut().enumerate() {
                // SAFETY: block b's 256 activations are inside qs[t] (asserted).
                let a = qs[t].as_ptr().add(b * 256);
                let a = [
                    _mm512_loadu_si512(a.cast()),
                    _mm512_loadu_si512(a.add(64).cast()),
                    _mm512_loadu_si512(a.add(128).cast()),
                    _mm512_loadu_si512(a.add(192).cast()),
                ];
                for (i, c) in codes.iter().enumerate().take(rn) {
                    let x0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, c[0], a[0]), c[2], a[2]);
                    let x1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, c[1], a[1]), c[3], a[3]);
                    v[r0 + i] = _mm512_add_epi32(x0, x1);
                }
            }
        }
        // SAFETY: rows < n hold block b.
        let scales = g.scales(b);
        for t in 0..N {
            let dot = _mm512_sub_epi32(lane_sums_x16(&v[t]), _mm512_set1_epi32(bsums[t][b]));
            let scale = _mm512_mul_ps(scales, _mm512_set1_ps(d[t][b]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        store_lanes(*acc, &mut out[t * stride..][..n]);
    }
}

/// TQ1_0 with AVX2, activations in file order. The digits come out as
/// bytes: multiplying by 3 (two byte adds) steps to the next digit of the
/// 32 first bytes; the 16 and 4 others get per-lane multipliers (1 | 3,
/// then 9, 81; 1, 3, 9, 27 for the four) so that every 32 digits line up
/// with 32 consecutive activations. ((t * 3) >> 8) of a byte t is
/// (t > 85) + (t > 170), two saturating subtractions and minimums.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn tq1_block_dots_avx2(row: &[u8], q: &[i8], out: &mut [i32]) {
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
#[inline(always)]
unsafe fn tq1_digits_vnni(block: *const u8) -> [std::arch::x86_64::__m512i; 4] {
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
    // SAFETY (all loads): the caller's block has 54 bytes.
    let b = block;
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
    [digits(p01), digits(p23), digits(v2), digits(v3)]
}

/// One TQ1_0 block against one token with AVX-512 VNNI: 16 lanes whose sum
/// is the block's code dot, without extracting a digit.
///
/// Digit n of a byte b is d = (3 y) >> 8 with y = b 3^n mod 256, so
/// 3 y = 256 d + y' where y' = 3 y mod 256 is the residue of digit n + 1.
/// Hence sum d a = (3 sum y a - sum y' a) / 256, exactly: each product
/// (3 y - y') a is 256 d a, so each lane's sum divides by 256 as well.
/// The residues come from byte triplings (two adds), y' of one vector
/// being partly y of the next. Four vectors line up with activations
/// 0..64, 64..128, 128..192, 192..256 (t: the 32 first bytes, r: the next
/// 16, h: the last 4): [t | 3t], [9t | 27t], [81t | r | 3r],
/// [9r | 27r | 81r | h 3h 9h 27h]; r's powers are made in 128-bit
/// registers and put together with three inserts. That is eight
/// `vpdpbusd` (y < 256 unsigned, a signed) and about 30 other operations,
/// a third of them on 128-bit registers, where `tq1_digits_vnni` takes
/// about 50 on 512-bit ones: 29 -> 35 weights/ns per core in L1 on this
/// Zen 4. (The many-token kernel keeps the digits: there they serve every
/// token.)
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
#[inline]
unsafe fn tq1_block_vnni(block: *const u8, qb: *const i8) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Bytes tripled (mod 256) by two adds in assembly: LLVM folds chains
    // of such adds into byte multiplies, which x86 does with two 16-bit
    // multiplies and two more operations (27 rather than 35 weights/ns).
    macro_rules! x3 {
        ($v:expr) => {{
            let v: __m512i = $v;
            let out: __m512i;
            // SAFETY: register-only AVX-512BW adds, this function's features.
            unsafe {
                std::arch::asm!(
                    "vpaddb {o}, {v}, {v}",
                    "vpaddb {o}, {o}, {v}",
                    o = out(zmm_reg) out,
                    v = in(zmm_reg) v,
                    options(pure, nomem, nostack, preserves_flags),
                )
            };
            out
        }};
    }
    let x3_128 = |v: __m128i| _mm_add_epi8(v, _mm_add_epi8(v, v));
    // SAFETY (all loads): the caller's block has 54 bytes, qb 256.
    let t = _mm256_loadu_si256(block.cast());
    let v0 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(t), _mm256_add_epi8(t, _mm256_add_epi8(t, t)));
    let w0 = x3!(v0);
    let v1 = x3!(w0);
    let w1 = x3!(v1);
    let r0 = _mm_loadu_si128(block.add(32).cast());
    let r1 = x3_128(r0);
    let r2 = x3_128(r1);
    let r3 = x3_128(r2);
    let r4 = x3_128(r3);
    // h times 1, 3, 9, 27 (per 4 bytes): 16-bit multiplies, low and high bytes apart.
    let h = _mm_set1_epi32(block.add(48).cast::<i32>().read_unaligned());
    let (by, lo_bytes) = (_mm_setr_epi16(1, 1, 3, 3, 9, 9, 27, 27), _mm_set1_epi16(0x00ff));
    let h = _mm_or_si128(
        _mm_and_si128(_mm_mullo_epi16(h, by), lo_bytes),
        _mm_mullo_epi16(_mm_andnot_si128(lo_bytes, h), by),
    );
    // 81t (w1's high half), then r, 3r.
    let v2 = _mm512_shuffle_i64x2::<0b01_00_11_10>(w1, _mm512_castsi256_si512(_mm256_setr_m128i(r0, r1)));
    let w2 = x3!(v2);
    let v3 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_setr_m128i(r2, r3)), _mm256_setr_m128i(r4, h));
    let w3 = x3!(v3);
    let a = |k: usize| _mm512_loadu_si512(qb.add(64 * k).cast());
    let (a0, a1, a2, a3) = (a(0), a(1), a(2), a(3));
    let zero = _mm512_setzero_si512();
    let y = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, v0, a0), v1, a1);
    let y = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(y, v2, a2), v3, a3);
    let next = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, w0, a0), w1, a1);
    let next = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(next, w2, a2), w3, a3);
    _mm512_srai_epi32::<8>(_mm512_sub_epi32(_mm512_add_epi32(y, _mm512_add_epi32(y, y)), next))
}

/// Per-block TQ1_0 code dots of one row with AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn tq1_block_dots_vnni(row: &[u8], q: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(54).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        // SAFETY: block has 54 bytes, qb 256.
        let acc = tq1_block_vnni(block.as_ptr(), qb.as_ptr());
        *o = hsum_i32(_mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1)));
    }
}

/// TQ1_0 rows with AVX-512 VNNI (see `blockwise_group_avx512`), activations
/// in file order.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn tq1_rows_vnni(rows: &[u8], row_bytes: usize, q: &[i8], bsums: &[i32], d: &[f32], out: &mut [f32]) {
    // SAFETY: blocks are 54 bytes; q has 256 per block.
    blockwise_rows_avx512::<54, false>(rows, row_bytes, bsums, d, out, |block, b| {
        tq1_block_vnni(block, q.as_ptr().add(b * 256))
    })
}

#[target_feature(enable = "avx2")]
pub(super) unsafe fn tq2_block_dots_x4_avx2(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
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

/// The sum of `M` planes' products (u8 codes 0..=3 times i8 activations,
/// `planes[k]` with `xs[k]`) as eight i32 lanes (each the sum of 4M
/// products; which ones differs between the builds, the lanes' total does
/// not). With AVX-VNNI one `vpdpbusd` chain; without, the `vpmaddubsw`
/// pairs added as i16 (|pair| <= 3 * 128 * 2 = 768: exact for M <= 42)
/// and widened once: 2M + 1 operations where a `vpmaddwd` and an add per
/// plane took 3M.
#[inline(always)]
unsafe fn planes_dot<const M: usize, const VNNI: bool>(
    planes: &[std::arch::x86_64::__m256i; M],
    xs: [std::arch::x86_64::__m256i; M],
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    const { assert!(M >= 1 && M <= 42, "i16 sums of M planes") };
    if VNNI {
        let mut acc = _mm256_setzero_si256();
        for (codes, x) in planes.iter().zip(xs) {
            acc = _mm256_dpbusd_avx_epi32(acc, *codes, x);
        }
        acc
    } else {
        // Two sums, even and odd planes: half the chain of dependent adds.
        let mut sums = [_mm256_setzero_si256(); 2];
        for (k, (codes, x)) in planes.iter().zip(xs).enumerate() {
            sums[k % 2] = _mm256_add_epi16(sums[k % 2], _mm256_maddubs_epi16(*codes, x));
        }
        _mm256_madd_epi16(_mm256_add_epi16(sums[0], sums[1]), _mm256_set1_epi16(1))
    }
}

/// `N` tokens against one I2_S row with AVX2, the codes unpacked once for
/// all of them (prompt processing, sequences decoded together: the row is
/// read once per N tokens). Each block's four planes go through
/// `planes_dot` per token into a sum of their own.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_i2s_xn_avx2<const N: usize>(row: &[u8], q: [&[i8]; N]) -> [i32; N] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_si256(); N];
    let pf = prefetch_distance();
    for (b, block) in row.chunks_exact(32).enumerate() {
        // SAFETY (all loads): block has 32 bytes; each q has 128 per block.
        let w = _mm256_loadu_si256(block.as_ptr().cast());
        // Ahead in the row: without it half this kernel's time (4 streams
        // decoded together) was the wait for this load.
        if b % 2 == 0 {
            prefetch(block.as_ptr(), pf);
        }
        let planes = [
            _mm256_and_si256(_mm256_srli_epi16(w, 6), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 4), mask),
            _mm256_and_si256(_mm256_srli_epi16(w, 2), mask),
            _mm256_and_si256(w, mask),
        ];
        for (t, acc) in acc.iter_mut().enumerate() {
            let qb = q[t].as_ptr().add(b * 128);
            let xs = std::array::from_fn(|k| _mm256_loadu_si256(qb.add(k * 32).cast()));
            *acc = _mm256_add_epi32(*acc, planes_dot::<4, false>(&planes, xs));
        }
    }
    acc.map(|a| hsum_i32(a))
}

/// `R` consecutive I2_S rows (1 or 2) against `N` tokens (1-4) with
/// AVX-VNNI, into `out[r * N + t]`: the many-token product (prompts,
/// sequences decoded together) where the CPU has AVX-VNNI but not
/// AVX-512 (Alder Lake on). Plane by plane, each activation load feeds
/// both rows and each row's codes serve all N tokens: per 2 rows x 4
/// tokens x 128 weights 62 operations where a row at a time took 86. R x
/// N accumulators, one `vpdpbusd` chain each; integer sums, so the same
/// bits as the reference.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn i2s_tile_avxvnni<const R: usize, const N: usize>(
    rows: &[u8],
    row_bytes: usize,
    q: &[&[i8]],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= R * row_bytes && out.len() >= R * N && q.len() >= N, "tile shape");
    assert!(q[..N].iter().all(|q| q.len() >= row_bytes * 4), "tile activations");
    let q: [*const i8; N] = std::array::from_fn(|t| q[t].as_ptr());
    let mask = _mm256_set1_epi8(3);
    let mut acc = [[_mm256_setzero_si256(); N]; R];
    let pf = prefetch_distance();
    for blk in 0..row_bytes / 32 {
        let mut w = [mask; R];
        for (r, w) in w.iter_mut().enumerate() {
            // SAFETY: row r < R lies in rows (asserted); blk * 32 + 32 <= row_bytes.
            let at = rows.as_ptr().add(r * row_bytes + blk * 32);
            if blk % 2 == 0 {
                prefetch(at, pf);
            }
            *w = _mm256_loadu_si256(at.cast());
        }
        // Plane by plane (bits 6-7 first, activations 32 k..): R code
        // vectors live at a time.
        for k in 0..4 {
            let codes = w.map(|w| {
                let shifted = match k {
                    0 => _mm256_srli_epi16(w, 6),
                    1 => _mm256_srli_epi16(w, 4),
                    2 => _mm256_srli_epi16(w, 2),
                    _ => w,
                };
                _mm256_and_si256(shifted, mask)
            });
            for t in 0..N {
                // SAFETY: each q holds 128 activations per block (asserted).
                let x = _mm256_loadu_si256(q[t].add(blk * 128 + 32 * k).cast());
                for r in 0..R {
                    acc[r][t] = _mm256_dpbusd_avx_epi32(acc[r][t], codes[r], x);
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..N {
            out[r * N + t] = hsum_i32(acc[r][t]);
        }
    }
}

/// `N` tokens at once (a multiple of 4) with AVX-512 VNNI on prepared
/// (interleaved) activations: each 64 bytes of weights unpacked once for
/// all N, one 64-byte load per plane and token (the plain layout took two
/// 32-byte loads and an insert).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn dot_i2s_xn_vnni_interleaved<const N: usize>(
    row: &[u8],
    qi: [&[i8]; N],
    q: [&[i8]; N],
) -> [i32; N] {
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
            let rest = dot_i2s_xn_avx2(&row[pairs * 64..], tail);
            for (o, r) in out[t..t + 4].iter_mut().zip(rest) {
                *o += r;
            }
        }
    }
    out
}

/// `R` consecutive rows (1 or 2) against `N` tokens with AVX-512 VNNI on
/// prepared (interleaved) activations, into `out[r * N + t]`: the tile the
/// many-token product runs. Each 64-byte activation load feeds both rows
/// (half the loads per multiply-add of one row at a time) and each row's
/// codes are unpacked once for all N tokens; R x N accumulators, one chain
/// each (with N >= 2 there are enough chains to hide vpdpbusd's latency).
/// Integer sums, so any order gives the same bits as the reference.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
pub(super) unsafe fn i2s_tile_vnni<const R: usize, const N: usize>(
    rows: &[u8],
    row_bytes: usize,
    qi: &[&[i8]],
    q: &[&[i8]],
    out: &mut [i32],
) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= R * row_bytes && out.len() >= R * N, "tile out of bounds");
    assert!(qi.len() >= N && q.len() >= N, "tile tokens");
    let qi: [*const i8; N] = std::array::from_fn(|t| qi[t].as_ptr());
    let mask = _mm512_set1_epi8(3);
    let mut acc = [[_mm512_setzero_si512(); N]; R];
    let pairs = row_bytes / 64;
    let pf = prefetch_distance();
    for p in 0..pairs {
        let mut w = [mask; R];
        for (r, w) in w.iter_mut().enumerate() {
            // SAFETY: row r < R lies in rows (asserted); p * 64 + 64 <= row_bytes.
            let at = rows.as_ptr().add(r * row_bytes + p * 64);
            prefetch(at, pf);
            *w = _mm512_loadu_si512(at.cast());
        }
        // Plane by plane (bits 6-7 first): R code vectors live at a time.
        for k in 0..4 {
            let codes = w.map(|w| {
                let shifted = match k {
                    0 => _mm512_srli_epi16(w, 6),
                    1 => _mm512_srli_epi16(w, 4),
                    2 => _mm512_srli_epi16(w, 2),
                    _ => w,
                };
                _mm512_and_si512(shifted, mask)
            });
            for t in 0..N {
                // SAFETY: each qi holds 256 bytes per pair (checked by the caller).
                let x = _mm512_loadu_si512(qi[t].add(p * 256 + 64 * k).cast());
                for r in 0..R {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], codes[r], x);
                }
            }
        }
    }
    // Sixteen horizontal sums in one add tree where the tile has enough
    // accumulators to fill it (a fifth of a 4 x 4 tile's time went to
    // one reduction per accumulator).
    let mut sums = [0i32; 16];
    if R * N >= 8 {
        let mut v = [_mm512_setzero_si512(); 16];
        for r in 0..R {
            v[r * N..(r + 1) * N].copy_from_slice(&acc[r]);
        }
        _mm512_storeu_si512(sums.as_mut_ptr().cast(), lane_sums_x16(&v));
    } else {
        for r in 0..R {
            for t in 0..N {
                sums[r * N + t] = _mm512_reduce_add_epi32(acc[r][t]);
            }
        }
    }
    for r in 0..R {
        for t in 0..N {
            let mut d = sums[r * N + t];
            if !row_bytes.is_multiple_of(64) {
                let row = &rows[r * row_bytes..(r + 1) * row_bytes];
                d += dot_i2s_avx2(&row[pairs * 64..], &q[t][pairs * 256..]);
            }
            out[r * N + t] = d;
        }
    }
}
