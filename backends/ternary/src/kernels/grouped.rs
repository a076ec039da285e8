//! TQ2_0 matrices regrouped at load for the AVX-512 kernels.
//!
//! As the file holds them, 16 rows read across are 16 streams of 66-byte
//! blocks: each 64-byte load straddles two lines, each block needs its own
//! prefetches and the 16 scales a gather, and 16 rows' partial sums need
//! an add tree per block. From memory that kernel read at 74-86% of one
//! core's read bandwidth. Regrouped, a group of 16 rows is one stream read
//! front to back: first the rows' f16 scales of every block (2 bytes per
//! row and block, padded to a 64-byte line), then per block 16 lines in
//! which dword lane r holds 4 weights of row r ("lanes = rows",
//! `lane_place`). Each line is unpacked once and each of its 4 planes
//! meets one broadcast dword of a token's activations in one `vpdpbusd`:
//! lane r then sums row r with no add tree. `cargo bench -p
//! bitnet-host-tests --bench kernels -- --bench tq2`, one thread: in L1
//! 35.2-35.6 GB/s against 24.7-27.0 for the file's layout, from memory
//! 91-100% of the read bandwidth against 74-84%; against 4 tokens in L1
//! 226 multiply-adds/ns against 129 for the same groups read 16 rows
//! across with an add tree (the layout of this module's first version).
//!
//! Every group holds 16 rows: a matrix's last is filled out with zero rows,
//! whose results are never stored. A product over rows `first..` starts at
//! a multiple of 16 and runs to a multiple of 16 or the matrix's end
//! (`linear`'s parts do). The codes and scales are the file's, moved: the
//! results equal `tq2_rows` on the file's rows bit for bit.
//!
//! Q6_K output matrices regrouped by rows (208 bytes per row and block
//! after the scales) read 10% faster in L1 but 5% slower from memory (12.7
//! against 13.5 GB/s; still so with each row's block padded to 256 aligned
//! bytes), so they stay as the file holds them.

use super::{isa, tq2_rows, tq2_rows_tokens, Isa, Prepared, Staging};

/// Rows per group: one per f32 lane of the AVX-512 kernels.
pub const GROUP_ROWS: usize = 16;

/// TQ2_0 bytes per block as the file holds it: 64 of codes, 2 of scale.
const BLOCK: usize = 66;

/// Bytes of the scales that open a group of `blocks` blocks: 2 per row
/// and block, padded to a line so the codes start on one.
pub(crate) fn scales_bytes(blocks: usize) -> usize {
    (2 * GROUP_ROWS * blocks).next_multiple_of(64)
}

/// Bytes of one group of 16 rows of `blocks` blocks.
pub fn group_bytes(blocks: usize) -> usize {
    scales_bytes(blocks) + 64 * GROUP_ROWS * blocks
}

/// Bytes of `rows` consecutive rows regrouped, starting at a group's start:
/// whole groups (a matrix's last one filled out with zero rows).
pub fn grouped_len(rows: usize, blocks: usize) -> usize {
    rows.div_ceil(GROUP_ROWS) * group_bytes(blocks)
}

/// Whether models regroup their TQ2_0 matrices: where the kernels read the
/// regrouped layout natively (AVX-512 VNNI). Elsewhere the products would
/// undo the regrouping per group (`tq2_grouped_rows` works on every CPU,
/// for tests), so the file's layout stays.
pub fn tq2_grouping() -> bool {
    isa() == Isa::Avx512Vnni
}

/// Where weight e (0..256) of a block sits in a group's line l: byte
/// 4 * row + (e % 4) of line e / 16, at bits 2 * ((e / 4) % 4).
pub(super) fn lane_place(e: usize) -> (usize, usize, u32) {
    (e / 16, e % 4, 2 * ((e / 4) % 4) as u32)
}

