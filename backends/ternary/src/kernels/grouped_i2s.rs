//! I2_S matrices regrouped at load for the AVX-512 kernels: `grouped`'s
//! "lanes = rows" layout (per group of 16 rows, per 256 weights 16 lines,
//! dword lane r of line l holding weights 16 l..16 l + 16 of row r, plane
//! p of byte j at bits 2p: weight 16 l + 4 p + j) with no scales, I2_S
//! having one per matrix. As the file holds them a group's rows are 16
//! streams read across with the activations interleaved to match; grouped,
//! one stream whose integer dots run across every block with no finish
//! until the row's end, and whose lines are AMX's tile B layout as they
//! are (`x86/amx.rs`), so prompts and sequences decoded together go
//! through the tiles as TQ2_0 does.
//!
//! Every group holds 16 rows, a matrix's last filled out with zero rows
//! whose dots are never stored. The results are the integer dots
//! `i2s_rows` gives on the file's rows, so the same bits after the finish.

use super::grouped::{groups_of, lane_place, span_of, ungrouped_tokens, TokensKernel, GROUP_ROWS};
use super::{i2s_rows_prepared, i2s_rows_tokens, isa, Isa, Prepared, Staging};

/// Bytes of one group of 16 rows of `blocks` 256-weight blocks.
pub fn i2s_group_bytes(blocks: usize) -> usize {
    1024 * blocks
}

/// Bytes of `rows` consecutive rows regrouped, in whole groups.
pub fn i2s_grouped_len(rows: usize, blocks: usize) -> usize {
    rows.div_ceil(GROUP_ROWS) * i2s_group_bytes(blocks)
}

/// Whether models regroup their I2_S matrices of `cols` columns: where the
/// kernels read the regrouped layout natively (AVX-512 VNNI) and rows are
/// whole 256-weight blocks (2B4T's are; I2_S's own blocks are 128), and
/// no more than `I2S_GROUPED_MAX_COLS` of them.
pub fn i2s_grouping(cols: usize) -> bool {
    isa() == Isa::Avx512Vnni && cols.is_multiple_of(256) && cols <= I2S_GROUPED_MAX_COLS
}

/// The widest rows the AVX-512 kernels take regrouped: their int32 chains
/// run a whole row and hold plane 3 in place (64 times its codes, up to
/// 128 x 128 a weight), one chain for a quarter of a row's weights.
pub const I2S_GROUPED_MAX_COLS: usize = 1 << 19;

/// `src`: I2_S rows as the file holds them (`blocks` 256-weight blocks
/// each, 64 bytes per block), into `dst` (`i2s_grouped_len` bytes)
/// regrouped; rows past the matrix's end are zeros.
///
/// Line l of a block takes weights 16 l..16 l + 16, which the file holds
/// at one shift in 16 consecutive bytes (in 128-weight block
/// 2b + l / 8, bytes 16 (l % 2).., bits 6 - 2 ((l % 8) / 2)): those bytes
/// shifted and masked in one u128 give the 16 codes in order, and the
/// lane's 4 bytes are its four 4-code quarters stacked by plane. (Weight
/// by weight through `lane_place`, 2B4T's layers took 2.4 s more to load.)
pub fn group_i2s(src: &[u8], blocks: usize, dst: &mut [u8]) {
    let row_bytes = blocks * 64;
    assert!(row_bytes > 0 && src.len().is_multiple_of(row_bytes), "I2_S rows of {row_bytes} bytes: {}", src.len());
    let rows = src.len() / row_bytes;
    assert_eq!(dst.len(), i2s_grouped_len(rows, blocks), "I2_S regrouped bytes for {rows} rows");
    dst.fill(0);
    const LOW_BITS: u128 = u128::from_le_bytes([3; 16]);
    for (group, out) in src.chunks(GROUP_ROWS * row_bytes).zip(dst.chunks_mut(i2s_group_bytes(blocks))) {
        for (r, row) in group.chunks_exact(row_bytes).enumerate() {
            for b in 0..blocks {
                for l in 0..16 {
                    let at = 32 * (2 * b + l / 8) + 16 * (l % 2);
                    let shift = 6 - 2 * ((l % 8) / 2);
                    let bytes: [u8; 16] = row[at..at + 16].try_into().expect("16 bytes");
                    let codes = (u128::from_le_bytes(bytes) >> shift) & LOW_BITS;
                    let quarter = |p: u32| (codes >> (32 * p)) as u32;
                    let lane = quarter(0) | quarter(1) << 2 | quarter(2) << 4 | quarter(3) << 6;
                    out[b * 1024 + 64 * l + 4 * r..][..4].copy_from_slice(&lane.to_le_bytes());
                }
            }
        }
    }
}

