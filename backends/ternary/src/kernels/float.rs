//! The f32 arithmetic attention is defined by: dots and sums in 16
//! running lanes added pairwise, a fused multiply-add per value (one
//! rounding: `fma_f32`), an exp in plain f32 arithmetic, and the exact f16
//! widening. Inlined into every build of `attention`, which gives the same
//! bits in each; the SIMD tiles there keep this order by hand.

/// Lanes of the running sums: the order of additions every version keeps.
pub(super) const LANES: usize = 16;

#[inline(always)]
pub(super) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(0f32, |t, (x, y)| fma_f32(*x, *y, t));
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] = fma_f32(x[i], y[i], acc[i]);
        }
    }
    sum_lanes(acc) + tail
}

/// The lanes' total, halves added pairwise (8 + 8, 4 + 4, ...): a few
/// vector adds in the SIMD builds, where adding the lanes in order was 16
/// dependent scalar adds for every dot of a head (most of long-context
/// attention's arithmetic time).
#[inline(always)]
pub(super) fn sum_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for i in 0..half {
            acc[i] += acc[i + half];
        }
        half /= 2;
    }
    acc[0]
}

/// e^x for softmax, in plain f32 arithmetic that every build vectorizes
/// and rounds the same way (libm's expf is a call per value: 2.4 million a
/// token at 4,000 positions of 2B4T). Cephes' expf: x = n ln 2 + r with n
/// = floor(x log2 e + 1/2) and ln 2 in two parts, e^r by a degree-7
/// polynomial, then 2^n in the exponent bits; within 2 ulp of e^x for x
/// in [-87, 88]. Below -87 (weights under 1e-38 of the largest) it gives
/// 0, above 88 infinity; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let c = x.clamp(-87.0, 88.0);
    let n = (c * std::f32::consts::LOG2_E + 0.5).floor();
    let r = c - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e = p * z + r + 1.0;
    // 2^n from n's bits: n + 1.5 * 2^23 holds the integer n in its low
    // mantissa bits. (`n as i32` is exact too, but its saturating
    // semantics kept it scalar: 16 conversions with NaN fix-ups per
    // vector, most of softmax's time.)
    let n_int = (n + 12_582_912.0).to_bits().wrapping_sub(0x4b40_0000);
    let scaled = e * f32::from_bits(n_int.wrapping_add(127) << 23);
    let y = if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        scaled
    };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The FFN's gate, in place: g = act(g) x u per value (SwiGLU's SiLU
/// g / (1 + e^-g), or BitNet b1.58's squared ReLU). SiLU's e^-g is
/// `exp_f32`, not libm's expf (a call per value, 6,912 a layer of a 2B
/// model): every build vectorizes this and gives the same bits.
#[inline(always)]
pub(super) fn gate_lanes(act: Gate, g: &mut [f32], u: &[f32]) {
    match act {
        Gate::Silu => {
            for (gv, uv) in g.iter_mut().zip(u) {
                *gv = *gv / (1.0 + exp_f32(-*gv)) * uv;
            }
        }
        Gate::Relu2 => {
            for (gv, uv) in g.iter_mut().zip(u) {
                let r = gv.max(0.0);
                *gv = r * r * uv;
            }
        }
    }
}

/// The activation of a gated FFN (`gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Silu,
    Relu2,
}

#[inline(always)]
pub(super) fn axpy_lanes(y: &mut [f32], w: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = fma_f32(w, *v, *o);
    }
}

/// a x b + c rounded once, as the SIMD builds' fused multiply-adds give it.
/// The instruction where the build has one (aarch64 always; x86 built with
/// FMA); elsewhere `fma_f32_soft`, not the C library's `fmaf`: MinGW's,
/// which Windows builds would call, rounds some cases wrongly.
#[inline(always)]
pub(super) fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
        a.mul_add(b, c)
    } else {
        fma_f32_soft(a, b, c)
    }
}

/// `fma_f32` in f64 arithmetic. The product of two f32 is exact in f64;
/// the f64 sum rounds once and rounding that to f32 would round twice, so
/// the sum is first rounded to odd (an inexact sum whose last bit is even
/// is moved one ulp toward the exact value, found by an error-free
/// two-sum). Rounding an odd-rounded value with 53 bits to 24 or fewer
/// gives the correctly rounded result (Boldo and Melquiond).
#[inline(always)]
pub(super) fn fma_f32_soft(a: f32, b: f32, c: f32) -> f32 {
    let (ab, c) = (f64::from(a) * f64::from(b), f64::from(c));
    let s = ab + c;
    let back = s - ab;
    let err = (ab - (s - back)) + (c - back);
    // Away from zero when the error has the sum's sign, else toward it;
    // only for a finite sum (infinities and NaNs carry no error).
    let step: i64 = if err == 0.0 || !s.is_finite() || s.to_bits() & 1 == 1 {
        0
    } else if (err > 0.0) == (s > 0.0) {
        1
    } else {
        -1
    };
    f64::from_bits(s.to_bits().wrapping_add_signed(step)) as f32
}

