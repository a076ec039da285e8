//! The aarch64 kernels: plain NEON, which every ARMv8-A CPU has (it is part
//! of every aarch64 Rust target, so no run-time check is needed), and the
//! same kernels with `sdot` from the dot-product extension (ARMv8.2+:
//! Apple M1 on, Cortex-A55/A76 on, Graviton 2 on, Snapdragon X), built for
//! it with `target_feature` and chosen by `super::isa()` only when the CPU
//! has it. Each kernel is written once, generic over how 16 int8 pairs are
//! multiplied and summed into four i32 lanes (`Dot`), and is equal to its
//! scalar reference in `super` (tested there, under qemu on x86 hosts).
//!
//! `sdot` and the f16 -> f32 widening (`fcvtl`) are written as inline asm:
//! their intrinsics (`vdotq_s32`, `vcvt_f32_f16`) are not stable in the
//! Rust versions we support. Both are single instructions with no memory
//! access.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::vocab::{Q6K_BLOCK, Q8_0_BLOCK};
use super::{dot_f16_scalar, prefetch, prefetch_distance};

/// acc + the sums of 16 int8 products, four products to a lane. Which four
/// go to which lane differs between the implementations; the kernels only
/// ever add all four lanes, so every implementation gives the same total.
pub(in crate::kernels) trait Dot {
    /// # Safety
    /// The CPU has what the implementation uses (`Sdot`: dotprod).
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// NEON without the dot-product extension: widening multiplies into i16,
/// then pairwise adds into the i32 lanes. Each i16 lane holds two
/// products, a_i b_i + a_{i+8} b_{i+8}: callers keep that within i16
/// (I2_S/TQ codes are 0..=2 or 0..=-2, Q6_K weights -32..=31, Q8_0
/// activations -127..=127: at most 2 * 128 * 127 = 32512).
struct Plain;

impl Dot for Plain {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        vpadalq_s16(acc, vmlal_high_s8(p, a, b))
    }
}

/// ARMv8.2's `sdot`: four int8 products summed into each i32 lane in one
/// instruction.
pub(in crate::kernels) struct Sdot;

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: register-only; the caller's function enables dotprod.
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}

/// The 2-bit field at `SHIFT` of each byte: codes 0..=2 as int8.
#[inline(always)]
unsafe fn plane<const SHIFT: i32>(w: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(vandq_u8(vshlq_u8(w, vdupq_n_s8(-(SHIFT as i8))), vdupq_n_u8(3)))
}

/// The 2-bit field under `MASK` of each byte left in place: codes 0..=2
/// times 4^p for the field at bits 2p (p <= 2, so at most 32 as int8). One
/// AND where `plane` takes a shift and an AND; the kernels keep each scale
/// in an accumulator of its own and shift it back once (`scaled_sum`).
#[inline(always)]
unsafe fn plane_in_place<const MASK: u8>(w: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(vandq_u8(w, vdupq_n_u8(MASK)))
}

/// The dot from accumulators of the planes at scales 1, 4 and 16
/// (`plane_in_place`): exact multiples, so the shifts back are exact.
#[inline(always)]
unsafe fn scaled_sum(ones: int32x4_t, fours: int32x4_t, sixteens: int32x4_t) -> i32 {
    vaddvq_s32(vaddq_s32(ones, vaddq_s32(vshrq_n_s32::<2>(fours), vshrq_n_s32::<4>(sixteens))))
}

#[inline(always)]
unsafe fn load_s8(p: &[i8], at: usize) -> int8x16_t {
    vld1q_s8(p[at..at + 16].as_ptr())
}

#[inline(always)]
unsafe fn load_u8(p: &[u8], at: usize) -> uint8x16_t {
    vld1q_u8(p[at..at + 16].as_ptr())
}

/// I2_S (32-byte blocks of 128 weights, byte j = e[j]<<6 | e[32+j]<<4 |
/// e[64+j]<<2 | e[96+j]) against one token: sum code * q.
#[inline(always)]
unsafe fn dot_i2s_k<D: Dot>(row: &[u8], q: &[i8]) -> i32 {
    let pf = prefetch_distance();
    let mut acc = [vdupq_n_s32(0); 4];
    for (i, (block, qb)) in row.chunks_exact(32).zip(q.chunks_exact(128)).enumerate() {
        if i % 2 == 0 {
            prefetch(block.as_ptr(), pf);
        }
        for h in [0, 16] {
            // The top plane by a shift alone, the middle two in place.
            let w = load_u8(block, h);
            acc[0] = D::dot(acc[0], vreinterpretq_s8_u8(vshrq_n_u8::<6>(w)), load_s8(qb, h));
            acc[1] = D::dot(acc[1], plane_in_place::<0x30>(w), load_s8(qb, 32 + h));
            acc[2] = D::dot(acc[2], plane_in_place::<0x0c>(w), load_s8(qb, 64 + h));
            acc[3] = D::dot(acc[3], plane_in_place::<0x03>(w), load_s8(qb, 96 + h));
        }
    }
    scaled_sum(vaddq_s32(acc[0], acc[3]), acc[2], acc[1])
}

