//! Regrouped TQ2_0 and I2_S matrices against several tokens with AMX (Intel's tile
//! unit, Sapphire Rapids on): one `tdpbsud` multiplies up to 16 tokens'
//! 64 activations (signed bytes, tile A: a token per row) by 16 rows' 64
//! weight codes (unsigned bytes, tile B: dword lane r of each of its 16
//! lines holds 4 consecutive codes of row r) into 16 x 16 int32 sums.
//!
//! Tile B's layout is the regrouped one (`super::super::grouped`, "lanes
//! = rows"): plane p of line l of a block holds codes 16 l + 4 p .. + 4 of
//! every row, so a 64-column step is lines 4s..4s+4's 16 planes, each
//! unpacked (one GF(2) affine transform) once and stored to a 1 KiB
//! buffer that the tile loads. Measured on a model of the loop in L1 (4
//! tokens, ns per block): 4 `tdpbsud` alone 18, with their tile loads and
//! stores 42, unpacking and tile loads without products 47, all 54; so
//! the stores and the tile loads that read them back, not the products,
//! bound the kernel. Per block the
//! four steps sum into one C tile, stored and finished as the VNNI kernel
//! finishes its lanes ((dot - bsum) * (scale * d), summed in block order):
//! the results are `tq2_rows`'s bit for bit.
//!
//! With AVX-512 VNNI each token costs 64 `vpdpbusd` per block of 16 rows,
//! one per cycle: 4 tokens in L1 ran at 214 multiply-adds/ns, the port's
//! limit, which made a 4-sequence decoding step as slow as reading the
//! weights plus computing on them. With AMX a block's cost hardly grows
//! with the tokens.
//!
//! The tile registers are used only here and only by this thread's calls:
//! each call loads its configuration (`ldtilecfg`) before its first tile
//! instruction, so no state is assumed between calls.

use std::arch::asm;
use std::arch::x86_64::*;

/// `ldtilecfg`'s 64-byte operand, palette 1: per tile register its rows
/// and bytes per row.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved2: [u8; 16],
}

/// The tiles this kernel uses: tmm0-1 a 64-column step of `m` tokens'
/// activations (in turn), tmm2-3 sums (`m` x 16 int32, a chunk of tokens
/// each in turn), tmm4-7 the four 64-column steps of a block's weights (16 x
/// 64 bytes).
fn config(m: u8) -> TileConfig {
    let mut rows = [0u8; 16];
    let mut colsb = [0u16; 16];
    for t in 0..8 {
        rows[t] = if t >= 4 { 16 } else { m };
        colsb[t] = 64;
    }
    TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows, reserved2: [0; 16] }
}