/// An f16 (its bits) as f32: exact for every value (normals, subnormals,
/// infinities; NaNs stay NaN), inlined and branch-free enough to vectorize
/// in the SIMD builds (see `super::f16_le_to_f32` for why not `half`'s).
/// No step takes a subnormal f32 operand: x86 runs arithmetic on one
/// through a microcode assist (about 100 cycles). An earlier version
/// scaled the shifted bits by 2^112, a subnormal f32 for every subnormal
/// f16. A Q6_K block scale (about max |w| / 4,000) is a subnormal f16
/// when the block's largest weight is below about 0.25, and that multiply
/// made the scalar finish of such Q6_K rows cost twice their block dots
/// (decoding the generated TQ2_0 + Q6_K model on AVX2: half the speed).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let (exponent, mantissa) = (h & 0x7c00, h & 0x03ff);
    let v = if exponent == 0x7c00 {
        // Infinity or NaN: all-ones exponent, mantissa kept.
        f32::from_bits(mantissa << 13 | 0x7f80_0000)
    } else if exponent == 0 {
        // Zero or subnormal: mantissa * 2^-24, exact (both normal, or zero).
        mantissa as f32 * f32::from_bits(0x3380_0000)
    } else {
        // Normal: the exponent re-biased from 15 to 127 in the bits.
        f32::from_bits(((h & 0x7fff) << 13) + (112 << 23))
    };
    f32::from_bits(v.to_bits() | (h & 0x8000) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FMA instruction of this machine, where there is one to compare
    /// with (not `f32::mul_add` off aarch64: that may be the C library's).
    fn hardware_fma() -> Option<fn(f32, f32, f32) -> f32> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("fma") {
            #[target_feature(enable = "fma")]
            fn fused(a: f32, b: f32, c: f32) -> f32 {
                use std::arch::x86_64::*;
                _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
            }
            // SAFETY: FMA was detected just above.
            return Some(|a, b, c| unsafe { fused(a, b, c) });
        }
        #[cfg(target_arch = "aarch64")]
        return Some(|a, b, c| a.mul_add(b, c));
        #[allow(unreachable_code)]
        None
    }

    /// The software fused multiply-add rounds once: it agrees with the
    /// instruction bit for bit on random operands and on sums that cancel,
    /// and on a product that lies on an f32 halfway point it takes the side
    /// a sum rounded twice (f64, then f32) gets wrong.
    #[test]
    fn the_software_fma_rounds_once_as_the_instruction_does() {
        // (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: halfway between two f32; a
        // tiny c decides the side, and is lost in an f64 sum.
        let a = f32::from_bits(1f32.to_bits() + (1 << 11));
        for c in [2f32.powi(-60), -(2f32.powi(-60))] {
            let want =
                if c > 0.0 { f32::from_bits((1.0f32 + 2f32.powi(-11)).to_bits() + 1) } else { 1.0 + 2f32.powi(-11) };
            assert_eq!(fma_f32_soft(a, a, c), want, "c = {c:e}");
            assert_eq!(fma_f32(a, a, c), want, "c = {c:e}");
        }
        // Rounding the f64 sum to f32 goes to the even side for both.
        assert_eq!((f64::from(a) * f64::from(a) + f64::from(2f32.powi(-60))) as f32, 1.0 + 2f32.powi(-11));
        assert!(fma_f32_soft(f32::INFINITY, 0.0, 1.0).is_nan());
        assert_eq!(fma_f32_soft(f32::MAX, 2.0, 0.0), f32::INFINITY);
        assert_eq!(fma_f32_soft(2.0, 3.0, f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(fma_f32_soft(-0.0, 1.0, -0.0).to_bits(), (-0f32).to_bits());

        let Some(fused) = hardware_fma() else { return };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Finite values of moderate exponent, any mantissa and sign.
        let value = |bits: u64| f32::from_bits((bits as u32 & 0x807f_ffff) | ((100 + (bits >> 32) as u32 % 56) << 23));
        for _ in 0..200_000 {
            let (x, y) = (value(next()), value(next()));
            let cs = [value(next()), -(x * y), -(x * y) * (1.0 + f32::EPSILON), f32::from_bits(next() as u32)];
            for c in cs {
                let (got, want) = (fma_f32_soft(x, y, c), fused(x, y, c));
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{x:e} x {y:e} + {c:e}: {got:e}, the instruction {want:e}"
                );
            }
        }
    }

    /// The softmax exponential: within 2 ulp of the exact e^x (f64) over
    /// the range where it is not 0 or infinity, exact at 0, the edges as
    /// documented, and the same bits in every build (the SIMD builds run
    /// it vectorized inside `attend`, checked against the scalar there).
    #[test]
    fn the_softmax_exponential_is_within_two_ulp() {
        let ulp = |y: f32| f32::from_bits(y.to_bits() + 1) - y;
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp_f32(x), f64::from(x).exp());
            let err = (f64::from(got) - want).abs() / f64::from(ulp(want as f32));
            worst = worst.max(err);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
