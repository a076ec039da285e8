//! The f32 arithmetic attention is defined by: dots and sums in 16
//! running lanes added pairwise, a multiply then an add per value (Rust
//! never reassociates float arithmetic nor fuses a multiply and an add on
//! its own), an exp in plain f32 arithmetic, and the exact f16 widening.
//! Inlined into every build of `attention`, which gives the same bits in
//! each; the SIMD tiles there keep this order by hand.

/// Lanes of the running sums: the order of additions every version keeps.
pub(super) const LANES: usize = 16;

#[inline(always)]
pub(super) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
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

#[inline(always)]
pub(super) fn axpy_lanes(y: &mut [f32], w: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// An f16 (its bits) as f32: exact for every value (normals, subnormals,
/// infinities; NaNs stay NaN), inlined and branch-free enough to vectorize
/// in the SIMD builds (see `super::f16_le_to_f32` for why not `half`'s).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = (h & 0x7fff) << 13;
    let v = if h & 0x7c00 == 0x7c00 {
        // Infinity or NaN: all-ones exponent, mantissa kept.
        f32::from_bits(magnitude | 0x7f80_0000)
    } else {
        f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)
    };
    f32::from_bits(v.to_bits() | (h & 0x8000) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

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
