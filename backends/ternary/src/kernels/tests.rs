//! The kernels' tests: every SIMD kernel this CPU has against its scalar
//! reference, the dispatchers against both, and the shape checks.

use super::*;

/// Every kernel entry point refuses a slice shorter than its shape (in
/// release builds too): the SIMD kernels would read past it.
#[test]
fn short_slices_panic_instead_of_reading_out_of_bounds() {
    let row = vec![0u8; 66 * 2];
    let q = vec![0i8; 256 * 2];
    let panics = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    assert!(panics(&|| {
        dot_i2s(&row[..32], &q[..100]);
    }));
    assert!(panics(&|| {
        dot_i2s_x4(&row[..32], [&q[..128], &q[..128], &q[..128], &q[..64]]);
    }));
    assert!(panics(&|| tq2_block_dots(&row, &q[..256], &mut [0; 2])));
    assert!(panics(&|| tq2_block_dots(&row, &q, &mut [0; 1])));
    assert!(panics(&|| tq2_block_dots(&row[..100], &q[..256], &mut [0; 2])));
    assert!(panics(&|| tq1_block_dots(&row[..108], &q[..256], &mut [0; 2])));
    assert!(panics(&|| vocab::q8_0_block_dots(&row[..68], &q[..32], &mut [0; 2])));
    assert!(panics(&|| vocab::q6k_block_dots(&row[..0], &q[..1], &mut [])));
    assert!(panics(&|| {
        dot_f16(&[half::f16::ZERO; 4], &[0.0; 3]);
    }));
    // The right shapes pass.
    tq2_block_dots(&row, &q, &mut [0; 2]);
    tq1_block_dots(&row[..108], &q, &mut [0; 2]);
    assert_eq!(dot_i2s(&row[..32], &q[..128]), 0);
}
use crate::quant::{decode_i2s, dot_codes};
use crate::sampler::Rng;

/// The aarch64 builds this CPU can run: plain NEON always, `sdot` where
/// the CPU has it (qemu's `-cpu max` does; CI also runs a CPU without).
#[cfg(target_arch = "aarch64")]
pub(super) fn neon_builds() -> Vec<bool> {
    let mut builds = vec![false];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        builds.push(true);
    }
    builds
}