/// I2_S against `N` tokens: each block's codes unpacked once for all of
/// them (prompt processing reads the row once per N tokens).
#[inline(always)]
unsafe fn dot_i2s_xn_k<D: Dot, const N: usize>(row: &[u8], q: [&[i8]; N]) -> [i32; N] {
    let mut acc = [vdupq_n_s32(0); N];
    for (b, block) in row.chunks_exact(32).enumerate() {
        for h in [0, 16] {
            let w = load_u8(block, h);
            let planes = [plane::<6>(w), plane::<4>(w), plane::<2>(w), plane::<0>(w)];
            for (acc, q) in acc.iter_mut().zip(q) {
                let qb = &q[b * 128..(b + 1) * 128];
                for (k, codes) in planes.iter().enumerate() {
                    *acc = D::dot(*acc, *codes, load_s8(qb, 32 * k + h));
                }
            }
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

/// TQ2_0 (66-byte blocks: 64 code bytes, f16 scale; plane l of byte j + m
/// of group j in {0, 32} is element 4j + 32l + m): per block, sum code * q.
#[inline(always)]
unsafe fn tq2_block_dots_k<D: Dot>(row: &[u8], q: &[i8], out: &mut [i32]) {
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(66).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        // Planes 0 and 3 at scale 1 (an AND, a shift), 1 and 2 in place.
        let (mut ones, mut fours, mut sixteens) = (vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0));
        for j in [0, 32] {
            for h in [0, 16] {
                let w = load_u8(block, j + h);
                ones = D::dot(ones, plane_in_place::<0x03>(w), load_s8(qb, 4 * j + h));
                fours = D::dot(fours, plane_in_place::<0x0c>(w), load_s8(qb, 4 * j + 32 + h));
                sixteens = D::dot(sixteens, plane_in_place::<0x30>(w), load_s8(qb, 4 * j + 64 + h));
                ones = D::dot(ones, vreinterpretq_s8_u8(vshrq_n_u8::<6>(w)), load_s8(qb, 4 * j + 96 + h));
            }
        }
        *o = scaled_sum(ones, fours, sixteens);
    }
}

/// TQ2_0 per-block dots for four tokens, each block's codes unpacked once.
#[inline(always)]
unsafe fn tq2_block_dots_x4_k<D: Dot>(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) {
    let mut out = out;
    for (b, block) in row.chunks_exact(66).enumerate() {
        let mut acc = [vdupq_n_s32(0); 4];
        for j in [0, 32] {
            for h in [0, 16] {
                let w = load_u8(block, j + h);
                let planes = [plane::<0>(w), plane::<2>(w), plane::<4>(w), plane::<6>(w)];
                for (acc, q) in acc.iter_mut().zip(q) {
                    let qb = &q[b * 256..(b + 1) * 256];
                    for (l, codes) in planes.iter().enumerate() {
                        *acc = D::dot(*acc, *codes, load_s8(qb, 4 * j + 32 * l + h));
                    }
                }
            }
        }
        for (out, acc) in out.iter_mut().zip(acc) {
            out[b] = vaddvq_s32(acc);
        }
    }
}

/// Minus the base-3 digit ((t * 3) >> 8) of each byte: the two compares
/// t > 85 and t > 170 are all-ones (-1) where true, so their sum is
/// -digit. The TQ1_0 kernel sums -digit * q and negates once per block.
#[inline(always)]
unsafe fn neg_digits(t: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(vaddq_u8(vcgtq_u8(t, vdupq_n_u8(85)), vcgtq_u8(t, vdupq_n_u8(170))))
}

/// TQ1_0 (54-byte blocks: 32 bytes of five digits for elements 32n + m,
/// 16 bytes of five for 160 + 16n + m, 4 bytes of four for 240 + 4n + j,
/// f16 scale; digit n of byte b is ((b * 3^n mod 256) * 3) >> 8): per
/// block, sum code * q. NEON multiplies bytes directly (mod 256), so each
/// digit is a multiply and three compare/add steps.
#[inline(always)]
unsafe fn tq1_block_dots_k<D: Dot>(row: &[u8], q: &[i8], out: &mut [i32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    const TAIL: [u8; 16] = [1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27];
    let tail_pow = vld1q_u8(TAIL.as_ptr());
    let pf = prefetch_distance();
    for ((block, qb), o) in row.chunks_exact(54).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        prefetch(block.as_ptr(), pf);
        let (x0, x1, x2) = (load_u8(block, 0), load_u8(block, 16), load_u8(block, 32));
        let (mut a0, mut a1) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for (n, p) in POW3.into_iter().enumerate() {
            let p = vdupq_n_u8(p);
            a0 = D::dot(a0, neg_digits(vmulq_u8(x0, p)), load_s8(qb, 32 * n));
            a1 = D::dot(a1, neg_digits(vmulq_u8(x1, p)), load_s8(qb, 32 * n + 16));
            a0 = D::dot(a0, neg_digits(vmulq_u8(x2, p)), load_s8(qb, 160 + 16 * n));
        }
        // The last 4 bytes, repeated in each 4-byte lane, times 1, 3, 9, 27.
        let h = u32::from_le_bytes([block[48], block[49], block[50], block[51]]);
        let x3 = vreinterpretq_u8_u32(vdupq_n_u32(h));
        a1 = D::dot(a1, neg_digits(vmulq_u8(x3, tail_pow)), load_s8(qb, 240));
        *o = -vaddvq_s32(vaddq_s32(a0, a1));
    }
}

/// The four f16 of the low (`fcvtl`) or high (`fcvtl2`) half of `h`, as
/// f32: exact, as every f16 is an f32.
#[inline(always)]
unsafe fn f16_widen(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only; FCVTL/FCVTL2 (half to single) are base ARMv8 SIMD.
    asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        h = in(vreg) h,
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        options(pure, nomem, nostack, preserves_flags)
    );
    (lo, hi)
}

