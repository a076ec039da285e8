//! Q6_K matrices with each block's 256 values reordered at load for the
//! AVX-512 kernels. Q6_K's 16 scales each cover 16 consecutive values;
//! read in order, a 64-value vector holds four scales' values, so a
//! block's dot takes `vpmaddubsw` then `vpmaddwd` with the scales spread
//! (three operations per 64 values and token, four `vpermw` per block).
//! Permuted, dword lane j of each of the block's four vectors holds values
//! of sub-block j only: four chained `vpdpbusd` give the 16 sub-block dots
//! in 16 lanes, and one `vpmulld` applies the 16 scales. Same integers,
//! so the same bits; in L1 one token went 33 -> 47 multiply-adds/ns and
//! four tokens 61 -> 94 (a speed prototype, one thread). Only the values
//! move: scales, the f16 d and the bytes per block are the file's, so the
//! matrix reads from memory as before and takes no more room.
//!
//! Value e = 16 j + 4 v + i (sub-block j, i < 4) is stored where the
//! file's order keeps value 64 v + 4 j + i (`permuted_at`); the
//! activations are permuted the same way (`permute_q6k_acts`).

use super::vocab::{q6k_rows, q6k_rows_tokens, Q6K_BLOCK};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{isa, Isa};

/// Whether the kernels here read permuted Q6_K blocks natively (AVX-512
/// VNNI); elsewhere `q6k_permuted_rows` restores the file's order first,
/// so a model permutes its output matrix only where this holds.
pub fn q6k_permuting() -> bool {
    isa() == Isa::Avx512Vnni
}

/// Where a permuted block stores value e of the file's order.
const fn permuted_at(e: usize) -> usize {
    let (j, v, i) = (e / 16, (e / 4) % 4, e % 4);
    64 * v + 4 * j + i
}

/// The 256 6-bit values of a Q6_K block, in order (`q6k_value` for
/// every e, a byte triple at a time: a model permutes 1.3 M blocks).
fn values(block: &[u8]) -> [u8; 256] {
    let mut v = [0u8; 256];
    for half in 0..2 {
        let (ql, qh) = (&block[64 * half..][..64], &block[128 + 32 * half..][..32]);
        let v = &mut v[128 * half..][..128];
        for l in 0..32 {
            let (a, b, h) = (ql[l], ql[l + 32], qh[l]);
            v[l] = (a & 0xf) | (h & 3) << 4;
            v[l + 32] = (b & 0xf) | (h >> 2 & 3) << 4;
            v[l + 64] = a >> 4 | (h >> 4 & 3) << 4;
            v[l + 96] = b >> 4 | (h >> 6 & 3) << 4;
        }
    }
    v
}

/// Write 256 6-bit values into a Q6_K block's low-nibble and high-bit
/// bytes (`q6k_value`'s inverse), leaving its scales and d alone.
fn set_values(block: &mut [u8], v: &[u8; 256]) {
    for half in 0..2 {
        for l in 0..32 {
            let at = |part: usize| v[128 * half + 32 * part + l];
            block[64 * half + l] = (at(0) & 0xf) | (at(2) & 0xf) << 4;
            block[64 * half + l + 32] = (at(1) & 0xf) | (at(3) & 0xf) << 4;
            block[128 + 32 * half + l] = (0..4).fold(0, |h, part| h | (at(part) >> 4) << (2 * part));
        }
    }
}

/// `permuted_at` of every value.
const PERMUTED_AT: [u8; 256] = {
    let mut at = [0u8; 256];
    let mut e = 0;
    while e < 256 {
        at[e] = permuted_at(e) as u8;
        e += 1;
    }
    at
};

/// Whole Q6_K blocks of `src` into `dst`, each block's values permuted
/// (`inverse`: back to the file's order).
fn permute_blocks(src: &[u8], dst: &mut [u8], inverse: bool) {
    assert!(src.len() == dst.len() && src.len().is_multiple_of(Q6K_BLOCK), "whole Q6_K blocks");
    for (s, d) in src.chunks_exact(Q6K_BLOCK).zip(dst.chunks_exact_mut(Q6K_BLOCK)) {
        let v = values(s);
        let mut out = [0u8; 256];
        for (e, &p) in PERMUTED_AT.iter().enumerate() {
            if inverse {
                out[e] = v[usize::from(p)];
            } else {
                out[usize::from(p)] = v[e];
            }
        }
        d.copy_from_slice(s);
        set_values(d, &out);
    }
}

/// Whole Q6_K blocks of `src` into `dst`, permuted as the AVX-512 kernels
/// read them.
pub fn permute_q6k(src: &[u8], dst: &mut [u8]) {
    permute_blocks(src, dst, false);
}

/// `permute_q6k`'s inverse: the file's blocks again.
pub fn unpermute_q6k(src: &[u8], dst: &mut [u8]) {
    permute_blocks(src, dst, true);
}

/// Activations (whole 256-value blocks) in a permuted block's order, as
/// the products below take them (`inverse`: back to the file's order).
fn permute_acts_blocks(q: &[i8], inverse: bool) -> Vec<i8> {
    let mut out = vec![0i8; q.len() / 256 * 256];
    for (s, d) in q.chunks_exact(256).zip(out.chunks_exact_mut(256)) {
        for e in 0..256 {
            if inverse {
                d[e] = s[permuted_at(e)];
            } else {
                d[permuted_at(e)] = s[e];
            }
        }
    }
    out
}

/// A token's Q8_K activations in a permuted block's order: what
/// `q6k_permuted_rows(_tokens)` take (once per product, not per part).
pub fn permute_q6k_acts(q: &[i8]) -> Vec<i8> {
    permute_acts_blocks(q, false)
}