/// One regrouped group's first `n` rows back as the file holds them.
fn ungroup_i2s(group: &[u8], n: usize, blocks: usize, out: &mut [u8]) {
    out.fill(0);
    for (r, row) in out.chunks_exact_mut(blocks * 64).take(n).enumerate() {
        for e in 0..blocks * 256 {
            let (l, j, shift) = lane_place(e % 256);
            let code = (group[e / 256 * 1024 + 64 * l + 4 * r + j] >> shift) & 3;
            let i = e % 128;
            row[32 * (e / 128) + i % 32] |= code << (6 - 2 * (i / 32));
        }
    }
}

/// A regrouped I2_S matrix of `rows` rows back as the file holds them.
#[cfg(test)]
pub(crate) fn i2s_file_rows(m: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * blocks * 64];
    for (first, n, group) in groups_of(m, i2s_group_bytes(blocks), rows) {
        ungroup_i2s(group, n, blocks, &mut out[first * blocks * 64..(first + n) * blocks * 64]);
    }
    out
}

/// Rows `first..first + out.len()` of the regrouped I2_S matrix `m`
/// (`blocks` 256-weight blocks per row) against one token: each row's
/// integer dot, `i2s_rows_prepared`'s on the file's rows.
pub fn i2s_grouped_rows(m: &[u8], blocks: usize, first: usize, a: &Prepared, out: &mut [i32]) {
    let span = span_of(m, i2s_group_bytes(blocks), first, out.len());
    assert!(a.q.len() >= blocks * 256, "I2_S activations");
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni {
        // SAFETY: isa() checked AVX-512 F/BW/VNNI; span checked the groups.
        return unsafe { super::x86::i2s_grouped_rows_vnni(span, blocks, a.q, out) };
    }
    let mut rows = vec![0u8; GROUP_ROWS * blocks * 64];
    for (g, n, group) in groups_of(span, i2s_group_bytes(blocks), out.len()) {
        let rows = &mut rows[..n * blocks * 64];
        ungroup_i2s(group, n, blocks, rows);
        i2s_rows_prepared(rows, blocks * 64, a, &mut out[g..g + n]);
    }
}

/// `i2s_grouped_rows` for several tokens: token t's dots of rows
/// `first..first + k` at `out[t * k..][..k]` (k = out.len() / a.len()), as
/// `i2s_rows_tokens` gives them on the file's rows.
/// `staging` serves the AMX kernel (one for every part of a product).
pub fn i2s_grouped_rows_tokens(
    m: &[u8],
    blocks: usize,
    first: usize,
    a: &[&Prepared],
    staging: &Staging,
    out: &mut [i32],
) {
    let n = a.len();
    assert!(n > 0 && out.len().is_multiple_of(n), "I2_S tokens shape");
    let k = out.len() / n;
    let span = span_of(m, i2s_group_bytes(blocks), first, k);
    for a in a {
        assert!(a.q.len() >= blocks * 256, "I2_S tokens");
    }
    let kernel = match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if super::amx() && n >= super::grouped::AMX_MIN_TOKENS => TokensKernel::Amx,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => TokensKernel::Vnni,
        _ => TokensKernel::Ungrouped,
    };
    tokens_with(kernel, span, k, blocks, a, staging, out);
}