/// `src`: TQ2_0 rows as the file holds them (`blocks` blocks each), into
/// `dst` (`grouped_len` bytes) regrouped: per group of 16 rows, the f16
/// scales of block 0's rows, block 1's, ... (padded to a line), then per
/// block 16 lines, dword r of line l holding weights 16 l..16 l + 16 of
/// row r (`lane_place`). Rows past the matrix's end are zeros.
pub fn group_tq2(src: &[u8], blocks: usize, dst: &mut [u8]) {
    let row_bytes = blocks * BLOCK;
    assert!(row_bytes > 0 && src.len().is_multiple_of(row_bytes), "TQ2_0 rows of {row_bytes} bytes: {}", src.len());
    let rows = src.len() / row_bytes;
    assert_eq!(dst.len(), grouped_len(rows, blocks), "TQ2_0 regrouped bytes for {rows} rows");
    dst.fill(0);
    const LOW_BITS: u128 = u128::from_le_bytes([3; 16]);
    for (group, out) in src.chunks(GROUP_ROWS * row_bytes).zip(dst.chunks_mut(group_bytes(blocks))) {
        let (scales, codes) = out.split_at_mut(scales_bytes(blocks));
        for (r, row) in group.chunks_exact(row_bytes).enumerate() {
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                scales[(b * GROUP_ROWS + r) * 2..][..2].copy_from_slice(&block[64..]);
                // Line l takes weights 16 l..16 l + 16, which the file
                // holds at one shift in 16 consecutive bytes
                // (32 (l / 8) + 16 (l % 2).., bits 2 ((l % 8) / 2)):
                // shifted and masked in one u128 they are the 16 codes in
                // order, and the lane's 4 bytes their four quarters
                // stacked by plane. (Weight by weight, this was half of a
                // 2B4T-shaped file's load.)
                for l in 0..16 {
                    let at = 32 * (l / 8) + 16 * (l % 2);
                    let bytes: [u8; 16] = block[at..at + 16].try_into().expect("16 bytes");
                    let codes16 = (u128::from_le_bytes(bytes) >> (2 * ((l % 8) / 2))) & LOW_BITS;
                    let quarter = |p: u32| (codes16 >> (32 * p)) as u32;
                    let lane = quarter(0) | quarter(1) << 2 | quarter(2) << 4 | quarter(3) << 6;
                    codes[b * 1024 + 64 * l + 4 * r..][..4].copy_from_slice(&lane.to_le_bytes());
                }
            }
        }
    }
}

/// One regrouped group's first `n` rows back as the file holds them, into
/// `out` (n x blocks x 66 bytes).
fn ungroup(group: &[u8], n: usize, blocks: usize, out: &mut [u8]) {
    let (scales, codes) = group.split_at(scales_bytes(blocks));
    out.fill(0);
    for (r, row) in out.chunks_exact_mut(blocks * BLOCK).take(n).enumerate() {
        for (b, block) in row.chunks_exact_mut(BLOCK).enumerate() {
            block[64..].copy_from_slice(&scales[(b * GROUP_ROWS + r) * 2..][..2]);
            for e in 0..256 {
                let (l, j, shift) = lane_place(e);
                let code = (codes[b * 1024 + 64 * l + 4 * r + j] >> shift) & 3;
                block[32 * (e / 128) + e % 32] |= code << (2 * ((e % 128) / 32));
            }
        }
    }
}

/// The regrouped bytes of rows `first..first + rows` of `m`, checked: the
/// run starts on a group and ends on one or at the matrix's end.
#[track_caller]
fn span(m: &[u8], blocks: usize, first: usize, rows: usize) -> &[u8] {
    span_of(m, group_bytes(blocks), first, rows)
}

/// `span` for groups of `group_bytes` bytes (TQ2_0's or I2_S's).
#[track_caller]
pub(super) fn span_of(m: &[u8], group_bytes: usize, first: usize, rows: usize) -> &[u8] {
    assert!(first.is_multiple_of(GROUP_ROWS), "regrouped rows from {first}, not a group's first");
    let start = first / GROUP_ROWS * group_bytes;
    let end = start + rows.div_ceil(GROUP_ROWS) * group_bytes;
    assert!(
        end <= m.len() && (rows.is_multiple_of(GROUP_ROWS) || end == m.len()),
        "regrouped rows {first}..{}: past the matrix or ending inside a group",
        first + rows
    );
    &m[start..end]
}