/// `q6k_rows` of permuted rows against permuted activations `q`
/// (`permute_q6k_acts`; `sums` and `d` as for `q6k_rows`): the same bits
/// as `q6k_rows` of the rows `unpermute_q6k` gives back.
pub fn q6k_permuted_rows(rows: &[u8], row_bytes: usize, q: &[i8], sums: &[i16], d: &[f32], out: &mut [f32]) {
    q6k_permuted_rows_tokens(rows, row_bytes, &[q], &[sums], &[d], out);
}

/// `q6k_rows_tokens` of permuted rows (`q6k_permuted_rows` per token).
pub fn q6k_permuted_rows_tokens(
    rows: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    sums: &[&[i16]],
    d: &[&[f32]],
    out: &mut [f32],
) {
    let (n, m) = (qs.len(), rows.len() / row_bytes.max(1));
    assert!(sums.len() == n && d.len() == n && out.len() == n * m, "Q6_K tokens shape");
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni {
        return super::vocab::q6k_groups(
            16,
            rows,
            row_bytes,
            qs,
            sums,
            d,
            out,
            super::vocab::q6k_tile!(q6k_permuted_rows_tokens_avx512, row_bytes, m),
        );
    }
    // Rows and activations back in the file's order, 32 rows at a time.
    let file_q: Vec<Vec<i8>> = qs.iter().map(|q| permute_acts_blocks(q, true)).collect();
    let qs: Vec<&[i8]> = file_q.iter().map(|q| &q[..]).collect();
    let mut file = vec![0u8; 32 * row_bytes];
    let mut part = vec![0f32; 32 * n];
    for r in (0..m).step_by(32) {
        let k = (m - r).min(32);
        let file = &mut file[..k * row_bytes];
        unpermute_q6k(&rows[r * row_bytes..(r + k) * row_bytes], file);
        let part = &mut part[..k * n];
        if n == 1 {
            q6k_rows(file, row_bytes, qs[0], sums[0], d[0], part);
        } else {
            q6k_rows_tokens(file, row_bytes, &qs, sums, d, part);
        }
        for (t, part) in part.chunks_exact(k).enumerate() {
            out[t * m + r..][..k].copy_from_slice(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;

    #[test]
    fn the_permutation_is_one_to_one_and_keeps_each_value_in_its_sub_block_lane() {
        let mut seen = [false; 256];
        for e in 0..256 {
            let p = permuted_at(e);
            assert!(!seen[p], "{e} -> {p} twice");
            seen[p] = true;
            // Position p's dword lane within its 64-value vector is the sub-block.
            assert_eq!((p % 64) / 4, e / 16, "value {e} at {p}");
        }
    }

    #[test]
    fn block_values_are_the_reference_decoding_and_set_values_inverts_them() {
        let mut rng = Rng::new(43);
        for _ in 0..20 {
            let block: Vec<u8> = (0..Q6K_BLOCK).map(|_| rng.next_u64() as u8).collect();
            let v = values(&block);
            for (e, &x) in v.iter().enumerate() {
                assert_eq!(i32::from(x), super::super::vocab::q6k_value(&block, e).0, "value {e}");
            }
            let mut again = block.clone();
            again[..192].fill(0);
            set_values(&mut again, &v);
            assert_eq!(again, block);
        }
    }

    #[test]
    fn permuted_rows_give_the_file_rows_bits_for_every_token_count() {
        let mut rng = Rng::new(41);
        for (rows, blocks) in [(1usize, 1usize), (16, 2), (17, 3), (37, 10)] {
            let row_bytes = blocks * Q6K_BLOCK;
            let mut file: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next_u64() as u8).collect();
            for b in file.chunks_exact_mut(Q6K_BLOCK) {
                let scale = half::f16::from_f32(0.01 + (b[0] % 16) as f32 / 64.0);
                b[208..].copy_from_slice(&scale.to_le_bytes());
            }
            let mut permuted = vec![0u8; file.len()];
            permute_q6k(&file, &mut permuted);
            assert_ne!(permuted, file);
            let mut back = vec![0u8; file.len()];
            unpermute_q6k(&permuted, &mut back);
            assert_eq!(back, file, "round trip");
            let qs: Vec<Vec<i8>> = (0..9)
                .map(|_| (0..blocks * 256).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect())
                .collect();
            let sums: Vec<Vec<i16>> = qs.iter().map(|q| super::super::q6k_sums(q)).collect();
            let d: Vec<Vec<f32>> = (0..9).map(|_| (0..blocks).map(|_| 0.5 + rng.next_f32()).collect()).collect();
            let permuted_qs: Vec<Vec<i8>> = qs.iter().map(|q| permute_q6k_acts(q)).collect();
            for n in 1..=9 {
                let q: Vec<&[i8]> = qs[..n].iter().map(|q| &q[..]).collect();
                let pq: Vec<&[i8]> = permuted_qs[..n].iter().map(|q| &q[..]).collect();
                let s: Vec<&[i16]> = sums[..n].iter().map(|s| &s[..]).collect();
                let dd: Vec<&[f32]> = d[..n].iter().map(|d| &d[..]).collect();
                let mut want = vec![0f32; rows * n];
                for t in 0..n {
                    q6k_rows(&file, row_bytes, q[t], s[t], dd[t], &mut want[t * rows..][..rows]);
                }
                let mut got = vec![0f32; rows * n];
                q6k_permuted_rows_tokens(&permuted, row_bytes, &pq, &s, &dd, &mut got);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{rows} rows x {blocks} blocks, {n} tokens"
                );
                if n == 1 {
                    let mut one = vec![0f32; rows];
                    q6k_permuted_rows(&permuted, row_bytes, pq[0], s[0], dd[0], &mut one);
                    assert_eq!(one, want[..rows], "one token");
                }
            }
        }
    }
}