#[test]
fn every_i2s_kernel_equals_the_scalar_reference_and_the_decoded_product() {
    let mut rng = Rng::new(9);
    for blocks in [1usize, 2, 3, 7, 20, 54] {
        let n = blocks * 128;
        let row: Vec<u8> = (0..n / 4)
            .map(|_| {
                // Only codes 0..2 occur in real files.
                (0..4).fold(0u8, |b, _| b << 2 | (rng.next_u64() % 3) as u8)
            })
            .collect();
        // Extremes included: -128 and 127.
        let q: Vec<i8> = (0..n).map(|i| if i % 97 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
        let want = dot_i2s_scalar(&row, &q);
        let mut with_scale = row.clone();
        with_scale.extend([0u8; 32]);
        let decoded = decode_i2s(&with_scale, 1, n.max(256)).ok();
        if n % 256 == 0 {
            let qsum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(dot_codes(&decoded.unwrap().codes, &q) + qsum, want, "n={n}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above.
            assert_eq!(unsafe { x86::dot_i2s_avx2(&row, &q) }, want, "avx2 n={n}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
            // SAFETY: checked just above (AVX2 comes with AVX-512 here).
            assert_eq!(unsafe { x86::dot_i2s_vnni(&row, &q) }, want, "avx512-vnni n={n}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
            // SAFETY: checked just above.
            assert_eq!(unsafe { x86::dot_i2s_avxvnni(&row, &q) }, want, "avx-vnni n={n}");
        }
        #[cfg(target_arch = "aarch64")]
        for sdot in neon_builds() {
            // SAFETY: neon_builds() lists sdot only where the CPU has it.
            assert_eq!(unsafe { aarch64::dot_i2s(sdot, &row, &q) }, want, "neon sdot={sdot} n={n}");
        }
        assert_eq!(dot_i2s(&row, &q), want);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
            // SAFETY: checked just above.
            let got = unsafe { x86::dot_i2s_vnni_interleaved(&row, &interleave(&q), &q) };
            assert_eq!(got, want, "avx512-vnni interleaved n={n}");
        }
        assert_eq!(dot_i2s_prepared(&row, &Prepared::new(&q)), want);
        // Several rows in one call: each equals its own reference.
        let rows: Vec<u8> = (0..3u8).flat_map(|r| row.iter().map(move |b| b.rotate_left(2 * u32::from(r)))).collect();
        let mut got = [0i32; 3];
        i2s_rows_prepared(&rows, row.len(), &Prepared::new(&q), &mut got);
        for (r, g) in rows.chunks_exact(row.len()).zip(got) {
            assert_eq!(g, dot_i2s_scalar(r, &q), "rows n={n}");
        }
        // Four tokens at once: each equals its own reference.
        let qs: Vec<Vec<i8>> = (0..4).map(|t| q.iter().map(|&v| v.wrapping_add(t * 37)).collect()).collect();
        let four = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
        let want4 = dot_i2s_x4_scalar(&row, four);
        assert_eq!(want4[0], dot_i2s_scalar(&row, &qs[0]));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above.
            assert_eq!(unsafe { x86::dot_i2s_xn_avx2(&row, four) }, want4, "x4 avx2 n={n}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
            let qi: Vec<Vec<i8>> = qs.iter().map(|q| interleave(q)).collect();
            let qi = [&qi[0][..], &qi[1][..], &qi[2][..], &qi[3][..]];
            // SAFETY: checked just above.
            assert_eq!(unsafe { x86::dot_i2s_xn_vnni_interleaved(&row, qi, four) }, want4, "x4 avx512-vnni n={n}");
        }
        #[cfg(target_arch = "aarch64")]
        for sdot in neon_builds() {
            // SAFETY: as above.
            assert_eq!(unsafe { aarch64::dot_i2s_xn(sdot, &row, four) }, want4, "x4 neon sdot={sdot} n={n}");
        }
        assert_eq!(dot_i2s_x4(&row, four), want4);
        // Eight tokens (the prompt path's step): each its own reference.
        let qs8: Vec<Vec<i8>> =
            (0..8u8).map(|t| q.iter().map(|&v| v.wrapping_add(t.wrapping_mul(41) as i8)).collect()).collect();
        let prepared: Vec<Prepared> = qs8.iter().map(|q| Prepared::new(q)).collect();
        let got8 = dot_i2s_xn_prepared::<8>(&row, std::array::from_fn(|t| &prepared[t]));
        for (t, g) in got8.into_iter().enumerate() {
            assert_eq!(g, dot_i2s_scalar(&row, &qs8[t]), "x8 token {t} n={n}");
        }
        assert_eq!(dot_i2s_xn_prepared::<4>(&row, std::array::from_fn(|t| &prepared[t]))[..], got8[..4]);
        #[cfg(target_arch = "x86_64")]
        {
            let eight: [&[i8]; 8] = std::array::from_fn(|t| &qs8[t][..]);
            if is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                assert_eq!(unsafe { x86::dot_i2s_xn_avx2(&row, eight) }, got8, "x8 avx2 n={n}");
            }
        }
        // Many rows by many tokens (tiles of 2 x 8 and what is left).
        for (m, tokens) in [(1usize, 1usize), (2, 3), (3, 8), (5, 11), (4, 16)] {
            let rows: Vec<u8> = (0..m).flat_map(|r| row.iter().map(move |b| b.rotate_left(2 * r as u32))).collect();
            let qs: Vec<Vec<i8>> =
                (0..tokens).map(|t| q.iter().map(|&v| v.wrapping_add((t * 53) as i8)).collect()).collect();
            let prepared: Vec<Prepared> = qs.iter().map(|q| Prepared::new(q)).collect();
            let refs: Vec<&Prepared> = prepared.iter().collect();
            let mut got = vec![0; m * tokens];
            i2s_rows_tokens(&rows, row.len(), &refs, &mut got);
            for (r, rw) in rows.chunks_exact(row.len()).enumerate() {
                for (t, q) in qs.iter().enumerate() {
                    assert_eq!(got[t * m + r], dot_i2s_scalar(rw, q), "{m} rows x {tokens} tokens n={n}");
                }
            }
            // The AVX-VNNI tiles (2 x 4 and what is left), whatever
            // this CPU's dispatch picks.
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
                let plain: Vec<&[i8]> = qs.iter().map(Vec::as_slice).collect();
                let mut vnni = vec![0; m * tokens];
                i2s_tiles(m, tokens, &[2, 1], &mut vnni, |r, height, ts, tile| {
                    let tile_rows = &rows[r * row.len()..(r + height) * row.len()];
                    // SAFETY: checked just above.
                    unsafe { i2s_tile_avxvnni(height, tile_rows, row.len(), &plain[ts], tile) }
                });
                assert_eq!(vnni, got, "avx-vnni tiles: {m} rows x {tokens} tokens n={n}");
            }
        }
    }
}

#[test]
fn the_kernel_choice_follows_the_cpu_features_and_the_override() {
    let cpu = |features: &'static [&'static str]| move |f: &str| features.contains(&f);
    let x86_avx512 = cpu(&["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni"]);
    assert_eq!(isa_for("x86_64", &x86_avx512, ""), Isa::Avx512Vnni);
    assert_eq!(isa_for("x86_64", &x86_avx512, "avx2"), Isa::Avx2);
    assert_eq!(isa_for("x86_64", &x86_avx512, "scalar"), Isa::Scalar);
    assert_eq!(isa_for("x86_64", &cpu(&["avx2", "fma", "f16c"]), ""), Isa::Avx2);
    // AVX2 without FMA/F16C (some VIA and early parts): references.
    assert_eq!(isa_for("x86_64", &cpu(&["avx2"]), ""), Isa::Scalar);
    assert_eq!(isa_for("aarch64", &cpu(&["neon", "dotprod"]), ""), Isa::NeonDot);
    assert_eq!(isa_for("aarch64", &cpu(&["neon", "dotprod"]), "neon"), Isa::Neon);
    assert_eq!(isa_for("aarch64", &cpu(&["neon"]), ""), Isa::Neon);
    assert_eq!(isa_for("aarch64", &cpu(&["neon"]), "scalar"), Isa::Scalar);
    assert_eq!(isa_for("riscv64", &cpu(&[]), ""), Isa::Scalar);
    // This process's choice is the pure function's on this CPU.
    let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
    assert_eq!(isa(), isa_for(std::env::consts::ARCH, &detected, &forced));
}