/// Groups of `span` bytes, each with its rows: (first row, rows, bytes).
fn groups(span: &[u8], rows: usize, blocks: usize) -> impl Iterator<Item = (usize, usize, &[u8])> {
    groups_of(span, group_bytes(blocks), rows)
}

/// `groups` for groups of `group_bytes` bytes (TQ2_0's or I2_S's).
pub(super) fn groups_of(span: &[u8], group_bytes: usize, rows: usize) -> impl Iterator<Item = (usize, usize, &[u8])> {
    span.chunks_exact(group_bytes)
        .enumerate()
        .map(move |(g, bytes)| (g * GROUP_ROWS, (rows - g * GROUP_ROWS).min(GROUP_ROWS), bytes))
}

/// Rows `first..first + out.len()` of the regrouped TQ2_0 matrix `m`
/// (`blocks` blocks per row) against Q8K activations: `tq2_rows` of the
/// file's rows, bit for bit.
pub fn tq2_grouped_rows(
    m: &[u8],
    blocks: usize,
    first: usize,
    a: &Prepared,
    bsums: &[i32],
    d: &[f32],
    out: &mut [f32],
) {
    let span = span(m, blocks, first, out.len());
    super::check_blocks(blocks * BLOCK, BLOCK, 256, a.q.len(), blocks);
    assert!(bsums.len() >= blocks && d.len() >= blocks, "TQ2_0 activations");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW/VNNI; Prepared::new
        // interleaved for it; span checked the groups' bytes.
        Isa::Avx512Vnni => unsafe { super::x86::tq2_grouped_rows_vnni(span, blocks, a.q, bsums, d, out) },
        _ => {
            let mut rows = vec![0u8; GROUP_ROWS * blocks * BLOCK];
            for (g, n, group) in groups(span, out.len(), blocks) {
                let rows = &mut rows[..n * blocks * BLOCK];
                ungroup(group, n, blocks, rows);
                tq2_rows(rows, blocks * BLOCK, a, bsums, d, &mut out[g..g + n]);
            }
        }
    }
}

/// `tq2_grouped_rows` for several tokens: rows `first..first + k` against
/// each token's activations, token t's results at `out[t * k..][..k]`
/// (k = out.len() / a.len()), as `tq2_rows_tokens` gives the file's rows.
#[allow(clippy::too_many_arguments)]
pub fn tq2_grouped_rows_tokens(
    m: &[u8],
    blocks: usize,
    first: usize,
    a: &[&Prepared],
    bsums: &[&[i32]],
    d: &[&[f32]],
    staging: &Staging,
    out: &mut [f32],
) {
    let n = a.len();
    assert!(n > 0 && out.len().is_multiple_of(n) && bsums.len() == n && d.len() == n, "TQ2_0 tokens shape");
    let k = out.len() / n;
    let span = span(m, blocks, first, k);
    for t in 0..n {
        super::check_blocks(blocks * BLOCK, BLOCK, 256, a[t].q.len(), blocks);
        assert!(bsums[t].len() >= blocks && d[t].len() >= blocks, "TQ2_0 tokens shape");
    }
    let kernel = match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if super::amx() && n >= AMX_MIN_TOKENS => TokensKernel::Amx,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => TokensKernel::Vnni,
        _ => TokensKernel::Ungrouped,
    };
    grouped_tokens_with(kernel, span, k, blocks, a, bsums, d, staging, out);
}

/// Which kernel reads a run of groups against several tokens.
#[derive(Clone, Copy, Debug)]
pub(super) enum TokensKernel {
    /// AVX-512 VNNI, up to 4 tokens per pass over a group.
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// AMX tiles, up to 16 tokens per pass over a group.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// Each group ungrouped and given to `tq2_rows_tokens` (any CPU).
    Ungrouped,
}

