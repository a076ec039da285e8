//! f32 loops of attention (q.k scores, the weighted sum of values). One
//! source, compiled three times: for the baseline target, with AVX2 and
//! with AVX-512 enabled. Rust never reassociates float arithmetic nor
//! fuses a multiply and an add on its own, so every version does the same
//! operations in the same order and gives the same bits; the wider ones do
//! them in wider registers.

use super::{isa, Isa};

/// Lanes of the running sums: the order of additions every version keeps.
const LANES: usize = 16;

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_lanes(y: &mut [f32], w: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// The reference (and the baseline build).
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

pub fn axpy_scalar(y: &mut [f32], w: f32, x: &[f32]) {
    axpy_lanes(y, w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn axpy_avx2(y: &mut [f32], w: f32, x: &[f32]) {
    axpy_lanes(y, w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn axpy_avx512(y: &mut [f32], w: f32, x: &[f32]) {
    axpy_lanes(y, w, x)
}

/// sum a_i b_i, in 16 running lanes.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { dot_f32_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { dot_f32_avx2(a, b) },
        _ => dot_f32_scalar(a, b),
    }
}

/// y += w x.
#[inline]
pub fn axpy(y: &mut [f32], w: f32, x: &[f32]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { axpy_avx512(y, w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { axpy_avx2(y, w, x) },
        _ => axpy_scalar(y, w, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;

    #[test]
    fn every_attention_kernel_gives_the_references_bits() {
        let mut rng = Rng::new(11);
        for len in [0usize, 1, 7, 15, 16, 17, 64, 100, 128, 129, 300] {
            let a: Vec<f32> = (0..len).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
            let want = dot_f32_scalar(&a, &b);
            let mut y0: Vec<f32> = (0..len).map(|_| rng.next_f32()).collect();
            let mut y1 = y0.clone();
            axpy_scalar(&mut y0, 0.37, &a);
            assert_eq!(dot_f32(&a, &b).to_bits(), want.to_bits(), "dispatched dot, len {len}");
            axpy(&mut y1, 0.37, &a);
            assert_eq!(y0, y1, "dispatched axpy, len {len}");
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 checked.
                    assert_eq!(unsafe { dot_f32_avx2(&a, &b) }.to_bits(), want.to_bits(), "avx2 dot, len {len}");
                    let mut y2: Vec<f32> = y0.clone();
                    let mut y3 = y0.clone();
                    axpy_scalar(&mut y2, -1.5, &b);
                    // SAFETY: AVX2 checked.
                    unsafe { axpy_avx2(&mut y3, -1.5, &b) };
                    assert_eq!(y2, y3, "avx2 axpy, len {len}");
                }
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512 F checked.
                    assert_eq!(unsafe { dot_f32_avx512(&a, &b) }.to_bits(), want.to_bits(), "avx512 dot, len {len}");
                    let mut y2: Vec<f32> = y0.clone();
                    let mut y3 = y0.clone();
                    axpy_scalar(&mut y2, 2.25, &b);
                    // SAFETY: AVX-512 F checked.
                    unsafe { axpy_avx512(&mut y3, 2.25, &b) };
                    assert_eq!(y2, y3, "avx512 axpy, len {len}");
                }
            }
        }
    }
}