#[test]
fn activation_quantization_equals_the_reference_on_every_path() {
    let mut rng = Rng::new(17);
    // Ties (x.5 after scaling), the clamp bounds, NaN, infinities, and
    // random values, at lengths with and without a SIMD tail.
    let special = [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, 127.49, 127.5, 128.0, -128.5, -129.0, 1e9, -1e9];
    for n in [1usize, 15, 16, 17, 33, 256, 1000] {
        let mut x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 300.0).collect();
        for (v, s) in x.iter_mut().zip(special.iter().cycle()).step_by(3) {
            *v = *s;
        }
        if n > 4 {
            x[n - 2] = f32::NAN;
            x[n - 3] = f32::INFINITY;
            x[n - 4] = f32::NEG_INFINITY;
        }
        for scale in [1.0f32, 0.37, -2.0] {
            let mut want = vec![0i8; n];
            quantize_row_scalar(&x, scale, &mut want);
            for (w, v) in want.iter().zip(&x) {
                let y = v * scale;
                let r = if y.is_nan() { 0 } else { y.round_ties_even().clamp(-128.0, 127.0) as i8 };
                assert_eq!(*w, r, "reference at {y}");
            }
            let mut got = vec![0i8; n];
            quantize_row(&x, scale, &mut got);
            assert_eq!(got, want, "dispatched n={n} scale={scale}");
            #[cfg(target_arch = "x86_64")]
            for (name, kernel) in x86_quantizers() {
                let mut got = vec![0i8; n];
                kernel(&x, scale, &mut got);
                assert_eq!(got, want, "{name} n={n} scale={scale}");
            }
            #[cfg(target_arch = "aarch64")]
            {
                let mut got = vec![0i8; n];
                aarch64::quantize_row(&x, scale, &mut got);
                assert_eq!(got, want, "neon n={n} scale={scale}");
            }
        }
        // With and without infinities, NaNs among them.
        let finite: Vec<f32> = x.iter().map(|v| if v.is_infinite() { -3.0 } else { *v }).collect();
        for x in [&x, &finite] {
            let want = abs_max_scalar(x);
            assert_eq!(abs_max(x).to_bits(), want.to_bits(), "abs_max n={n}");
            #[cfg(target_arch = "aarch64")]
            assert_eq!(aarch64::abs_max(x).to_bits(), want.to_bits(), "neon abs_max n={n}");
            #[cfg(target_arch = "x86_64")]
            if let Some(avx2) = x86_acts_available() {
                // SAFETY: x86_acts_available checked the features.
                let got = unsafe { [x86::abs_max_avx2(x)].into_iter().chain(avx2.then(|| x86::abs_max_avx512(x))) };
                for got in got {
                    assert_eq!(got.to_bits(), want.to_bits(), "x86 abs_max n={n}");
                }
            }
        }
    }
}