/// `tq2_grouped_rows_tokens` on `span` (k rows) with `kernel`, which the
/// CPU must have.
#[allow(clippy::too_many_arguments)]
fn grouped_tokens_with(
    kernel: TokensKernel,
    span: &[u8],
    k: usize,
    blocks: usize,
    a: &[&Prepared],
    bsums: &[&[i32]],
    d: &[&[f32]],
    staging: &Staging,
    out: &mut [f32],
) {
    // Only the AMX kernel stages tokens.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = staging;
    let n = a.len();
    match kernel {
        #[cfg(target_arch = "x86_64")]
        TokensKernel::Amx => tq2_grouped_tokens_amx(span, k, blocks, a, bsums, d, staging, out),
        #[cfg(target_arch = "x86_64")]
        TokensKernel::Vnni => {
            for (g, rows, group) in groups(span, k, blocks) {
                for t in (0..n).step_by(4) {
                    let out = &mut out[t * k + g..];
                    macro_rules! tokens {
                        ($j:literal) => {
                            // SAFETY: isa() checked AVX-512 F/BW/VNNI; the
                            // kernel checks the group's and the tokens' shapes.
                            unsafe {
                                super::x86::tq2_grouped_rows_tokens_vnni::<$j>(
                                    group,
                                    rows,
                                    blocks,
                                    std::array::from_fn(|i| a[t + i].q),
                                    super::first_n(&bsums[t..]),
                                    super::first_n(&d[t..]),
                                    out,
                                    k,
                                )
                            }
                        };
                    }
                    match n - t {
                        1 => tokens!(1),
                        2 => tokens!(2),
                        3 => tokens!(3),
                        _ => tokens!(4),
                    }
                }
            }
        }
        TokensKernel::Ungrouped => ungrouped_tokens(
            span,
            group_bytes(blocks),
            blocks * BLOCK,
            k,
            n,
            out,
            |group, r, rows| ungroup(group, r, blocks, rows),
            |rows, part| tq2_rows_tokens(rows, blocks * BLOCK, a, bsums, d, part),
        ),
    }
}

/// A regrouped product over n tokens where no kernel reads the groups
/// (CPUs without AVX-512, and tests): each group of `span` put back as
/// the file holds it (`ungroup(group, its rows, buffer)`) and given to
/// `rows_tokens(rows, part)`, whose token-major part goes to `out` (token
/// t's k rows at t * k).
#[allow(clippy::too_many_arguments)]
pub(super) fn ungrouped_tokens<T: Copy + Default>(
    span: &[u8],
    group_bytes: usize,
    row_bytes: usize,
    k: usize,
    n: usize,
    out: &mut [T],
    ungroup: impl Fn(&[u8], usize, &mut [u8]),
    rows_tokens: impl Fn(&[u8], &mut [T]),
) {
    assert_eq!(out.len(), k * n, "{n} tokens x {k} rows");
    let mut rows = vec![0u8; GROUP_ROWS * row_bytes];
    let mut part = vec![T::default(); GROUP_ROWS * n];
    for (g, r, group) in groups_of(span, group_bytes, k) {
        let rows = &mut rows[..r * row_bytes];
        ungroup(group, r, rows);
        let part = &mut part[..r * n];
        rows_tokens(rows, part);
        for (t, part) in part.chunks_exact(r).enumerate() {
            out[t * k + g..][..r].copy_from_slice(part);
        }
    }
}

/// The fewest tokens the TQ2_0 and I2_S products give to AMX. Since the
/// VNNI kernels keep the 2-bit planes in place (4 unpacking operations a
/// line, not 7), they are ahead from memory below 4 tokens: a 335 MB
/// matrix for 2 tokens (one thread, `kernels --bench tokens`) takes I2_S
/// 23.2 ms against AMX's 27.2-28.1, TQ2_0 24.9 against 29.2-29.6; at 4
/// both take 30-33. `bitnet-host bench --streams 2,3` (2 threads, 2B4T
/// shape) went from 52.9-53.9 / 71.2-75.5 tokens/s with AMX to 58.3 /
/// 76.8-77.7 (I2_S), TQ2_0 48.7-49.9 -> 52.7-55.0 at 2 streams. (With 7
/// operations a line AMX had been ahead from 2 tokens.)
#[cfg(target_arch = "x86_64")]
pub(super) const AMX_MIN_TOKENS: usize = 4;

