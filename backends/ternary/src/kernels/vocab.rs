//! Per-block integer dots of the output (vocabulary) matrix's quantized
//! formats against int8 activations, as llama.cpp's CPU backend computes
//! them: Q8_0 rows against Q8_0 activations (32-value blocks), Q6_K rows
//! against Q8_K activations (256-value blocks with 16 sub-block scales).
//! The kernels give each block's exact integer sum; the caller applies
//! the float scales in one fixed order, so every path gives the same bits.

#[cfg(target_arch = "aarch64")]
use super::aarch64;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{isa, Isa};

/// Bytes of one Q8_0 block: f16 scale then 32 int8.
pub const Q8_0_BLOCK: usize = 34;
/// Bytes of one Q6_K block: 128 low-nibble bytes, 64 high-bit bytes, 16
/// int8 scales, f16 scale (256 values).
pub const Q6K_BLOCK: usize = 210;

/// Reference: out[b] = sum over block b of w * q.
pub fn q8_0_block_dots_scalar(row: &[u8], q: &[i8], out: &mut [i32]) {
    for ((b, qb), o) in row.chunks_exact(Q8_0_BLOCK).zip(q.chunks_exact(32)).zip(out.iter_mut()) {
        *o = b[2..].iter().zip(qb).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum();
    }
}

/// The 6-bit value (0..=63) of element e of a Q6_K block, and its scale index.
pub(super) fn q6k_value(b: &[u8], e: usize) -> (i32, usize) {
    let (half, i) = (e / 128, e % 128);
    let (ql, qh) = (&b[half * 64..], &b[128 + half * 32..]);
    let (part, l) = (i / 32, i % 32);
    let low = match part {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    let high = (qh[l] >> (2 * part)) & 3;
    (i32::from(low | (high << 4)), e / 16)
}

/// Reference: out[b] = sum over the 16 sub-blocks j of block b of
/// scale_j * sum (w - 32) * q, w the 6-bit values.
pub fn q6k_block_dots_scalar(row: &[u8], q: &[i8], out: &mut [i32]) {
    for ((b, qb), o) in row.chunks_exact(Q6K_BLOCK).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        let mut sub = [0i32; 16];
        for (e, &x) in qb.iter().enumerate() {
            let (w, j) = q6k_value(b, e);
            sub[j] += (w - 32) * i32::from(x);
        }
        *o = sub.iter().zip(&b[192..208]).map(|(s, &sc)| s * i32::from(sc as i8)).sum();
    }
}

/// `q8_0_block_dots_scalar` with the best kernel here.
pub fn q8_0_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    super::check_blocks(row.len(), Q8_0_BLOCK, 32, q.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q8_0_block_dots_avx2(row, q, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::q8_0_block_dots(isa() == Isa::NeonDot, row, q, out) },
        _ => q8_0_block_dots_scalar(row, q, out),
    }
}

/// `q6k_block_dots_scalar` with the best kernel here.
pub fn q6k_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) {
    super::check_blocks(row.len(), Q6K_BLOCK, 256, q.len(), out.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q6k_block_dots_avx2(row, q, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: sdot only when isa() saw the CPU has it.
        Isa::Neon | Isa::NeonDot => unsafe { aarch64::q6k_block_dots(isa() == Isa::NeonDot, row, q, out) },
        _ => q6k_block_dots_scalar(row, q, out),
    }
}

/// llama.cpp's finish of a Q6_K row from its block dots: per block,
/// dot * (w_d * a_d), summed in block order.
pub fn q6k_finish(row: &[u8], dots: &[i32], d: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, (dot, d)) in dots.iter().zip(d).enumerate() {
        acc += *dot as f32 * (super::f16_le_to_f32(&row[b * Q6K_BLOCK + 208..]) * d);
    }
    acc
}

/// The sums of each 16 activations (Q8_K's `bsums`), which `q6k_rows`
/// takes the -32 offset of Q6_K's values out with: made once per token.
/// Each fits an i16 (|sum| <= 16 * 128).
pub fn q6k_sums(q: &[i8]) -> Vec<i16> {
    q.chunks(16).map(|c| c.iter().map(|&v| i16::from(v)).sum()).collect()
}