/// Whether the AVX2 activation kernels can run here, with whether the
/// AVX-512 ones can too (None: neither).
#[cfg(target_arch = "x86_64")]
fn x86_acts_available() -> Option<bool> {
    is_x86_feature_detected!("avx2").then(|| is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
type Quantizer = fn(&[f32], f32, &mut [i8]);

/// Every x86 activation quantizer this CPU can run, whatever `isa()`
/// picked (so the forced AVX2 runs still test the AVX-512 ones).
#[cfg(target_arch = "x86_64")]
fn x86_quantizers() -> Vec<(&'static str, Quantizer)> {
    let mut v: Vec<(&'static str, Quantizer)> = Vec::new();
    if let Some(avx512) = x86_acts_available() {
        // SAFETY: x86_acts_available checked AVX2.
        v.push(("avx2", |x, s, o| unsafe { x86::quantize_row_avx2(x, s, o) }));
        if avx512 {
            // SAFETY: x86_acts_available checked AVX-512 F.
            v.push(("avx512", |x, s, o| unsafe { x86::quantize_row_avx512(x, s, o) }));
        }
    }
    v
}

#[test]
fn the_signed_abs_max_is_the_first_value_of_largest_magnitude_on_every_path() {
    let mut rng = Rng::new(23);
    for n in [1usize, 7, 8, 15, 16, 17, 31, 33, 100, 256] {
        for case in 0..6 {
            let mut x: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 10.0).collect();
            let at = (rng.next_f32() * n as f32) as usize % n;
            match case {
                // The maximum twice with opposite signs: the first wins.
                1 if n > 1 => {
                    x[at] = -7.0;
                    x[(at + 1 + n / 2) % n] = 7.0;
                }
                2 => x[at] = f32::NAN,
                3 => x[at] = f32::NEG_INFINITY,
                4 => x.iter_mut().for_each(|v| *v = 0.0),
                5 => x.iter_mut().for_each(|v| *v = if rng.next_f32() < 0.5 { f32::NAN } else { -0.0 }),
                _ => {}
            }
            let want = signed_abs_max_scalar(&x);
            assert_eq!(signed_abs_max(&x).to_bits(), want.to_bits(), "n={n} case {case}: {x:?}");
            #[cfg(target_arch = "x86_64")]
            if let Some(avx512) = x86_acts_available() {
                let amax = abs_max_scalar(&x);
                if amax > 0.0 {
                    // SAFETY: x86_acts_available checked the features.
                    unsafe {
                        assert_eq!(x86::first_with_abs_avx2(&x, amax).to_bits(), want.to_bits(), "avx2 n={n}");
                        if avx512 {
                            assert_eq!(x86::first_with_abs_avx512(&x, amax).to_bits(), want.to_bits(), "avx512 n={n}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_inline_f16_conversion_equals_half_for_every_value() {
    for h in 0..=u16::MAX {
        let want = f16::from_bits(h).to_f32();
        let got = f16_le_to_f32(&h.to_le_bytes());
        if want.is_nan() {
            assert!(got.is_nan(), "{h:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
        }
    }
}

#[test]
fn every_tq1_kernel_equals_the_scalar_reference_and_the_decoded_codes() {
    let mut rng = Rng::new(13);
    for blocks in [1usize, 2, 5, 10] {
        let n = blocks * 256;
        // Every byte value, not only those an encoder writes: the
        // kernels must agree on any file.
        let mut row = Vec::new();
        for b in 0..blocks {
            row.extend((0..52).map(|i| if b == 0 { (i * 5) as u8 } else { rng.next_u64() as u8 }));
            row.extend(f16::from_f32(0.25).to_le_bytes());
        }
        let q: Vec<i8> = (0..n).map(|i| if i % 83 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
        let mut want = vec![0i32; blocks];
        tq1_block_dots_scalar(&row, &q, &mut want);
        // Against the decoder (codes -1..1): code = decoded + 1.
        let t = crate::quant::decode_tq1_0(&row, 1, n).unwrap();
        for b in 0..blocks {
            let qb = &q[b * 256..(b + 1) * 256];
            let qsum: i32 = qb.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(dot_codes(&t.codes[b * 256..(b + 1) * 256], qb) + qsum, want[b], "block {b}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            let mut got = vec![0i32; blocks];
            // SAFETY: checked just above.
            unsafe { x86::tq1_block_dots_avx2(&row, &q, &mut got) };
            assert_eq!(got, want, "avx2 blocks={blocks}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni") {
            let mut got = vec![0i32; blocks];
            // SAFETY: checked just above (AVX2 comes with AVX-512 here).
            unsafe { x86::tq1_block_dots_vnni(&row, &q, &mut got) };
            assert_eq!(got, want, "avx512-vnni blocks={blocks}");
        }
        #[cfg(target_arch = "aarch64")]
        for sdot in neon_builds() {
            let mut got = vec![0i32; blocks];
            // SAFETY: neon_builds() lists sdot only where the CPU has it.
            unsafe { aarch64::tq1_block_dots(sdot, &row, &q, &mut got) };
            assert_eq!(got, want, "neon sdot={sdot} blocks={blocks}");
        }
        let mut got = vec![0i32; blocks];
        tq1_block_dots(&row, &q, &mut got);
        assert_eq!(got, want);
        // Many rows in one call (AVX-512 VNNI's 16 at a time here when
        // the CPU has it; 37 leaves a group of 5), random scales: bit
        // for bit the reference's finish.
        let n_rows = 37;
        let mut rows = Vec::new();
        for r in 0..n_rows {
            for block in row.chunks_exact(54) {
                rows.extend(block[..52].iter().map(|&c| c.wrapping_add(r as u8 * 7)));
                rows.extend(f16::from_f32((rng.next_f32() - 0.5) * 0.1).to_le_bytes());
            }
        }
        let bsums: Vec<i32> = q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect();
        let ds: Vec<f32> = (0..blocks).map(|_| rng.next_f32() * 0.02).collect();
        let mut got = vec![0f32; n_rows];
        tq1_rows(&rows, row.len(), &q, &bsums, &ds, &mut got);
        for (r, g) in rows.chunks_exact(row.len()).zip(&got) {
            let mut dots = vec![0i32; blocks];
            tq1_block_dots_scalar(r, &q, &mut dots);
            let want = ternary_blocks_finish(r, 54, &dots, &bsums, &ds);
            assert_eq!(g.to_bits(), want.to_bits(), "rows blocks={blocks}");
        }
        // Several tokens at once: each token's results are its own `tq1_rows`.
        let rb = row.len();
        many_tokens_equal_each_alone(
            &q,
            n_rows,
            &mut rng,
            (5, 13),
            |qs, b, d, out| tq1_rows_tokens(&rows, rb, qs, b, d, out),
            |q, b, d, out| tq1_rows(&rows, rb, q, b, d, out),
        );
    }
}

/// Several tokens at once (1 to 9: tiles of up to 4 with AVX-512 VNNI)
/// give each token, bit for bit, what `one` gives it alone: the check
/// of the TQ2_0 and TQ1_0 many-token kernels over `n_rows` rows. Token
/// t's activations are `q` times `mul` plus t times `salt` (wrapping),
/// its block sums theirs, its scales random.
fn many_tokens_equal_each_alone(
    q: &[i8],
    n_rows: usize,
    rng: &mut Rng,
    (mul, salt): (i8, i8),
    many: impl Fn(&[&[i8]], &[&[i32]], &[&[f32]], &mut [f32]),
    one: impl Fn(&[i8], &[i32], &[f32], &mut [f32]),
) {
    let blocks = q.len() / 256;
    for n in [1usize, 2, 3, 4, 5, 9] {
        let qs: Vec<Vec<i8>> = (0..n)
            .map(|t| q.iter().map(|&v| v.wrapping_mul(mul).wrapping_add((t as i8).wrapping_mul(salt))).collect())
            .collect();
        let bs: Vec<Vec<i32>> =
            qs.iter().map(|q| q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect()).collect();
        let dt: Vec<Vec<f32>> = (0..n).map(|_| (0..blocks).map(|_| rng.next_f32() * 0.02).collect()).collect();
        let mut got = vec![f32::NAN; n * n_rows];
        let a: Vec<&[i8]> = qs.iter().map(Vec::as_slice).collect();
        let b: Vec<&[i32]> = bs.iter().map(Vec::as_slice).collect();
        let d: Vec<&[f32]> = dt.iter().map(Vec::as_slice).collect();
        many(&a, &b, &d, &mut got);
        for t in 0..n {
            let mut want = vec![0f32; n_rows];
            one(&qs[t], &bs[t], &dt[t], &mut want);
            let got = &got[t * n_rows..(t + 1) * n_rows];
            assert!(
                got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                "{n} tokens, token {t}, blocks={blocks}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn every_tq2_kernel_equals_the_scalar_reference_and_the_decoded_codes() {
    let mut rng = Rng::new(11);
    for blocks in [1usize, 2, 5, 10] {
        let n = blocks * 256;
        let mut row = Vec::new();
        for _ in 0..blocks {
            row.extend((0..64).map(|_| (0..4).fold(0u8, |b, _| b << 2 | (rng.next_u64() % 3) as u8)));
            row.extend(f16::from_f32(0.5).to_le_bytes());
        }
        let q: Vec<i8> = (0..n).map(|i| if i % 89 == 0 { -128 } else { (rng.next_u64() % 256) as u8 as i8 }).collect();
        let mut want = vec![0i32; blocks];
        tq2_block_dots_scalar(&row, &q, &mut want);
        // Against the decoder (codes -1..1): code = decoded + 1.
        let t = crate::quant::decode_tq2_0(&row, 1, n).unwrap();
        for b in 0..blocks {
            let qb = &q[b * 256..(b + 1) * 256];
            let qsum: i32 = qb.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(dot_codes(&t.codes[b * 256..(b + 1) * 256], qb) + qsum, want[b], "block {b}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            let mut got = vec![0i32; blocks];
            // SAFETY: checked just above.
            unsafe { x86::tq2_block_dots_avx2(&row, &q, &mut got) };
            assert_eq!(got, want, "avx2 blocks={blocks}");
        }
        #[cfg(target_arch = "aarch64")]
        for sdot in neon_builds() {
            let mut got = vec![0i32; blocks];
            // SAFETY: neon_builds() lists sdot only where the CPU has it.
            unsafe { aarch64::tq2_block_dots(sdot, &row, &q, &mut got) };
            assert_eq!(got, want, "neon sdot={sdot} blocks={blocks}");
        }
        let mut got = vec![0i32; blocks];
        tq2_block_dots(&row, &q, &mut got);
        assert_eq!(got, want);
        // Many rows in one call (AVX-512 VNNI here when the CPU has it),
        // finished with random scales: bit for bit the reference's.
        let n_rows = 37;
        let mut rows = Vec::new();
        for r in 0..n_rows {
            for (b, block) in row.chunks_exact(66).enumerate() {
                rows.extend(block[..64].iter().map(|&c| c.rotate_left(2 * (r + b) as u32 % 8)));
                rows.extend(f16::from_f32((rng.next_f32() - 0.5) * 0.1).to_le_bytes());
            }
        }
        let bsums: Vec<i32> = q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect();
        let ds: Vec<f32> = (0..blocks).map(|_| rng.next_f32() * 0.02).collect();
        let mut got = vec![0f32; n_rows];
        tq2_rows(&rows, row.len(), &Prepared::new(&q), &bsums, &ds, &mut got);
        for (r, g) in rows.chunks_exact(row.len()).zip(&got) {
            let mut dots = vec![0i32; blocks];
            tq2_block_dots_scalar(r, &q, &mut dots);
            assert_eq!(g.to_bits(), tq2_finish(r, &dots, &bsums, &ds).to_bits(), "rows blocks={blocks}");
        }
        // The AVX2 build (groups of 8: four whole and one of 5) too.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            let mut avx2 = vec![0f32; n_rows];
            // SAFETY: checked just above.
            unsafe { x86::tq2_rows_avx2(&rows, row.len(), &q, &bsums, &ds, &mut avx2) };
            for (r, (g, w)) in avx2.iter().zip(&got).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "avx2 rows blocks={blocks} row {r}");
            }
            if is_x86_feature_detected!("avxvnni") {
                // SAFETY: checked just above.
                unsafe { x86::tq2_rows_avxvnni(&rows, row.len(), &q, &bsums, &ds, &mut avx2) };
                for (r, (g, w)) in avx2.iter().zip(&got).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "avx-vnni rows blocks={blocks} row {r}");
                }
            }
        }
        // Several tokens at once (tiles of 16 rows x up to 4 tokens with
        // AVX-512 VNNI): each token's results are its own `tq2_rows`.
        let rb = row.len();
        many_tokens_equal_each_alone(
            &q,
            n_rows,
            &mut rng,
            (3, 17),
            |qs, b, d, out| {
                let prepared: Vec<Prepared> = qs.iter().map(|q| Prepared::new(q)).collect();
                tq2_rows_tokens(&rows, rb, &prepared.iter().collect::<Vec<_>>(), b, d, out)
            },
            |q, b, d, out| tq2_rows(&rows, rb, &Prepared::new(q), b, d, out),
        );
        // The AVX2 and AVX-VNNI builds of it (8 rows x up to 4 tokens)
        // whatever this CPU's dispatch picks, each against its own
        // one-token kernel.
        #[cfg(target_arch = "x86_64")]
        for vnni in [false, true] {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if !avx2 || (vnni && !is_x86_feature_detected!("avxvnni")) {
                continue;
            }
            many_tokens_equal_each_alone(
                &q,
                n_rows,
                &mut rng,
                (5, 23),
                |qs, b, d, out| {
                    ternary_rows_tokens(66, 8, &rows, rb, qs, b, d, out, |group, q, b, d, out, m| {
                        // SAFETY: checked just above.
                        unsafe {
                            if vnni {
                                x86::tq2_rows_tokens_avxvnni(group, rb, q, b, d, out, m)
                            } else {
                                x86::tq2_rows_tokens_avx2(group, rb, q, b, d, out, m)
                            }
                        }
                    })
                },
                // SAFETY: checked just above.
                |q, b, d, out| unsafe {
                    if vnni {
                        x86::tq2_rows_avxvnni(&rows, rb, q, b, d, out)
                    } else {
                        x86::tq2_rows_avx2(&rows, rb, q, b, d, out)
                    }
                },
            );
        }
        // Four tokens at once: each equals its own reference.
        let qs: Vec<Vec<i8>> = (0..4).map(|t| q.iter().map(|&v| v.wrapping_add(t * 29)).collect()).collect();
        let mut wants = vec![vec![0i32; blocks]; 4];
        for (qt, w) in qs.iter().zip(wants.iter_mut()) {
            tq2_block_dots_scalar(&row, qt, w);
        }
        let four = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
        let mut gots = vec![vec![0i32; blocks]; 4];
        {
            let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
            tq2_block_dots_x4(&row, four, [g0, g1, g2, g3]);
        }
        assert_eq!(gots, wants, "x4 blocks={blocks}");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            let mut gots = vec![vec![0i32; blocks]; 4];
            let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
            // SAFETY: checked just above.
            unsafe { x86::tq2_block_dots_x4_avx2(&row, four, [g0, g1, g2, g3]) };
            assert_eq!(gots, wants, "x4 avx2 blocks={blocks}");
        }
        #[cfg(target_arch = "aarch64")]
        for sdot in neon_builds() {
            let mut gots = vec![vec![0i32; blocks]; 4];
            let [g0, g1, g2, g3] = &mut gots[..] else { unreachable!() };
            // SAFETY: neon_builds() lists sdot only where the CPU has it.
            unsafe { aarch64::tq2_block_dots_x4(sdot, &row, four, [g0, g1, g2, g3]) };
            assert_eq!(gots, wants, "x4 neon sdot={sdot} blocks={blocks}");
        }
    }
}

#[test]
fn the_i2s_kernel_reproduces_the_kernel_fixtures_integer_dots() {
    let g = crate::golden::Golden::open("ternary-matmul");
    let w = g.u8("w.i2_s");
    let q = g.i8("act.i8tok.q");
    let dots = g.i32("dot.i2s_codes");
    for r in 0..6 {
        for o in 0..64 {
            let row = &w[o * 192..(o + 1) * 192];
            assert_eq!(dot_i2s(row, &q[r * 768..(r + 1) * 768]), dots[r * 64 + o]);
        }
    }
}

#[test]
fn every_f16_kernel_matches_the_reference() {
    let mut rng = Rng::new(4);
    for n in [1usize, 15, 16, 17, 31, 32, 33, 100, 2560] {
        let row: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.next_f32() * 2.0 - 1.0)).collect();
        let x: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let want = dot_f16_scalar(&row, &x);
        let got = dot_f16(&row, &x);
        assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "n={n}: {got} vs {want}");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
            // SAFETY: checked just above (with AVX2/FMA on such CPUs).
            let got = unsafe { x86::dot_f16_avx512(&row, &x) };
            assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "avx512 n={n}: {got} vs {want}");
        }
        #[cfg(target_arch = "aarch64")]
        {
            let got = aarch64::dot_f16(&row, &x);
            assert!((got - want).abs() <= 1e-4 * (n as f32).sqrt(), "neon n={n}: {got} vs {want}");
        }
        // Many rows by many vectors at once (1 to 11 vectors: groups of
        // 8 or 4 and what is left; 1 to 9 rows: tiles and what is
        // left): each the single-vector kernel's bits.
        let xs: Vec<Vec<f32>> = (0..11).map(|_| (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect()).collect();
        let rows: Vec<f16> = (0..9 * n).map(|_| f16::from_f32(rng.next_f32() * 2.0 - 1.0)).collect();
        for (k, m) in [(1, 1), (2, 3), (4, 4), (5, 9), (8, 5), (11, 2)] {
            let vs: Vec<&[f32]> = xs[..k].iter().map(|x| &x[..]).collect();
            let mut many = vec![0f32; m * k];
            f16_rows_many(&rows[..m * n], n, &vs, &mut many);
            for (r, row) in rows[..m * n].chunks_exact(n).enumerate() {
                for (j, x) in vs.iter().enumerate() {
                    let want = dot_f16(row, x).to_bits();
                    assert_eq!(many[j * m + r].to_bits(), want, "{m} rows x {k} vectors n={n}: ({r}, {j})");
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        let xs4: Vec<&[f32]> = xs[..4].iter().map(|x| &x[..]).collect();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            let mut four = [0f32; 4];
            // SAFETY: checked just above; equal lengths.
            unsafe { x86::f16_tile_avx2::<4>(&row, n, &xs4, &mut four) };
            for (j, x) in xs[..4].iter().enumerate() {
                // SAFETY: the same features.
                let one = unsafe { x86::dot_f16_avx2(&row, x) };
                assert_eq!(four[j].to_bits(), one.to_bits(), "avx2 x4 n={n} vector {j}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c") {
            let mut eight = [0f32; 4];
            // SAFETY: checked just above; equal lengths.
            unsafe { x86::f16_tile_avx512::<4>(&row, n, &xs4, &mut eight) };
            for (j, x) in xs[..4].iter().enumerate() {
                // SAFETY: the same features.
                let one = unsafe { x86::dot_f16_avx512(&row, x) };
                assert_eq!(eight[j].to_bits(), one.to_bits(), "avx512 x8 n={n} vector {j}");
            }
        }
    }
    // Every finite f16 value (subnormals too) widens exactly: one-hot
    // activations pick each weight out.
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).filter(|h| h.is_finite()).collect();
    for (i, chunk) in all.chunks(32).enumerate() {
        for k in [0, 7, 8, 15, 16, 31].into_iter().filter(|&k| k < chunk.len()) {
            let mut x = vec![0f32; chunk.len()];
            x[k] = 1.0;
            let got = dot_f16(chunk, &x);
            // Exact; zeros of either sign are equal (the paths' sums
            // start from +0 or -0).
            assert_eq!(got, chunk[k].to_f32(), "chunk {i} lane {k}");
        }
    }
}

/// The FFN's gate gives the same bits on every build this CPU runs, SiLU
/// within a few ulp of g / (1 + e^-g) x u in f64 (its exponential is
/// `exp_f32`, not libm's), the squared ReLU within an ulp; NaN stays NaN
/// (0 for the ReLU), and past the exponential's range SiLU is g or 0
/// (within 1e-35).
#[test]
fn the_gate_is_the_same_on_every_build_and_close_to_the_exact_silu() {
    let mut rng = Rng::new(7);
    let n = 1000;
    let mut g: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 40.0).collect();
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 100.0, -100.0, 88.5, -88.5, 1e-30];
    g[..specials.len()].copy_from_slice(&specials);
    let u: Vec<f32> = (0..n).map(|_| (rng.next_f32() - 0.5) * 4.0).collect();
    for act in [Gate::Silu, Gate::Relu2] {
        let mut want = g.clone();
        float::gate_lanes(act, &mut want, &u);
        let mut builds: Vec<(&str, Vec<f32>)> = Vec::new();
        let mut got = g.clone();
        gate(act, &mut got, &u);
        builds.push(("dispatched", got));
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut got = g.clone();
                // SAFETY: AVX2 and FMA detected.
                unsafe { x86::gate_avx2(act, &mut got, &u) };
                builds.push(("avx2", got));
            }
            if is_x86_feature_detected!("avx512f") {
                let mut got = g.clone();
                // SAFETY: AVX-512 F detected.
                unsafe { x86::gate_avx512(act, &mut got, &u) };
                builds.push(("avx512", got));
            }
        }
        for (name, got) in &builds {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{act:?} {name} [{i}] {a} vs {b}");
            }
        }
        for ((&x, &uv), &y) in g.iter().zip(&u).zip(&want) {
            let (x64, u64) = (f64::from(x), f64::from(uv));
            let exact = match act {
                Gate::Silu => x64 / (1.0 + (-x64).exp()) * u64,
                Gate::Relu2 => x64.max(0.0).powi(2) * u64,
            };
            if x.is_nan() {
                assert!(if act == Gate::Silu { y.is_nan() } else { y == 0.0 }, "{act:?} of NaN: {y}");
            } else if exact.is_finite() {
                let tolerance = if act == Gate::Silu { 6.0 * f64::from(f32::EPSILON) } else { f64::from(f32::EPSILON) };
                assert!(
                    (f64::from(y) - exact).abs() <= tolerance * exact.abs() + 1e-35,
                    "{act:?}({x}) x {uv}: {y}, exact {exact}"
                );
            } else {
                assert!(y.is_nan() || y.is_infinite(), "{act:?}({x}) x {uv}: {y}, exact {exact}");
            }
        }
    }
}