/// Whether this process may use AMX's int8 products: the CPU has AMX-TILE
/// and AMX-INT8 (and GFNI, which every AMX CPU has; the unpacking uses it)
/// and the kernel grants the tile data state (Linux asks each
/// process to request it; without the grant a tile instruction faults).
/// Asked once.
pub(in crate::kernels) fn amx_permitted() -> bool {
    // Leaf 7 exists on every CPU that reaches here (AVX-512).
    let leaf7 = __cpuid_count(7, 0);
    let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
    tile && int8 && std::arch::is_x86_feature_detected!("gfni") && request_tile_data()
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request reads no memory; it fails with
    // an error where the kernel or the CPU lacks the feature.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Elsewhere AMX is left alone: untested there.
#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Tokens' activations laid out for tile A, in chunks of `m` (up to 16)
/// tokens, one tile's rows, the last chunk filled out with zero tokens
/// (their sums are never read). Block by block, chunk by chunk, step by
/// step (64 columns), `m` rows of 64 bytes: each tile is 64-byte rows
/// side by side, and a pass over a group reads it front to back. (Each
/// token's bytes in one run, a tile's rows 2,560 bytes apart, a chunk of
/// 16 tokens took 82 ns instead of 21 from L2.)
pub(in crate::kernels) struct StagedTokens {
    acts: Vec<Line>,
    n: usize,
    m: usize,
    k: usize,
    /// Where each token's activations were staged from (address, length).
    from: Vec<(usize, usize)>,
}

/// 64 activations on a cache line of their own: a tile row that straddles
/// two lines loads several times slower (here a 16-row tile took 15 ns
/// from a malloc'd buffer, 2.2 ns 64-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

impl StagedTokens {
    pub(in crate::kernels) fn new(qs: &[&[i8]], k: usize) -> StagedTokens {
        assert!(k.is_multiple_of(256), "whole blocks of activations");
        let n = qs.len();
        let m = n.clamp(1, 16);
        let chunks = n.div_ceil(m);
        let mut acts = vec![Line([0; 64]); chunks * m * k / 64];
        for (t, q) in qs.iter().enumerate() {
            let (c, i) = (t / m, t % m);
            for (j, step) in q[..k].chunks_exact(64).enumerate() {
                let (b, s) = (j / 4, j % 4);
                acts[((b * chunks + c) * 4 + s) * m + i].0.copy_from_slice(step);
            }
        }
        let from = qs.iter().map(|q| (q.as_ptr() as usize, q.len())).collect();
        StagedTokens { acts, n, m, k, from }
    }

    /// Whether these are `qs`'s first k activations, staged.
    pub(in crate::kernels) fn holds(&self, qs: &[&[i8]], k: usize) -> bool {
        self.k == k
            && qs.len() == self.from.len()
            && qs.iter().zip(&self.from).all(|(q, f)| (q.as_ptr() as usize, q.len()) == *f)
    }

    /// Where chunk c's four steps of block b start.
    fn chunk(&self, b: usize, c: usize) -> *const i8 {
        let chunks = self.n.div_ceil(self.m);
        self.acts[(b * chunks + c) * 4 * self.m..].as_ptr().cast()
    }
}

/// One block's 16 lines (at `line`) unpacked into tile B's four 1 KiB
/// steps at `dst`: step s, line 16 ... plane p of line 4s + i at 4i + p.
/// Plane p is bits 2p and 2p + 1 of each byte, moved to bits 0 and 1 by
/// one GF(2) affine transform (`vgf2p8affineqb`) instead of a shift and a
/// mask: the stores bound this either way (here 20.4 -> 17.5 ns a block,
/// the stores alone 16.6).
#[inline(always)]
unsafe fn unpack_block(line: *const u8, dst: *mut u8, pf: Option<usize>) {
    // Row i of an affine matrix is byte 7 - i of its qword: result bit 0
    // takes source bit 2p, bit 1 source bit 2p + 1, the others nothing.
    let plane = |p: u32| _mm512_set1_epi64(((1i64 << (2 * p)) << 56) | ((1i64 << (2 * p + 1)) << 48));
    let planes = [plane(0), plane(1), plane(2), plane(3)];
    for l in 0..16 {
        super::super::prefetch(line.add(64 * l), pf);
        let w = _mm512_loadu_si512(line.add(64 * l).cast());
        for (p, plane) in planes.iter().enumerate() {
            _mm512_store_si512(dst.add(256 * l + 64 * p).cast(), _mm512_gf2p8affine_epi64_epi8::<0>(w, *plane));
        }
    }
}

/// A block's four weight steps (unpacked at `steps`) into tiles 4-7.
#[inline(always)]
unsafe fn load_weights(steps: *const u8) {
    asm!(
        "tileloadd tmm4, [{w} + {s} * 1]",
        "tileloadd tmm5, [{w} + {s} * 1 + 1024]",
        "tileloadd tmm6, [{w} + {s} * 1 + 2048]",
        "tileloadd tmm7, [{w} + {s} * 1 + 3072]",
        w = in(reg) steps,
        s = in(reg) 64usize,
        options(nostack, preserves_flags, readonly),
    );
}

/// One chunk of `m` tokens against the block in tiles 4-7, summed into
/// tile `C` (2 or 3, holding zeros), then stored to `sums` (rows of 64
/// bytes) and zeroed: the activations' four steps (`m` x 64 bytes each)
/// from `acts`, loaded into tiles 0 and 1 in turn.
#[inline(always)]
unsafe fn chunk_products<const C: u8>(acts: *const i8, m: usize, sums: *mut i32) {
    let step = m * 64;
    asm!(
        "tileloadd tmm0, [{a} + {k} * 1]",
        "tdpbsud tmm{c}, tmm0, tmm4",
        "tileloadd tmm1, [{a1} + {k} * 1]",
        "tdpbsud tmm{c}, tmm1, tmm5",
        "tileloadd tmm0, [{a2} + {k} * 1]",
        "tdpbsud tmm{c}, tmm0, tmm6",
        "tileloadd tmm1, [{a3} + {k} * 1]",
        "tdpbsud tmm{c}, tmm1, tmm7",
        "tilestored [{p} + {s} * 1], tmm{c}",
        "tilezero tmm{c}",
        a = in(reg) acts,
        a1 = in(reg) acts.add(step),
        a2 = in(reg) acts.add(2 * step),
        a3 = in(reg) acts.add(3 * step),
        k = in(reg) 64usize,
        p = in(reg) sums,
        s = in(reg) 64usize,
        c = const C,
        options(nostack, preserves_flags),
    );
}

/// What a block's sums (per token, 16 rows in int32 lanes) become: TQ2_0
/// scales each block's by its rows' scales and the token's (in block
/// order, the VNNI kernel's finish: the same operations, the same bits);
/// I2_S adds them up (one scale per matrix, applied by the caller).
pub(in crate::kernels) trait BlockSums {
    /// A result lane: f32 (TQ2_0) or an int32 dot (I2_S).
    type Out: Copy + Default;
    /// Bytes before a group's codes (TQ2_0's scales).
    fn codes_at(&self, blocks: usize) -> usize;
    /// Bytes of a group of 16 rows.
    fn group_bytes(&self, blocks: usize) -> usize;
    /// Whether it has what `add` reads for n tokens of `blocks` blocks.
    fn covers(&self, n: usize, blocks: usize) -> bool;
    /// Token t's sums of block b of `group` into its accumulator.
    unsafe fn add(&self, acc: &mut __m512i, sums: __m512i, group: *const u8, t: usize, b: usize);
    /// An accumulator's 16 lanes as results.
    unsafe fn lanes(acc: __m512i) -> [Self::Out; 16];
}

/// TQ2_0's finish: `(dot - bsum) * (scale * d)` summed in block order.
pub(in crate::kernels) struct Tq2Sums<'a> {
    pub bsums: &'a [&'a [i32]],
    pub d: &'a [&'a [f32]],
}