/// Every `row_bytes` Q6_K row of `rows` against Q8_K activations (`q`,
/// their `q6k_sums`, block scales `d`): `out[r]` = `q6k_finish` of row r's
/// block dots, bit for bit on every path. With AVX-512, 16 rows at a time
/// with the finish vectorized.
pub fn q6k_rows(rows: &[u8], row_bytes: usize, q: &[i8], sums: &[i16], d: &[f32], out: &mut [f32]) {
    let blocks = row_bytes / Q6K_BLOCK;
    super::check_blocks(row_bytes, Q6K_BLOCK, 256, q.len(), blocks);
    assert!(rows.len() == row_bytes * out.len() && d.len() >= blocks && sums.len() >= 16 * blocks, "Q6_K rows shape");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F/BW (and VNNI); shapes checked above.
        Isa::Avx512Vnni => unsafe { x86::q6k_rows_avx512(rows, row_bytes, q, sums, d, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2, FMA and F16C; shapes checked above.
        Isa::Avx2 => unsafe { x86::q6k_rows_avx2(rows, row_bytes, q, sums, d, out) },
        _ => {
            let mut dots = vec![0i32; blocks];
            for (row, o) in rows.chunks_exact(row_bytes).zip(out) {
                q6k_block_dots(row, q, &mut dots);
                *o = q6k_finish(row, &dots, d);
            }
        }
    }
}

/// A `q6k_groups` tile through `x86::$kernel::<k>` for a group's k tokens
/// (up to 4), rows `$row_bytes` long, tokens `$m` rows apart in out.
#[cfg(target_arch = "x86_64")]
macro_rules! q6k_tile {
    ($kernel:ident, $row_bytes:expr, $m:expr) => {
        |group: &[u8], qs: &[&[i8]], sums: &[&[i16]], d: &[&[f32]], out: &mut [f32]| {
            macro_rules! tokens {
                ($k:literal) => {
                    // SAFETY: the callers checked the kernel's CPU features;
                    // the kernel asserts the shapes it reads.
                    unsafe {
                        x86::$kernel::<$k>(
                            group,
                            $row_bytes,
                            $crate::kernels::first_n(qs),
                            $crate::kernels::first_n(sums),
                            $crate::kernels::first_n(d),
                            out,
                            $m,
                        )
                    }
                };
            }
            match qs.len() {
                1 => tokens!(1),
                2 => tokens!(2),
                3 => tokens!(3),
                _ => tokens!(4),
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use q6k_tile;

/// `q6k_rows` for several tokens (`qs[t]` with its `sums[t]` and block
/// scales `d[t]`): `out[t * m + r]` (m = the rows) equals `q6k_rows` of
/// token t, bit for bit. With AVX-512 in groups of 16 rows x up to 4
/// tokens, with AVX2 of 8, each block unpacked once for all of them;
/// elsewhere token by token over 32 rows at a time.
pub fn q6k_rows_tokens(rows: &[u8], row_bytes: usize, qs: &[&[i8]], sums: &[&[i16]], d: &[&[f32]], out: &mut [f32]) {
    let (n, m) = (qs.len(), rows.len() / row_bytes.max(1));
    assert!(sums.len() == n && d.len() == n && out.len() == n * m, "Q6_K tokens shape");
    #[cfg(target_arch = "x86_64")]
    match isa() {
        Isa::Avx512Vnni => {
            return q6k_groups(16, rows, row_bytes, qs, sums, d, out, q6k_tile!(q6k_rows_tokens_avx512, row_bytes, m))
        }
        Isa::Avx2 => {
            return q6k_groups(8, rows, row_bytes, qs, sums, d, out, q6k_tile!(q6k_rows_tokens_avx2, row_bytes, m))
        }
        _ => {}
    }
    // 32 rows (67 KB for 2B4T) at a time, token by token, so every token
    // reads them from cache.
    for r in (0..m).step_by(32) {
        let k = (m - r).min(32);
        let rows = &rows[r * row_bytes..(r + k) * row_bytes];
        for t in 0..n {
            q6k_rows(rows, row_bytes, qs[t], sums[t], d[t], &mut out[t * m + r..][..k]);
        }
    }
}

/// Groups of `group_rows` rows x up to 4 tokens through `tile(group, the
/// tokens' activations, sums, scales, out from the group's first row of
/// the first token)` (tokens m rows apart), after checking the shapes.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn q6k_groups(
    group_rows: usize,
    rows: &[u8],
    row_bytes: usize,
    qs: &[&[i8]],
    sums: &[&[i16]],
    d: &[&[f32]],
    out: &mut [f32],
    tile: impl Fn(&[u8], &[&[i8]], &[&[i16]], &[&[f32]], &mut [f32]),
) {
    let (n, m) = (qs.len(), rows.len() / row_bytes.max(1));
    let blocks = row_bytes / Q6K_BLOCK;
    assert!(rows.len() == m * row_bytes, "Q6_K rows shape");
    for q in qs {
        super::check_blocks(row_bytes, Q6K_BLOCK, 256, q.len(), blocks);
    }
    for (g, group) in (0..).step_by(group_rows).zip(rows.chunks(group_rows * row_bytes)) {
        for t in (0..n).step_by(4) {
            let k = (n - t).min(4);
            tile(group, &qs[t..t + k], &sums[t..t + k], &d[t..t + k], &mut out[t * m + g..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::TensorType;
    use crate::quant::decode_float;
    use crate::sampler::Rng;

    fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.next_u64() as u8).collect()
    }

    fn acts(rng: &mut Rng, n: usize) -> Vec<i8> {
        // Q8_0 / Q8_K activations stay within -127..=127.
        (0..n).map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8).collect()
    }

    #[test]
    fn every_vocab_kernel_equals_the_scalar_reference_and_the_decoded_values() {
        let mut rng = Rng::new(5);
        for blocks in [1usize, 2, 3, 8, 13] {
            // Q8_0: random bytes are valid blocks (any scale, any int8, -128 included).
            let mut row = bytes(&mut rng, blocks * Q8_0_BLOCK);
            row[2] = 0x80;
            let q = acts(&mut rng, blocks * 32);
            let mut want = vec![0; blocks];
            q8_0_block_dots_scalar(&row, &q, &mut want);
            // The reference against the decoder: the value divided by its scale.
            for (b, w) in want.iter().enumerate() {
                let codes: i32 = (0..32).map(|i| i32::from(row[b * 34 + 2 + i] as i8) * i32::from(q[b * 32 + i])).sum();
                assert_eq!(*w, codes);
            }
            let mut got = vec![0; blocks];
            q8_0_block_dots(&row, &q, &mut got);
            assert_eq!(got, want, "dispatched q8_0, {blocks} blocks");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![0; blocks];
                // SAFETY: AVX2 checked.
                unsafe { x86::q8_0_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 q8_0, {blocks} blocks");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in super::super::tests::neon_builds() {
                let mut got = vec![0; blocks];
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                unsafe { aarch64::q8_0_block_dots(sdot, &row, &q, &mut got) };
                assert_eq!(got, want, "neon sdot={sdot} q8_0, {blocks} blocks");
            }

            // Q6_K: random low/high bits and scales, scale d = 1.0 so the
            // decoder's values are exactly scale_j * (w - 32).
            let mut row = Vec::new();
            for _ in 0..blocks {
                row.extend(bytes(&mut rng, 208));
                row.extend(half::f16::from_f32(1.0).to_le_bytes());
            }
            let q = acts(&mut rng, blocks * 256);
            let mut want = vec![0; blocks];
            q6k_block_dots_scalar(&row, &q, &mut want);
            let decoded = decode_float(TensorType::Q6K, &row, blocks * 256).unwrap();
            for (b, w) in want.iter().enumerate() {
                let sum: f64 = (0..256).map(|i| f64::from(decoded[b * 256 + i]) * f64::from(q[b * 256 + i])).sum();
                assert_eq!(f64::from(*w), sum, "q6_k reference vs decoder, block {b}");
            }
            let mut got = vec![0; blocks];
            q6k_block_dots(&row, &q, &mut got);
            assert_eq!(got, want, "dispatched q6_k, {blocks} blocks");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![0; blocks];
                // SAFETY: AVX2 checked.
                unsafe { x86::q6k_block_dots_avx2(&row, &q, &mut got) };
                assert_eq!(got, want, "avx2 q6_k, {blocks} blocks");
            }
            #[cfg(target_arch = "aarch64")]
            for sdot in super::super::tests::neon_builds() {
                let mut got = vec![0; blocks];
                // SAFETY: neon_builds() lists sdot only where the CPU has it.
                unsafe { aarch64::q6k_block_dots(sdot, &row, &q, &mut got) };
                assert_eq!(got, want, "neon sdot={sdot} q6_k, {blocks} blocks");
            }
            // Many rows (AVX-512's 16 at a time; 37 leaves a group of 5),
            // random scales: bit for bit the reference's finish.
            let n_rows = 37;
            let rows: Vec<u8> = (0..n_rows)
                .flat_map(|r| {
                    row.chunks_exact(Q6K_BLOCK).flat_map(move |block| {
                        let mut block = block.to_vec();
                        block[(r * 13) % 208] ^= r as u8;
                        block[208..].copy_from_slice(&half::f16::from_f32((r as f32 - 18.0) * 0.003).to_le_bytes());
                        block
                    })
                })
                .collect();
            let ds: Vec<f32> = (0..blocks).map(|_| rng.next_f32() * 0.02).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let want: Vec<f32> = rows
                .chunks_exact(row.len())
                .map(|r| {
                    let mut dots = vec![0; blocks];
                    q6k_block_dots_scalar(r, &q, &mut dots);
                    q6k_finish(r, &dots, &ds)
                })
                .collect();
            let mut got = vec![0f32; n_rows];
            let sums = q6k_sums(&q);
            q6k_rows(&rows, row.len(), &q, &sums, &ds, &mut got);
            assert_eq!(bits(&got), bits(&want), "q6k_rows, {blocks} blocks");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
                let mut got = vec![0f32; n_rows];
                // SAFETY: AVX-512 F/BW/VNNI checked (AVX2 comes with them here).
                unsafe { x86::q6k_rows_avx512(&rows, row.len(), &q, &sums, &ds, &mut got) };
                assert_eq!(bits(&got), bits(&want), "avx512 q6k_rows, {blocks} blocks");
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                let mut got = vec![0f32; n_rows];
                // SAFETY: AVX2, FMA and F16C checked.
                unsafe { x86::q6k_rows_avx2(&rows, row.len(), &q, &sums, &ds, &mut got) };
                assert_eq!(bits(&got), bits(&want), "avx2 q6k_rows, {blocks} blocks");
            }
            // 1 to 6 tokens at once (groups of 4, then the rest): each
            // token's results as it gets them alone.
            let tokens: Vec<(Vec<i8>, Vec<f32>)> = (0..6)
                .map(|t| {
                    (
                        if t == 0 { q.clone() } else { acts(&mut rng, blocks * 256) },
                        ds.iter().map(|d| d * (1.0 + t as f32)).collect(),
                    )
                })
                .collect();
            let tsums: Vec<Vec<i16>> = tokens.iter().map(|(q, _)| q6k_sums(q)).collect();
            for n in 1..=tokens.len() {
                let qs: Vec<&[i8]> = tokens[..n].iter().map(|(q, _)| &q[..]).collect();
                let d: Vec<&[f32]> = tokens[..n].iter().map(|(_, d)| &d[..]).collect();
                let sums: Vec<&[i16]> = tsums[..n].iter().map(|s| &s[..]).collect();
                let mut got = vec![0f32; n * n_rows];
                q6k_rows_tokens(&rows, row.len(), &qs, &sums, &d, &mut got);
                for t in 0..n {
                    let mut alone = vec![0f32; n_rows];
                    q6k_rows(&rows, row.len(), qs[t], sums[t], d[t], &mut alone);
                    assert_eq!(
                        bits(&got[t * n_rows..][..n_rows]),
                        bits(&alone),
                        "{n} tokens, token {t}, {blocks} blocks"
                    );
                }
                // The AVX2 groups of 8, whatever this CPU's dispatch picks:
                // each token as q6k_rows_avx2 gives it alone.
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    let mut avx2 = vec![0f32; n * n_rows];
                    let rb = row.len();
                    q6k_groups(8, &rows, rb, &qs, &sums, &d, &mut avx2, q6k_tile!(q6k_rows_tokens_avx2, rb, n_rows));
                    for t in 0..n {
                        let mut alone = vec![0f32; n_rows];
                        // SAFETY: AVX2, FMA and F16C checked.
                        unsafe { x86::q6k_rows_avx2(&rows, rb, qs[t], sums[t], d[t], &mut alone) };
                        assert_eq!(bits(&avx2[t * n_rows..][..n_rows]), bits(&alone), "avx2 {n} tokens, token {t}");
                    }
                }
            }
        }
    }
}