/// An f16 row times f32 activations, 16 at a time in four fused
/// multiply-add chains.
unsafe fn dot_f16_k(row: &[f16], x: &[f32]) -> f32 {
    let n = row.len().min(x.len()) / 16 * 16;
    let pf = prefetch_distance();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let bits: &[u16] = std::slice::from_raw_parts(row.as_ptr().cast(), n);
    for (i, (h, x)) in bits.chunks_exact(16).zip(x[..n].chunks_exact(16)).enumerate() {
        if i % 2 == 0 {
            prefetch(h.as_ptr().cast(), pf);
        }
        let (a, b) = f16_widen(vld1q_u16(h.as_ptr()));
        let (c, d) = f16_widen(vld1q_u16(h[8..].as_ptr()));
        acc[0] = vfmaq_f32(acc[0], a, vld1q_f32(x.as_ptr()));
        acc[1] = vfmaq_f32(acc[1], b, vld1q_f32(x[4..].as_ptr()));
        acc[2] = vfmaq_f32(acc[2], c, vld1q_f32(x[8..].as_ptr()));
        acc[3] = vfmaq_f32(acc[3], d, vld1q_f32(x[12..].as_ptr()));
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(s) + dot_f16_scalar(&row[n..], &x[n..])
}

/// Q8_0 rows (34-byte blocks: f16 scale, 32 int8) against Q8_0
/// activations: per block, sum w * q.
#[inline(always)]
unsafe fn q8_0_block_dots_k<D: Dot>(row: &[u8], q: &[i8], out: &mut [i32]) {
    for ((block, qb), o) in row.chunks_exact(Q8_0_BLOCK).zip(q.chunks_exact(32)).zip(out.iter_mut()) {
        let w = &block[2..];
        let acc = D::dot(vdupq_n_s32(0), vreinterpretq_s8_u8(load_u8(w, 0)), load_s8(qb, 0));
        *o = vaddvq_s32(D::dot(acc, vreinterpretq_s8_u8(load_u8(w, 16)), load_s8(qb, 16)));
    }
}

/// Q6_K rows (210-byte blocks: 128 bytes of low nibbles, 64 of high bit
/// pairs, 16 int8 sub-block scales, f16 scale) against Q8_K activations:
/// per block, sum over the 16 sub-blocks of scale_j * sum (w - 32) * q.
#[inline(always)]
unsafe fn q6k_block_dots_k<D: Dot>(row: &[u8], q: &[i8], out: &mut [i32]) {
    let (m4, m2, offset) = (vdupq_n_u8(0xF), vdupq_n_u8(3), vdupq_n_s8(32));
    for ((blk, qb), o) in row.chunks_exact(Q6K_BLOCK).zip(q.chunks_exact(256)).zip(out.iter_mut()) {
        let mut acc = vdupq_n_s32(0);
        for half in 0..2 {
            for h in [0, 16] {
                let ql0 = load_u8(blk, half * 64 + h);
                let ql1 = load_u8(blk, half * 64 + 32 + h);
                let qh = load_u8(blk, 128 + half * 32 + h);
                let vals = [
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                    vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m2))),
                    vorrq_u8(vshrq_n_u8::<4>(ql0), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m2))),
                    vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                ];
                for (part, w) in vals.into_iter().enumerate() {
                    let w = vsubq_s8(vreinterpretq_s8_u8(w), offset);
                    let x = load_s8(qb, half * 128 + part * 32 + h);
                    // Elements 0..16 of a part use scale j, 16..32 scale j + 1.
                    let scale = i32::from(blk[192 + half * 8 + part * 2 + h / 16] as i8);
                    acc = vmlaq_n_s32(acc, D::dot(vdupq_n_s32(0), w, x), scale);
                }
            }
        }
        *o = vaddvq_s32(acc);
    }
}