impl BlockSums for Tq2Sums<'_> {
    type Out = f32;

    fn codes_at(&self, blocks: usize) -> usize {
        super::super::grouped::scales_bytes(blocks)
    }

    fn group_bytes(&self, blocks: usize) -> usize {
        super::super::grouped::group_bytes(blocks)
    }

    fn covers(&self, n: usize, blocks: usize) -> bool {
        self.bsums.len() == n
            && self.d.len() == n
            && self.bsums.iter().zip(self.d).all(|(s, d)| s.len() >= blocks && d.len() >= blocks)
    }

    #[inline(always)]
    unsafe fn add(&self, acc: &mut __m512i, sums: __m512i, group: *const u8, t: usize, b: usize) {
        let scales = _mm512_cvtph_ps(_mm256_loadu_si256(group.add(32 * b).cast()));
        let dot = _mm512_sub_epi32(sums, _mm512_set1_epi32(*self.bsums.get_unchecked(t).get_unchecked(b)));
        let scale = _mm512_mul_ps(scales, _mm512_set1_ps(*self.d.get_unchecked(t).get_unchecked(b)));
        let sum = _mm512_add_ps(_mm512_castsi512_ps(*acc), _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
        *acc = _mm512_castps_si512(sum);
    }

    #[inline(always)]
    unsafe fn lanes(acc: __m512i) -> [f32; 16] {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_castsi512_ps(acc));
        lanes
    }
}

/// I2_S's: the blocks' integer sums added up.
pub(in crate::kernels) struct I2sSums;

impl BlockSums for I2sSums {
    type Out = i32;

    fn codes_at(&self, _: usize) -> usize {
        0
    }

    fn group_bytes(&self, blocks: usize) -> usize {
        super::super::grouped_i2s::i2s_group_bytes(blocks)
    }

    fn covers(&self, _: usize, _: usize) -> bool {
        true
    }

    #[inline(always)]
    unsafe fn add(&self, acc: &mut __m512i, sums: __m512i, _: *const u8, _: usize, _: usize) {
        *acc = _mm512_add_epi32(*acc, sums);
    }

    #[inline(always)]
    unsafe fn lanes(acc: __m512i) -> [i32; 16] {
        let mut lanes = [0i32; 16];
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), acc);
        lanes
    }
}

/// Chunks' sums held at once, and how many chunks' products are asked
/// for between a chunk's and its finish: a vector load of a tile's store
/// waits until the store has left the store buffer.
const SUMS: usize = 4;
const LAG: usize = 3;

/// How many blocks ahead of the products a block is unpacked: from one to
/// two, a 4-token block took 59 -> 54 ns in a model of this loop in L1.
const AHEAD: usize = 2;