/// `tq2_grouped_rows_tokens` with AMX: each block of each group unpacked
/// once for all the tokens, 16 at a time through the tiles.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn tq2_grouped_tokens_amx(
    span: &[u8],
    k: usize,
    blocks: usize,
    a: &[&Prepared],
    bsums: &[&[i32]],
    d: &[&[f32]],
    staging: &Staging,
    out: &mut [f32],
) {
    let qs: Vec<&[i8]> = a.iter().map(|a| a.q).collect();
    let sums = super::x86::Tq2Sums { bsums, d };
    staging.with(&qs, blocks * 256, |tokens| {
        // SAFETY: the caller checked AMX (amx() or amx_permitted()); the
        // kernel checks the groups', tokens', sums' and output's shapes.
        unsafe { super::x86::grouped_rows_tokens_amx(span, k, blocks, tokens, &sums, out, k) }
    })
}

#[cfg(test)]
/// Every kernel for several tokens this CPU has, whatever the dispatch
/// picks (`BITNET_KERNEL` forces some off).
pub(super) fn token_kernels() -> Vec<TokensKernel> {
    #[allow(unused_mut)]
    let mut kernels = vec![TokensKernel::Ungrouped];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("avx2") && has!("f16c") {
            kernels.push(TokensKernel::Vnni);
            if super::x86::amx_permitted() {
                kernels.push(TokensKernel::Amx);
            } else {
                eprintln!("no AMX here: its TQ2_0 and I2_S kernel is not tested");
            }
        }
    }
    kernels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random TQ2_0 matrix as the file holds it: codes 0..=2, small scales.
    fn matrix(rows: usize, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut m = vec![0u8; rows * blocks * BLOCK];
        for block in m.chunks_exact_mut(BLOCK) {
            for b in &mut block[..64] {
                *b = (0..4).fold(0u8, |v, k| v | (((next() % 3) as u8) << (2 * k)));
            }
            let scale = half::f16::from_f32((next() % 64) as f32 / 256.0 + 0.01);
            block[64..].copy_from_slice(&scale.to_le_bytes());
        }
        m
    }

    fn acts(blocks: usize, seed: usize) -> (Vec<i8>, Vec<i32>, Vec<f32>) {
        let q: Vec<i8> = (0..blocks * 256).map(|i| ((i * 37 + seed * 101) % 255) as i8).collect();
        let bsums = q.chunks(256).map(|b| b.iter().map(|&x| i32::from(x)).sum()).collect();
        let d = (0..blocks).map(|b| 0.01 + (b + seed) as f32 * 1e-3).collect();
        (q, bsums, d)
    }

    fn grouped(m: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
        let mut g = vec![0u8; grouped_len(rows, blocks)];
        group_tq2(m, blocks, &mut g);
        g
    }

    /// Code of weight e of a TQ2_0 block as the file holds it: byte
    /// 32 * (e / 128) + e % 32, bits 2 * ((e % 128) / 32).
    fn file_code(block: &[u8], e: usize) -> u8 {
        (block[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3
    }

    #[test]
    fn regrouping_keeps_every_block_and_scale() {
        for (rows, blocks) in [(1, 1), (16, 2), (37, 3), (48, 1)] {
            let m = matrix(rows, blocks, 7 + rows as u64);
            let g = grouped(&m, rows, blocks);
            let row_bytes = blocks * BLOCK;
            // Each code where `lane_place` says.
            for (r, row) in m.chunks_exact(row_bytes).enumerate() {
                let codes = &g[r / GROUP_ROWS * group_bytes(blocks) + scales_bytes(blocks)..];
                for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                    for e in 0..256 {
                        let (l, j, shift) = lane_place(e);
                        let code = (codes[b * 1024 + 64 * l + 4 * (r % GROUP_ROWS) + j] >> shift) & 3;
                        assert_eq!(code, file_code(block, e), "row {r}, block {b}, weight {e}");
                    }
                }
            }
            let mut back = vec![0u8; m.len()];
            for (first, n, group) in groups(&g, rows, blocks) {
                ungroup(group, n, blocks, &mut back[first * row_bytes..(first + n) * row_bytes]);
            }
            assert_eq!(back, m, "{rows} rows x {blocks} blocks");
            // Lines: every group but the last starts 64-byte aligned
            // relative to the matrix, so its codes do too.
            assert!(group_bytes(blocks).is_multiple_of(64));
        }
    }

    /// Whatever kernel the dispatch picks (AVX-512 reads the groups; other
    /// CPUs, and the forced runs of scripts/test, ungroup them): the file
    /// layout's results, bit for bit, for one token and for 1 to 9.
    #[test]
    fn grouped_rows_equal_the_file_rows() {
        for (rows, blocks) in [(16, 1), (37, 3), (64, 2), (5, 2)] {
            let m = matrix(rows, blocks, 11 * rows as u64 + blocks as u64);
            let g = grouped(&m, rows, blocks);
            let row_bytes = blocks * BLOCK;
            let toks: Vec<_> = (0..33).map(|t| acts(blocks, t)).collect();
            let prepared: Vec<Prepared> = toks.iter().map(|(q, _, _)| Prepared::new(q)).collect();
            // One token, over every run of whole groups a part may take.
            for first in (0..rows).step_by(GROUP_ROWS) {
                for end in (first + 1..=rows).filter(|&e| e.is_multiple_of(GROUP_ROWS) || e == rows) {
                    let (_, bsums, d) = &toks[0];
                    let mut want = vec![0f32; end - first];
                    tq2_rows(&m[first * row_bytes..end * row_bytes], row_bytes, &prepared[0], bsums, d, &mut want);
                    let mut got = vec![0f32; end - first];
                    tq2_grouped_rows(&g, blocks, first, &prepared[0], bsums, d, &mut got);
                    assert_eq!(got, want, "{rows} x {blocks}: rows {first}..{end}");
                }
            }
            for n in (1..=9).chain([16, 17, 33]) {
                let a: Vec<&Prepared> = prepared[..n].iter().collect();
                let bsums: Vec<&[i32]> = toks[..n].iter().map(|t| &t.1[..]).collect();
                let d: Vec<&[f32]> = toks[..n].iter().map(|t| &t.2[..]).collect();
                let first = if rows > GROUP_ROWS { GROUP_ROWS } else { 0 };
                let k = rows - first;
                let mut want = vec![0f32; n * k];
                for t in 0..n {
                    tq2_rows(&m[first * row_bytes..], row_bytes, a[t], bsums[t], d[t], &mut want[t * k..][..k]);
                }
                let mut got = vec![0f32; n * k];
                tq2_grouped_rows_tokens(&g, blocks, first, &a, &bsums, &d, &Staging::default(), &mut got);
                assert_eq!(got, want, "{rows} x {blocks}, {n} tokens from row {first}");
                for kernel in token_kernels() {
                    let mut got = vec![f32::NAN; n * k];
                    grouped_tokens_with(
                        kernel,
                        span(&g, blocks, first, k),
                        k,
                        blocks,
                        &a,
                        &bsums,
                        &d,
                        &Staging::default(),
                        &mut got,
                    );
                    assert_eq!(got, want, "{kernel:?}: {rows} x {blocks}, {n} tokens from row {first}");
                }
            }
        }
    }

    /// Rows `first..first + n` of a regrouped 37-row matrix, one token.
    fn run_of_37_rows(first: usize, n: usize) {
        let (rows, blocks) = (37, 1);
        let g = grouped(&matrix(rows, blocks, 3), rows, blocks);
        let (q, bsums, d) = acts(blocks, 0);
        tq2_grouped_rows(&g, blocks, first, &Prepared::new(&q), &bsums, &d, &mut vec![0f32; n]);
    }

    #[test]
    #[should_panic(expected = "not a group's first")]
    fn a_run_must_start_on_a_group() {
        run_of_37_rows(8, 8);
    }

    #[test]
    #[should_panic(expected = "ending inside a group")]
    fn a_run_must_end_on_a_group_or_the_matrix_end() {
        run_of_37_rows(16, 8);
    }
}