/// The dispatchers' entry points: `sdot` picks the dot-product build.
///
/// # Safety
/// `sdot` only where the CPU has the dot-product extension.
macro_rules! entries {
    ($( $(#[$doc:meta])* fn $name:ident $(<const $n:ident: usize>)? ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $kernel:ident; )*) => {$(
        $(#[$doc])*
        /// # Safety
        /// `sdot` only where the CPU has the dot-product extension.
        pub(super) unsafe fn $name$(<const $n: usize>)?(sdot: bool, $($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "dotprod")]
            unsafe fn with_sdot$(<const $n: usize>)?($($arg: $ty),*) $(-> $ret)? {
                $kernel::<Sdot $(, $n)?>($($arg),*)
            }
            if sdot {
                with_sdot$(::<$n>)?($($arg),*)
            } else {
                $kernel::<Plain $(, $n)?>($($arg),*)
            }
        }
    )*};
}

entries! {
    /// `super::dot_i2s_scalar`.
    fn dot_i2s(row: &[u8], q: &[i8]) -> i32 = dot_i2s_k;
    /// `super::dot_i2s_x4_scalar` for N tokens.
    fn dot_i2s_xn<const N: usize>(row: &[u8], q: [&[i8]; N]) -> [i32; N] = dot_i2s_xn_k;
    /// `super::tq2_block_dots_scalar`.
    fn tq2_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) = tq2_block_dots_k;
    /// `super::tq2_block_dots_x4_scalar`.
    fn tq2_block_dots_x4(row: &[u8], q: [&[i8]; 4], out: [&mut [i32]; 4]) = tq2_block_dots_x4_k;
    /// `super::tq1_block_dots_scalar`.
    fn tq1_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) = tq1_block_dots_k;
    /// `super::vocab::q8_0_block_dots_scalar`.
    fn q8_0_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) = q8_0_block_dots_k;
    /// `super::vocab::q6k_block_dots_scalar`.
    fn q6k_block_dots(row: &[u8], q: &[i8], out: &mut [i32]) = q6k_block_dots_k;
}

/// `super::dot_f16_scalar` (same products, other order: within rounding).
pub(super) fn dot_f16(row: &[f16], x: &[f32]) -> f32 {
    // SAFETY: NEON is part of every aarch64 target; fcvtl is base ARMv8.
    unsafe { dot_f16_k(row, x) }
}

/// `super::quantize_row_scalar`: round_half_even(x * scale) clamped to
/// int8, 16 values per step (`fcvtns` rounds to nearest, ties to even; the
/// saturating narrows clamp, and NaN becomes 0 as `as i8` makes it).
pub(super) fn quantize_row(x: &[f32], scale: f32, out: &mut [i8]) {
    let n = x.len().min(out.len()) / 16 * 16;
    // SAFETY: NEON is part of every aarch64 target; loads and the store
    // stay within the 16-value chunks.
    unsafe {
        let s = vdupq_n_f32(scale);
        for (x, o) in x[..n].chunks_exact(16).zip(out[..n].chunks_exact_mut(16)) {
            let i = |k: usize| vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x[4 * k..].as_ptr()), s));
            let lo = vqmovn_high_s32(vqmovn_s32(i(0)), i(1));
            let hi = vqmovn_high_s32(vqmovn_s32(i(2)), i(3));
            vst1q_s8(o.as_mut_ptr(), vqmovn_high_s16(vqmovn_s16(lo), hi));
        }
    }
    super::quantize_row_scalar(&x[n..], scale, &mut out[n..]);
}

/// Largest |x|, NaNs ignored as `f32::max` does (FMAXNM returns the number).
pub(super) fn abs_max(x: &[f32]) -> f32 {
    let n = x.len() / 16 * 16;
    // SAFETY: NEON is part of every aarch64 target; loads within chunks.
    let m = unsafe {
        let mut m = [vdupq_n_f32(0.0); 4];
        for x in x[..n].chunks_exact(16) {
            for (k, m) in m.iter_mut().enumerate() {
                *m = vmaxnmq_f32(*m, vabsq_f32(vld1q_f32(x[4 * k..].as_ptr())));
            }
        }
        vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m[0], m[1]), vmaxnmq_f32(m[2], m[3])))
    };
    x[n..].iter().fold(m, |a, v| a.max(v.abs()))
}
