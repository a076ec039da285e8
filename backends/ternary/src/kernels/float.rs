//! f32 loops of attention (q.k scores, the weighted sum of values). One
//! source, compiled three times: for the baseline target, with AVX2 and
//! with AVX-512 enabled. Rust never reassociates float arithmetic nor
//! fuses a multiply and an add on its own, so every version does the same
//! operations in the same order and gives the same bits; the wider ones do
//! them in wider registers.

use super::isa;
#[cfg(target_arch = "x86_64")]
use super::Isa;

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
    sum_lanes(acc) + tail
}

/// The lanes' total, halves added pairwise (8 + 8, 4 + 4, ...): a few
/// vector adds in the SIMD builds, where adding the lanes in order was 16
/// dependent scalar adds for every dot of a head (most of long-context
/// attention's arithmetic time).
#[inline(always)]
fn sum_lanes(mut acc: [f32; LANES]) -> f32 {
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
    let scaled = e * f32::from_bits(((n as i32 + 127) as u32) << 23);
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
fn axpy_lanes(y: &mut [f32], w: f32, x: &[f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// Where one kv head's keys and values sit in the cache: position p's
/// vector is `k[p * stride + offset..][..len]` (likewise `v`), for
/// positions `0..n`. `T`: how the cache stores them (f32, or f16 bits).
#[derive(Clone, Copy)]
pub struct KvHead<'a, T = f32> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub stride: usize,
    pub offset: usize,
    pub len: usize,
    pub n: usize,
}

/// The widest head attention handles (BitNet models use 64 or 128).
pub const MAX_HEAD_DIM: usize = 256;

/// A KV cache element: f32 as it is, or f16 (its bits, halving the
/// cache's memory and the bytes long-context attention reads).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `src` as f32 (converted into `buf` when it has to be).
    fn widen<'a>(src: &'a [Self], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32];
}

impl KvElem for f32 {
    #[inline(always)]
    fn widen<'a>(src: &'a [f32], _: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        src
    }
}

/// f16 bits. Every f16 widens exactly, so attention over an f16 cache is
/// attention over the f32 values it holds, bit for bit.
impl KvElem for u16 {
    #[inline(always)]
    fn widen<'a>(src: &'a [u16], buf: &'a mut [f32; MAX_HEAD_DIM]) -> &'a [f32] {
        for (o, h) in buf.iter_mut().zip(src) {
            *o = f16_bits_to_f32(*h);
        }
        &buf[..src.len()]
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

/// Attention of the query heads in `q` (one after another, `kv.len`
/// each) that share one kv head: per head, scores q.k_p * scale, softmax,
/// and the weighted sum of v_p into `out` (same layout as `q`). Each key
/// and value is read once for all the heads, and the loops over positions
/// run inside one (SIMD-built) function: calling `dot_f32` and `axpy` per
/// position cost a call and a dispatch every 128 values. Per head the
/// operations and their order are exactly those of `dot_f32`, a max, expf,
/// and `axpy` per position, so the bits are the same.
#[inline(always)]
fn attend_lanes<T: KvElem>(q: &[f32], kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let (hd, n) = (kv.len, kv.n);
    assert!(hd <= MAX_HEAD_DIM, "head dimension {hd} over {MAX_HEAD_DIM}");
    let heads = q.len() / hd;
    let mut buf = [0f32; MAX_HEAD_DIM];
    scores.clear();
    scores.resize(heads * n, 0.0);
    for p in 0..n {
        let k = &kv.k[p * kv.stride + kv.offset..][..hd];
        prefetch_ahead(k, kv.stride);
        let k = T::widen(k, &mut buf);
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * n + p] = dot_lanes(qh, k) * scale;
        }
    }
    let mut sums = [0f32; 8];
    let mut sums_vec = Vec::new();
    let sums: &mut [f32] = if heads <= 8 {
        &mut sums[..heads]
    } else {
        sums_vec.resize(heads, 0.0);
        &mut sums_vec
    };
    // Softmax per head: the exponentials in one pass, their sum in 16
    // running lanes as a dot's, the weights (e / sum) in another pass.
    for (s, sum) in scores.chunks_exact_mut(n.max(1)).zip(sums.iter_mut()) {
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for x in s.iter_mut() {
            *x = exp_f32(*x - m);
        }
        *sum = sum_values(s);
        let total = *sum;
        for x in s.iter_mut() {
            *x /= total;
        }
    }
    out.fill(0.0);
    for p in 0..n {
        let v = &kv.v[p * kv.stride + kv.offset..][..hd];
        prefetch_ahead(v, kv.stride);
        let v = T::widen(v, &mut buf);
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            axpy_lanes(o, scores[h * n + p], v);
        }
    }
}

/// sum x_i in 16 running lanes, then `sum_lanes`.
#[inline(always)]
fn sum_values(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let c = x.chunks_exact(LANES);
    let tail: f32 = c.remainder().iter().sum();
    for v in c {
        for i in 0..LANES {
            acc[i] += v[i];
        }
    }
    sum_lanes(acc) + tail
}

/// Positions ahead whose key / value lines are requested: one head's
/// vector is 512 bytes every `stride` floats (2.5 KiB in 2B4T), a pattern
/// the hardware prefetcher follows poorly; loads of the cache were most
/// of long-context attention's time.
const KV_AHEAD: usize = 8;