#[repr(C, align(64))]
struct Scratch {
    /// The unpacked weights (4 steps of 1 KiB each) of the block being
    /// multiplied and the AHEAD after it.
    steps: [[u8; 4096]; AHEAD + 1],
    /// Two chunks' sums: up to 16 tokens x 16 rows.
    sums: [[i32; 256]; SUMS],
}

/// Regrouped groups (`groups`: whole groups of 16 rows of `blocks`
/// 256-weight blocks, `rows` of them the matrix's; TQ2_0's or I2_S's as
/// `sums` says) against the staged tokens: token t's result for row r goes
/// to `out[t * stride + r]`. Each block of a group is unpacked once for
/// all the tokens.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,gfni")]
pub(in crate::kernels) unsafe fn grouped_rows_tokens_amx<S: BlockSums>(
    groups: &[u8],
    rows: usize,
    blocks: usize,
    tokens: &StagedTokens,
    sums_as: &S,
    out: &mut [S::Out],
    stride: usize,
) {
    let (n, m, k) = (tokens.n, tokens.m, tokens.k);
    let len = sums_as.group_bytes(blocks);
    assert!(k == blocks * 256 && blocks > 0, "staged tokens of {k} columns");
    assert!(groups.len() == rows.div_ceil(16) * len, "groups for {rows} rows");
    assert!(sums_as.covers(n, blocks), "each token's block sums and scales");
    assert!(rows == 0 || out.len() >= (n - 1) * stride + rows, "tokens output");
    let chunks = n.div_ceil(m);
    let pf = super::super::prefetch_distance();
    let config = config(m as u8);
    let mut acc = vec![_mm512_setzero_si512(); n];
    // Written before it is read: each block's steps and each chunk's sums
    // are stored before they are loaded.
    let mut scratch = std::mem::MaybeUninit::<Scratch>::uninit();
    let scratch = scratch.as_mut_ptr();
    let steps = |b: usize| (&raw mut (*scratch).steps[b % (AHEAD + 1)]).cast::<u8>();
    let sums = |i: usize| (&raw mut (*scratch).sums[i % SUMS]).cast::<i32>();
    // SAFETY: amx_permitted() granted the tile state (the caller checked);
    // the configuration is a valid palette-1 one.
    asm!("ldtilecfg [{}]", "tilezero tmm2", "tilezero tmm3", in(reg) &config, options(nostack, preserves_flags));
    let codes_at = sums_as.codes_at(blocks);
    for (g, group) in groups.chunks_exact(len).enumerate() {
        let codes = group.as_ptr().add(codes_at);
        acc.fill(_mm512_setzero_si512());
        // Software-pipelined: a tile load waits until the stores it reads
        // have left the store buffer, and a vector load of a tile's store
        // does too. So block b + AHEAD is unpacked after block b's weights
        // are loaded, and each chunk's sums are finished after the next
        // chunk's products are asked for.
        for b in 0..AHEAD.min(blocks) {
            unpack_block(codes.add(b * 1024), steps(b), pf);
        }
        // The block and chunk of each of the last SUMS chunks issued.
        let mut issued_as = [(0usize, 0usize); SUMS];
        let mut issued = 0usize;
        let finish = |acc: &mut [__m512i], i: usize, (b, c): (usize, usize)| {
            let first = c * m;
            for j in 0..m.min(n - first) {
                let s = _mm512_load_si512(sums(i).add(16 * j).cast());
                sums_as.add(acc.get_unchecked_mut(first + j), s, group.as_ptr(), first + j, b);
            }
        };
        for b in 0..blocks {
            load_weights(steps(b));
            if b + AHEAD < blocks {
                unpack_block(codes.add((b + AHEAD) * 1024), steps(b + AHEAD), pf);
            }
            for c in 0..chunks {
                let a = tokens.chunk(b, c);
                if issued & 1 == 0 {
                    chunk_products::<2>(a, m, sums(issued));
                } else {
                    chunk_products::<3>(a, m, sums(issued));
                }
                issued_as[issued % SUMS] = (b, c);
                issued += 1;
                if issued > LAG {
                    let i = issued - 1 - LAG;
                    finish(&mut acc, i, issued_as[i % SUMS]);
                }
            }
        }
        for i in issued.saturating_sub(LAG)..issued {
            finish(&mut acc, i, issued_as[i % SUMS]);
        }
        let live = (rows - 16 * g).min(16);
        for (t, acc) in acc.iter().enumerate() {
            out[t * stride + 16 * g..][..live].copy_from_slice(&S::lanes(*acc)[..live]);
        }
    }
    asm!("tilerelease", options(nostack, preserves_flags, nomem));
}