/// `i2s_grouped_rows_tokens` on `span` (k rows) with `kernel`, which the
/// CPU must have.
fn tokens_with(
    kernel: TokensKernel,
    span: &[u8],
    k: usize,
    blocks: usize,
    a: &[&Prepared],
    staging: &Staging,
    out: &mut [i32],
) {
    // Only the AMX kernel stages tokens.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = staging;
    let n = a.len();
    let group_bytes = i2s_group_bytes(blocks);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        TokensKernel::Amx => {
            let qs: Vec<&[i8]> = a.iter().map(|a| a.q).collect();
            staging.with(&qs, blocks * 256, |tokens| {
                // SAFETY: the caller checked AMX (amx() or amx_permitted());
                // the kernel checks the groups', tokens' and output's shapes.
                unsafe { super::x86::grouped_rows_tokens_amx(span, k, blocks, tokens, &super::x86::I2sSums, out, k) }
            })
        }
        #[cfg(target_arch = "x86_64")]
        TokensKernel::Vnni => {
            for (g, rows, group) in groups_of(span, group_bytes, k) {
                for t in (0..n).step_by(4) {
                    let out = &mut out[t * k + g..];
                    macro_rules! tokens {
                        ($j:literal) => {
                            // SAFETY: isa() checked AVX-512 F/BW/VNNI; the
                            // kernel checks the group's and the tokens' shapes.
                            unsafe {
                                super::x86::i2s_grouped_rows_tokens_vnni::<$j>(
                                    group,
                                    rows,
                                    blocks,
                                    std::array::from_fn(|i| a[t + i].q),
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
            group_bytes,
            blocks * 64,
            k,
            n,
            out,
            |group, r, rows| ungroup_i2s(group, r, blocks, rows),
            |rows, part| i2s_rows_tokens(rows, blocks * 64, a, part),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random I2_S matrix as the file holds it: codes 0..=2.
    fn matrix(rows: usize, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..rows * blocks * 64)
            .map(|_| {
                (0..4).fold(0u8, |v, k| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    v | (((s % 3) as u8) << (2 * k))
                })
            })
            .collect()
    }

    fn acts(blocks: usize, seed: usize) -> Vec<i8> {
        (0..blocks * 256).map(|i| ((i * 37 + seed * 101) % 255) as i8).collect()
    }

    fn grouped(m: &[u8], rows: usize, blocks: usize) -> Vec<u8> {
        let mut g = vec![0u8; i2s_grouped_len(rows, blocks)];
        group_i2s(m, blocks, &mut g);
        g
    }

    /// Code of weight e of an I2_S row as the file holds it: in 128-weight
    /// blocks of 32 bytes, byte j = e[j] << 6 | e[32 + j] << 4 | e[64 + j] << 2
    /// | e[96 + j].
    fn file_code(row: &[u8], e: usize) -> u8 {
        let i = e % 128;
        (row[32 * (e / 128) + i % 32] >> (6 - 2 * (i / 32))) & 3
    }

    #[test]
    fn regrouping_keeps_every_code() {
        for (rows, blocks) in [(1, 1), (16, 2), (37, 3)] {
            let m = matrix(rows, blocks, 5 + rows as u64);
            let g = grouped(&m, rows, blocks);
            let row_bytes = blocks * 64;
            // Each code where `lane_place` says.
            for (r, row) in m.chunks_exact(row_bytes).enumerate() {
                let group = &g[r / GROUP_ROWS * i2s_group_bytes(blocks)..];
                for e in 0..blocks * 256 {
                    let (l, j, shift) = lane_place(e % 256);
                    let code = (group[e / 256 * 1024 + 64 * l + 4 * (r % GROUP_ROWS) + j] >> shift) & 3;
                    assert_eq!(code, file_code(row, e), "row {r}, weight {e}");
                }
            }
            let mut back = vec![0u8; m.len()];
            for (first, n, group) in groups_of(&g, i2s_group_bytes(blocks), rows) {
                ungroup_i2s(group, n, blocks, &mut back[first * row_bytes..(first + n) * row_bytes]);
            }
            assert_eq!(back, m, "{rows} rows x {blocks} blocks");
        }
    }

    /// Whatever kernel the dispatch picks, and every kernel this CPU has:
    /// the file layout's dots, for one token and for 1 to 9, 16, 17 and 33.
    #[test]
    fn grouped_rows_equal_the_file_rows() {
        for (rows, blocks) in [(16, 1), (37, 3), (64, 2), (5, 2)] {
            let m = matrix(rows, blocks, 11 * rows as u64 + blocks as u64);
            let g = grouped(&m, rows, blocks);
            let row_bytes = blocks * 64;
            let toks: Vec<Vec<i8>> = (0..33).map(|t| acts(blocks, t)).collect();
            let prepared: Vec<Prepared> = toks.iter().map(|q| Prepared::new(q)).collect();
            for first in (0..rows).step_by(GROUP_ROWS) {
                for end in (first + 1..=rows).filter(|&e| e.is_multiple_of(GROUP_ROWS) || e == rows) {
                    let mut want = vec![0i32; end - first];
                    i2s_rows_prepared(&m[first * row_bytes..end * row_bytes], row_bytes, &prepared[0], &mut want);
                    let mut got = vec![0i32; end - first];
                    i2s_grouped_rows(&g, blocks, first, &prepared[0], &mut got);
                    assert_eq!(got, want, "{rows} x {blocks}: rows {first}..{end}");
                }
            }
            for n in (1..=9).chain([16, 17, 33]) {
                let a: Vec<&Prepared> = prepared[..n].iter().collect();
                let first = if rows > GROUP_ROWS { GROUP_ROWS } else { 0 };
                let k = rows - first;
                let mut want = vec![0i32; n * k];
                i2s_rows_tokens(&m[first * row_bytes..], row_bytes, &a, &mut want);
                let mut got = vec![0i32; n * k];
                i2s_grouped_rows_tokens(&g, blocks, first, &a, &Staging::default(), &mut got);
                assert_eq!(got, want, "{rows} x {blocks}, {n} tokens from row {first}");
                for kernel in super::super::grouped::token_kernels() {
                    let mut got = vec![i32::MIN; n * k];
                    let span = span_of(&g, i2s_group_bytes(blocks), first, k);
                    tokens_with(kernel, span, k, blocks, &a, &Staging::default(), &mut got);
                    assert_eq!(got, want, "{kernel:?}: {rows} x {blocks}, {n} tokens from row {first}");
                }
            }
        }
    }

    /// The widest rows regrouped at the extremes (every code 2, every
    /// activation -128 or 127): the kernels' int32 chains, which hold
    /// plane 3 at 64 times its codes, give the exact dots; wider rows are
    /// not regrouped.
    #[test]
    fn the_widest_grouped_rows_give_exact_dots_at_the_extremes() {
        let (rows, blocks) = (GROUP_ROWS, I2S_GROUPED_MAX_COLS / 256);
        let m = vec![0xaau8; rows * blocks * 64];
        let g = grouped(&m, rows, blocks);
        for a in [-128i8, 127] {
            let q = vec![a; blocks * 256];
            let want = 2 * i32::from(a) * I2S_GROUPED_MAX_COLS as i32;
            let mut got = vec![0i32; rows];
            i2s_grouped_rows(&g, blocks, 0, &Prepared::new(&q), &mut got);
            assert_eq!(got, vec![want; rows], "one token of {a}");
            for n in [2, 3, 4] {
                let prepared: Vec<Prepared> = (0..n).map(|_| Prepared::new(&q)).collect();
                let a_refs: Vec<&Prepared> = prepared.iter().collect();
                let mut got = vec![0i32; n * rows];
                i2s_grouped_rows_tokens(&g, blocks, 0, &a_refs, &Staging::default(), &mut got);
                assert_eq!(got, vec![want; n * rows], "{n} tokens of {a}");
            }
        }
        assert!(i2s_grouping(256) == (isa() == Isa::Avx512Vnni));
        assert!(!i2s_grouping(I2S_GROUPED_MAX_COLS + 256));
    }

    /// One staging shared by the parts of a product (as `linear` shares
    /// it): the rows of every part right, and a staging made from other
    /// activations never read in their place.
    #[test]
    fn a_shared_staging_serves_every_part_and_only_its_own_activations() {
        let (rows, blocks) = (64, 2);
        let m = matrix(rows, blocks, 5);
        let g = grouped(&m, rows, blocks);
        let row_bytes = blocks * 64;
        let toks: Vec<Vec<i8>> = (0..10).map(|t| acts(blocks, t)).collect();
        let prepared: Vec<Prepared> = toks.iter().map(|q| Prepared::new(q)).collect();
        let (a, b): (Vec<&Prepared>, Vec<&Prepared>) = (prepared[..5].iter().collect(), prepared[5..].iter().collect());
        let qs: Vec<&[i8]> = toks[..5].iter().map(|q| &q[..]).collect();
        for kernel in super::super::grouped::token_kernels() {
            let staging = Staging::new(&qs, blocks * 256);
            for (set, first, k) in [(&a, 0, 32), (&a, 32, 32), (&b, 16, 48), (&a, 48, 16)] {
                let mut want = vec![0i32; 5 * k];
                i2s_rows_tokens(&m[first * row_bytes..(first + k) * row_bytes], row_bytes, set, &mut want);
                let mut got = vec![i32::MIN; 5 * k];
                let span = span_of(&g, i2s_group_bytes(blocks), first, k);
                tokens_with(kernel, span, k, blocks, set, &staging, &mut got);
                assert_eq!(got, want, "{kernel:?}: rows {first}.. of {k}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a group's first")]
    fn a_run_must_start_on_a_group() {
        let g = grouped(&matrix(37, 1, 3), 37, 1);
        let q = acts(1, 0);
        i2s_grouped_rows(&g, 1, 8, &Prepared::new(&q), &mut [0; 8]);
    }
}