#[inline(always)]
fn prefetch_ahead<T>(x: &[T], stride: usize) {
    let p = x.as_ptr().wrapping_add(KV_AHEAD * stride).cast::<u8>();
    for line in (0..std::mem::size_of_val(x)).step_by(64) {
        super::prefetch(p.wrapping_add(line), Some(0));
    }
}

/// The reference (and the baseline build).
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

pub fn axpy_scalar(y: &mut [f32], w: f32, x: &[f32]) {
    axpy_lanes(y, w, x)
}

pub fn attend_scalar<T: KvElem>(q: &[f32], kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_lanes(q, kv, scale, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2<T: KvElem>(q: &[f32], kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_lanes(q, kv, scale, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512<T: KvElem>(q: &[f32], kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_lanes(q, kv, scale, scores, out)
}

/// `attend_lanes` with the widest build this CPU runs.
#[inline]
pub fn attend<T: KvElem>(q: &[f32], kv: KvHead<T>, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    assert_eq!(q.len(), out.len(), "attention: query and output differ in length");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX-512 F.
        Isa::Avx512Vnni => unsafe { attend_avx512(q, kv, scale, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked AVX2.
        Isa::Avx2 => unsafe { attend_avx2(q, kv, scale, scores, out) },
        _ => attend_scalar(q, kv, scale, scores, out),
    }
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
    fn grouped_attention_gives_the_per_position_loops_bits() {
        let mut rng = Rng::new(23);
        let (hd, stride) = (40usize, 3 * 40);
        for (heads, n) in [(1usize, 1usize), (4, 1), (4, 37), (1, 200), (3, 64)] {
            let k: Vec<f32> = (0..n * stride).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let v: Vec<f32> = (0..n * stride).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let q: Vec<f32> = (0..heads * hd).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let kv = KvHead { k: &k, v: &v, stride, offset: hd, len: hd, n };
            // The loops the model ran before: per head, dot_f32 and axpy per position.
            let mut want = vec![0f32; heads * hd];
            for (qh, o) in q.chunks_exact(hd).zip(want.chunks_exact_mut(hd)) {
                let s: Vec<f32> = (0..n).map(|p| dot_f32(qh, &k[p * stride + hd..][..hd]) * 0.3).collect();
                let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f32> = s.iter().map(|x| exp_f32(x - m)).collect();
                let sum = sum_values(&e);
                for (p, x) in e.iter().enumerate() {
                    axpy(o, x / sum, &v[p * stride + hd..][..hd]);
                }
            }
            let mut scores = Vec::new();
            let mut got = vec![1f32; heads * hd];
            attend_scalar(&q, kv, 0.3, &mut scores, &mut got);
            assert_eq!(got, want, "scalar, {heads} heads, {n} positions");
            let mut got = vec![1f32; heads * hd];
            attend(&q, kv, 0.3, &mut scores, &mut got);
            assert_eq!(got, want, "dispatched, {heads} heads, {n} positions");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![1f32; heads * hd];
                // SAFETY: AVX2 checked.
                unsafe { attend_avx2(&q, kv, 0.3, &mut scores, &mut got) };
                assert_eq!(got, want, "avx2, {heads} heads, {n} positions");
            }
        }
    }

    /// An f16 cache gives attention over the values it holds exactly: the
    /// same bits as an f32 cache holding the f16-rounded values, in every
    /// build; and every f16 widens as `half` widens it.
    #[test]
    fn attention_over_an_f16_cache_equals_attention_over_its_values_in_f32() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}");
        }
        let mut rng = Rng::new(5);
        let (hd, stride, heads) = (128, 3 * 128, 4);
        for n in [1usize, 2, 9, 40] {
            let k16: Vec<u16> =
                (0..n * stride).map(|_| half::f16::from_f32(rng.next_f32() * 4.0 - 2.0).to_bits()).collect();
            let v16: Vec<u16> =
                (0..n * stride).map(|_| half::f16::from_f32(rng.next_f32() * 4.0 - 2.0).to_bits()).collect();
            let (k32, v32): (Vec<f32>, Vec<f32>) =
                (k16.iter().map(|h| f16_bits_to_f32(*h)).collect(), v16.iter().map(|h| f16_bits_to_f32(*h)).collect());
            let q: Vec<f32> = (0..heads * hd).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let h32 = KvHead { k: &k32[..], v: &v32[..], stride, offset: hd, len: hd, n };
            let h16 = KvHead { k: &k16[..], v: &v16[..], stride, offset: hd, len: hd, n };
            let mut scores = Vec::new();
            let mut want = vec![0f32; heads * hd];
            attend_scalar(&q, h32, 0.3, &mut scores, &mut want);
            let mut got = vec![1f32; heads * hd];
            attend_scalar(&q, h16, 0.3, &mut scores, &mut got);
            assert_eq!(got, want, "scalar f16, {n} positions");
            let mut got = vec![1f32; heads * hd];
            attend(&q, h16, 0.3, &mut scores, &mut got);
            assert_eq!(got, want, "dispatched f16, {n} positions");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let mut got = vec![1f32; heads * hd];
                // SAFETY: AVX2 checked.
                unsafe { attend_avx2(&q, h16, 0.3, &mut scores, &mut got) };
                assert_eq!(got, want, "avx2 f16, {n} positions");
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
