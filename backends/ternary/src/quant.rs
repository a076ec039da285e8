//! Tensor formats and the scalar reference kernels.
//!
//! Ternary weights of every format (I2_S, TQ2_0, TQ1_0, or F32 holding
//! ternary values) decode to one layout: `codes` in {-1, 0, +1}, row-major
//! [rows][cols], and one scale per 256-element block of a row (I2_S has a
//! single scale; the decode repeats it). Activations are quantized as each
//! reference does it:
//! - `I8Tok` (bitnet.cpp, I2_S): one int8 scale per token, absmax;
//! - `Q8K` (llama.cpp, TQ1_0/TQ2_0): one scale per 256-element block, signed max;
//! - `Float`: no quantization (F32 files, and the float reference).

use half::f16;

use crate::gguf::TensorType;

/// Elements per TQ block and per scale of the common layout.
pub const QK: usize = 256;

/// How activations are quantized before a ternary product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActScheme {
    Float,
    I8Tok,
    Q8K,
}

impl ActScheme {
    /// The scheme the format's reference implementation uses.
    pub fn for_format(ty: TensorType) -> Self {
        match ty {
            TensorType::I2S => ActScheme::I8Tok,
            TensorType::TQ1_0 | TensorType::TQ2_0 => ActScheme::Q8K,
            _ => ActScheme::Float,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("{ty} tensor of {n} elements needs {want} bytes, has {have}")]
    Size { ty: String, n: usize, want: usize, have: usize },
    #[error("row length {0} is not a multiple of {QK}")]
    RowLength(usize),
    #[error("{0} holds a value that is not -1, 0 or +1 times the block scale")]
    NotTernary(String),
    #[error("tensor type {0} is not supported by the built-in engine")]
    Unsupported(String),
}

/// A ternary matrix in the common layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    pub rows: usize,
    pub cols: usize,
    /// [rows][cols], values -1, 0, 1.
    pub codes: Vec<i8>,
    /// [rows][cols / QK].
    pub scales: Vec<f32>,
}

fn check(ty: &str, n: usize, want: usize, have: usize) -> Result<(), QuantError> {
    if have < want {
        return Err(QuantError::Size { ty: ty.into(), n, want, have });
    }
    Ok(())
}

/// I2_S: 128-element blocks of 32 bytes, byte j = e[j]<<6 | e[32+j]<<4 |
/// e[64+j]<<2 | e[96+j], code 0/1/2 = -1/0/+1; one f32 scale after the codes.
pub fn decode_i2s(data: &[u8], rows: usize, cols: usize) -> Result<Ternary, QuantError> {
    let n = rows * cols;
    check("i2_s", n, n / 4 + 4, data.len())?;
    if !cols.is_multiple_of(QK) {
        return Err(QuantError::RowLength(cols));
    }
    let scale = f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().expect("4 bytes"));
    let mut codes = vec![0i8; n];
    for (b, block) in data[..n / 4].chunks_exact(32).enumerate() {
        let out = &mut codes[b * 128..b * 128 + 128];
        for (j, &byte) in block.iter().enumerate() {
            for (k, shift) in [6u32, 4, 2, 0].iter().enumerate() {
                out[k * 32 + j] = ((byte >> shift) & 3) as i8 - 1;
            }
        }
    }
    if codes.iter().any(|&c| c > 1) {
        return Err(QuantError::NotTernary("i2_s (code 3)".into()));
    }
    Ok(Ternary { rows, cols, codes, scales: vec![scale; n / QK] })
}

/// TQ2_0: 256-element blocks: 64 bytes of 2-bit codes then an f16 scale.
pub fn decode_tq2_0(data: &[u8], rows: usize, cols: usize) -> Result<Ternary, QuantError> {
    let n = rows * cols;
    if !cols.is_multiple_of(QK) {
        return Err(QuantError::RowLength(cols));
    }
    check("tq2_0", n, n / QK * 66, data.len())?;
    let mut codes = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / QK);
    for (b, block) in data[..n / QK * 66].chunks_exact(66).enumerate() {
        let (qs, d) = block.split_at(64);
        scales.push(f16::from_le_bytes([d[0], d[1]]).to_f32());
        let out = &mut codes[b * QK..(b + 1) * QK];
        for j in (0..64).step_by(32) {
            for l in 0..4 {
                for m in 0..32 {
                    out[j * 4 + l * 32 + m] = ((qs[j + m] >> (l * 2)) & 3) as i8 - 1;
                }
            }
        }
    }
    Ok(Ternary { rows, cols, codes, scales })
}

/// TQ1_0: 256-element blocks: 48 bytes of base-3 pentads, 4 bytes of
/// base-3 tetrads, an f16 scale (54 bytes).
pub fn decode_tq1_0(data: &[u8], rows: usize, cols: usize) -> Result<Ternary, QuantError> {
    let trit = |q: u8, n: usize| -> i8 { crate::kernels::tq1_digit(q, n) as i8 - 1 };
    let n = rows * cols;
    if !cols.is_multiple_of(QK) {
        return Err(QuantError::RowLength(cols));
    }
    check("tq1_0", n, n / QK * 54, data.len())?;
    let mut codes = Vec::with_capacity(n);
    let mut scales = Vec::with_capacity(n / QK);
    for block in data[..n / QK * 54].chunks_exact(54) {
        let (qs, rest) = block.split_at(48);
        let (qh, d) = rest.split_at(4);
        scales.push(f16::from_le_bytes([d[0], d[1]]).to_f32());
        for n5 in 0..5 {
            codes.extend(qs[..32].iter().map(|&q| trit(q, n5)));
        }
        for n5 in 0..5 {
            codes.extend(qs[32..].iter().map(|&q| trit(q, n5)));
        }
        for n4 in 0..4 {
            for &q in qh {
                codes.push(trit(q, n4));
            }
        }
    }
    Ok(Ternary { rows, cols, codes, scales })
}

/// TQ1_0 blocks (54 bytes) rewritten as TQ2_0 blocks (66 bytes) of the
/// same codes and scales: `dst` holds `src.len() / 54` blocks. What the
/// model does at load (`model::Tq1Layout::Unpacked`): extracting base-3
/// digits costs more than reading their bytes saves (every CPU measured
/// is compute-bound on TQ1_0, memory-bound on TQ2_0), and the products of
/// both formats are the same integers, so the logits keep their bits.
pub fn tq1_0_to_tq2_0(src: &[u8], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(54) && dst.len() == src.len() / 54 * 66, "TQ1_0 -> TQ2_0 block counts");
    let digit = crate::kernels::tq1_digit;
    for (s, d) in src.chunks_exact(54).zip(dst.chunks_exact_mut(66)) {
        // Element e goes to TQ2_0 byte 32 (e / 128) + e % 32, bits
        // 2 ((e % 128) / 32). TQ1_0 byte m < 32: elements 32n + m, so
        // digits 0..4 fill byte m, digit 4 starts byte 32 + m. Byte 32 + m
        // (m < 16): elements 160 + 16n + m. Byte 48 + j: 240 + 4n + j.
        let mut q = [0u8; 64];
        for m in 0..32 {
            let b = s[m];
            q[m] = digit(b, 0) | digit(b, 1) << 2 | digit(b, 2) << 4 | digit(b, 3) << 6;
            q[32 + m] = digit(b, 4);
        }
        for m in 0..16 {
            let b = s[32 + m];
            q[32 + m] |= digit(b, 0) << 2 | digit(b, 2) << 4 | digit(b, 4) << 6;
            q[48 + m] |= digit(b, 1) << 2 | digit(b, 3) << 4;
        }
        for j in 0..4 {
            let b = s[48 + j];
            for n in 0..4 {
                q[48 + 4 * n + j] |= digit(b, n) << 6;
            }
        }
        d[..64].copy_from_slice(&q);
        d[64..].copy_from_slice(&s[52..54]);
    }
}

/// An F32 matrix whose values are ternary times one scale per block (how
/// the fixtures' F32 files store BitNet weights): back to codes.
pub fn ternarize_f32(w: &[f32], rows: usize, cols: usize) -> Result<Ternary, QuantError> {
    if !cols.is_multiple_of(QK) {
        return Err(QuantError::RowLength(cols));
    }
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / QK);
    for block in w.chunks_exact(QK) {
        let s = block.iter().fold(0f32, |a, x| a.max(x.abs()));
        scales.push(s);
        for &x in block {
            let c = if s == 0.0 { 0.0 } else { x / s };
            if c != 0.0 && c != 1.0 && c != -1.0 {
                return Err(QuantError::NotTernary("f32".into()));
            }
            codes.push(c as i8);
        }
    }
    Ok(Ternary { rows, cols, codes, scales })
}

/// Dense floats from F32, F16 or BF16 data.
pub fn decode_float(ty: TensorType, data: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    match ty {
        TensorType::F32 => {
            check("f32", n, n * 4, data.len())?;
            Ok(data[..n * 4].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        TensorType::F16 => {
            check("f16", n, n * 2, data.len())?;
            Ok(data[..n * 2].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        TensorType::BF16 => {
            check("bf16", n, n * 2, data.len())?;
            Ok(data[..n * 2].chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        TensorType::Q8_0 => {
            // 32-element blocks: f16 scale, 32 int8.
            check("q8_0", n, n / 32 * 34, data.len())?;
            let mut out = Vec::with_capacity(n);
            for b in data[..n / 32 * 34].chunks_exact(34) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            Ok(out)
        }
        TensorType::Q6K => {
            check("q6_k", n, n / QK * 210, data.len())?;
            let mut out = Vec::with_capacity(n);
            for b in data[..n / QK * 210].chunks_exact(210) {
                decode_q6k_block(b, &mut out);
            }
            Ok(out)
        }
        other => Err(QuantError::Unsupported(other.name())),
    }
}

/// One Q6_K block (llama.cpp): 128 bytes of low 4 bits, 64 of high 2 bits,
/// 16 int8 sub-block scales, an f16 super-scale; 256 values.
fn decode_q6k_block(b: &[u8], out: &mut Vec<f32>) {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (sc, d) = rest.split_at(16);
    let d = f16::from_le_bytes([d[0], d[1]]).to_f32();
    let mut y = [0f32; QK];
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[half * 64..], &qh[half * 32..], &sc[half * 8..]);
        let y = &mut y[half * 128..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
    out.extend_from_slice(&y);
}

/// `y.round_ties_even() as i8` (saturating, NaN to 0), inline and
/// branch-free. Without SSE4.1 in the baseline target, round_ties_even is
/// a call to libm's rintf per value (2% of decoding, for quantizing the
/// activations); even a guarded fast path compiled to a select that called
/// it anyway. Clamping first is exact (the bounds are integers) and leaves
/// the value where adding and subtracting 1.5 * 2^23 rounds it to the
/// nearest integer, ties to even (the default rounding mode).
#[inline]
pub fn round_to_i8(y: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((y.clamp(-128.0, 127.0) + MAGIC) - MAGIC) as i8
}

/// Per-token int8 activations (bitnet.cpp): s = 127 / max(max|x|, 1e-5)
/// (division in f64, stored f32), q = clamp(round_half_even(x s), -128, 127).
#[derive(Debug, Clone, PartialEq)]
pub struct I8Tok {
    pub q: Vec<i8>,
    pub scale: f32,
    pub sum: i32,
}

pub fn quantize_i8tok(x: &[f32]) -> I8Tok {
    let amax = crate::kernels::abs_max(x);
    let scale = (127.0f64 / f64::from(amax.max(1e-5))) as f32;
    let mut q = vec![0i8; x.len()];
    crate::kernels::quantize_row(x, scale, &mut q);
    let sum = q.iter().map(|&v| i32::from(v)).sum();
    I8Tok { q, scale, sum }
}

/// Q8_K activations (llama.cpp): per 256 block, m = first element of the
/// largest magnitude, iscale = -127/m, q = min(127, round_half_even(iscale x)),
/// d = 1/iscale; an all-zero block has d = 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8K {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
}

pub fn quantize_q8k(x: &[f32]) -> Q8K {
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len() / QK);
    for block in x.chunks(QK) {
        let m = crate::kernels::signed_abs_max(block);
        if m == 0.0 {
            d.push(0.0);
            q.extend(std::iter::repeat_n(0i8, block.len()));
            continue;
        }
        let iscale = -127.0f32 / m;
        let at = q.len();
        q.resize(at + block.len(), 0);
        crate::kernels::quantize_row(block, iscale, &mut q[at..]);
        d.push(1.0 / iscale);
    }
    Q8K { q, d }
}

/// Q8_0 activations (llama.cpp's x86 build): per 32 values, d = amax/127,
/// q = round_half_even(x / d) (0 for an all-zero block), d kept as f16.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8_0Acts {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
}

pub fn quantize_q8_0(x: &[f32]) -> Q8_0Acts {
    let mut q = Vec::with_capacity(x.len());
    let mut ds = Vec::with_capacity(x.len() / 32);
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let at = q.len();
        q.resize(at + block.len(), 0);
        crate::kernels::quantize_row(block, id, &mut q[at..]);
        ds.push(f16::from_f32(d).to_f32());
    }
    Q8_0Acts { q, d: ds }
}

/// sum code * q over one row (the scalar reference every SIMD kernel must
/// equal).
pub fn dot_codes(codes: &[i8], q: &[i8]) -> i32 {
    codes.iter().zip(q).map(|(&c, &v)| i32::from(c) * i32::from(v)).sum()
}

impl Ternary {
    fn row(&self, r: usize) -> &[i8] {
        &self.codes[r * self.cols..(r + 1) * self.cols]
    }

    fn row_scales(&self, r: usize) -> &[f32] {
        let per = self.cols / QK;
        &self.scales[r * per..(r + 1) * per]
    }

    /// Whether every block of the matrix has the same scale (I2_S always;
    /// TQ files written from one per-tensor scale too).
    pub fn single_scale(&self) -> Option<f32> {
        let first = *self.scales.first()?;
        self.scales.iter().all(|&s| s == first).then_some(first)
    }

    /// y = W x with the given activation scheme (rows in parallel).
    pub fn matvec(&self, x: &[f32], scheme: ActScheme, y: &mut [f32]) {
        assert!(
            x.len() == self.cols && y.len() == self.rows,
            "matvec of {}x{} with x {} and y {}",
            self.rows,
            self.cols,
            x.len(),
            y.len()
        );
        // Rows in parallel; each part is the same computation on fewer rows.
        crate::pool::for_each_rows_mut(y, 1, self.cols, |first, ys| self.matvec_rows(first, x, scheme, ys));
    }

    fn matvec_rows(&self, first: usize, x: &[f32], scheme: ActScheme, y: &mut [f32]) {
        match scheme {
            ActScheme::Float => {
                for (r, out) in y.iter_mut().enumerate() {
                    let r = r + first;
                    let mut acc = 0f32;
                    for ((cb, xb), s) in self.row(r).chunks(QK).zip(x.chunks(QK)).zip(self.row_scales(r)) {
                        let part: f32 = cb.iter().zip(xb).map(|(&c, &v)| f32::from(c) * v).sum();
                        acc += part * s;
                    }
                    *out = acc;
                }
            }
            ActScheme::I8Tok => {
                let a = quantize_i8tok(x);
                match self.single_scale() {
                    // bitnet.cpp: y = f32(f32(dot - sum) / s) * w_scale,
                    // with dot over codes + 1; dot - sum = sum code*q.
                    Some(ws) => {
                        for (r, out) in y.iter_mut().enumerate() {
                            let d = dot_codes(self.row(r + first), &a.q);
                            *out = (d as f32 / a.scale) * ws;
                        }
                    }
                    None => {
                        for (r, out) in y.iter_mut().enumerate() {
                            let r = r + first;
                            let mut acc = 0f32;
                            for ((cb, qb), s) in self.row(r).chunks(QK).zip(a.q.chunks(QK)).zip(self.row_scales(r)) {
                                acc += dot_codes(cb, qb) as f32 * s;
                            }
                            *out = acc / a.scale;
                        }
                    }
                }
            }
            ActScheme::Q8K => {
                let a = quantize_q8k(x);
                for (r, out) in y.iter_mut().enumerate() {
                    let r = r + first;
                    let mut acc = 0f32;
                    for (((cb, qb), s), d) in
                        self.row(r).chunks(QK).zip(a.q.chunks(QK)).zip(self.row_scales(r)).zip(&a.d)
                    {
                        acc += dot_codes(cb, qb) as f32 * (s * d);
                    }
                    *out = acc;
                }
            }
        }
    }
}

/// y = W x for a dense row-major [rows][cols] matrix.
pub fn matvec_f32(w: &[f32], cols: usize, x: &[f32], y: &mut [f32]) {
    for (out, row) in y.iter_mut().zip(w.chunks_exact(cols)) {
        *out = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::Golden;

    #[test]
    fn inline_rounding_equals_round_ties_even_saturated() {
        let mut rng = crate::sampler::Rng::new(7);
        let check = |y: f32| assert_eq!(round_to_i8(y), y.round_ties_even() as i8, "{y}");
        for i in -1000..=1000 {
            // Every half and quarter step, ties included, past both bounds.
            check(i as f32 / 4.0);
        }
        for y in [
            0.0,
            -0.0,
            0.49999997,
            -0.49999997,
            127.49999,
            127.5,
            -128.5,
            -128.50002,
            -129.5,
            4_194_303.5,
            8_388_609.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ] {
            check(y);
        }
        for _ in 0..100_000 {
            check((rng.next_f32() - 0.5) * 300.0);
        }
    }

    #[test]
    fn q8_0_and_q6_k_decode_hand_built_blocks() {
        // Q8_0: scale 0.5, values -3..=28.
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 3) as u8));
        let y = decode_float(TensorType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -1.5);
        assert_eq!(y[31], 14.0);
        // Q6_K: element e of each 128-half has 6-bit code (e % 64); the
        // low nibble and high bits are spread as llama.cpp lays them out.
        let mut block = vec![0u8; 210];
        let code = |e: usize| (e % 64) as u8;
        for half in 0..2 {
            for l in 0..32 {
                let (c1, c2, c3, c4) = (code(l), code(l + 32), code(l + 64), code(l + 96));
                block[half * 64 + l] = (c1 & 0xF) | ((c3 & 0xF) << 4);
                block[half * 64 + l + 32] = (c2 & 0xF) | ((c4 & 0xF) << 4);
                block[128 + half * 32 + l] = (c1 >> 4) | ((c2 >> 4) << 2) | ((c3 >> 4) << 4) | ((c4 >> 4) << 6);
            }
        }
        for (i, s) in block[192..208].iter_mut().enumerate() {
            *s = (i as i8 - 8) as u8; // sub-block scales -8..7
        }
        block[208..210].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let y = decode_float(TensorType::Q6K, &block, 256).unwrap();
        for (i, v) in y.iter().enumerate() {
            let e = i % 128;
            let sub = (i / 128) * 8 + (e / 32) * 2 + (e % 32) / 16;
            let want = 0.25 * (sub as f32 - 8.0) * (code(e) as f32 - 32.0);
            assert_eq!(*v, want, "element {i}");
        }
    }

    #[test]
    fn every_format_decodes_the_kernel_fixture_to_the_same_ternary_matrix() {
        let g = Golden::open("ternary-matmul");
        let want = g.i8("w.ternary");
        let scale = g.f32("w.scale")[0];
        let i2s = decode_i2s(&g.u8("w.i2_s"), 64, 768).unwrap();
        let tq2 = decode_tq2_0(&g.u8("w.tq2_0"), 64, 768).unwrap();
        let tq1 = decode_tq1_0(&g.u8("w.tq1_0"), 64, 768).unwrap();
        for t in [&i2s, &tq2, &tq1] {
            assert_eq!(t.codes, want);
            assert!(t.scales.iter().all(|&s| s == scale));
        }
        assert!(matches!(decode_tq2_0(&g.u8("w.tq2_0")[..100], 64, 768), Err(QuantError::Size { .. })));
    }

    #[test]
    fn tq1_0_rewritten_as_tq2_0_holds_the_same_codes_and_scales() {
        // The fixture's blocks (from llama.cpp's quantizer), then every
        // byte value in every code position (block k, byte i: k + 29 i),
        // each block with its own scale.
        let g = Golden::open("ternary-matmul");
        let fixture = g.u8("w.tq1_0");
        let mut every = Vec::with_capacity(256 * 54);
        for k in 0..256usize {
            every.extend((0..52).map(|i| (k + 29 * i) as u8));
            every.extend(f16::from_f32(k as f32 / 64.0 - 1.0).to_le_bytes());
        }
        for (src, rows, cols) in [(&fixture[..], 64, 768), (&every[..], 16, 4096)] {
            let mut dst = vec![0u8; src.len() / 54 * 66];
            tq1_0_to_tq2_0(src, &mut dst);
            assert_eq!(decode_tq2_0(&dst, rows, cols).unwrap(), decode_tq1_0(src, rows, cols).unwrap());
        }
    }

    #[test]
    fn activation_quantization_and_products_match_the_fixture_bit_for_bit() {
        let g = Golden::open("ternary-matmul");
        let x = g.f32("x");
        let (want_q, want_s, want_sum) = (g.i8("act.i8tok.q"), g.f32("act.i8tok.scale"), g.i32("act.i8tok.sum"));
        let (want_q8, want_d) = (g.i8("act.q8k.q"), g.f32("act.q8k.d"));
        let dots = g.i32("dot.i2s_codes");
        let (y_i8, y_q8k, y_float) = (g.f32("y.i8tok"), g.f32("y.q8k"), g.f32("y.float"));
        let w = decode_i2s(&g.u8("w.i2_s"), 64, 768).unwrap();
        let mut y = vec![0f32; 64];
        for r in 0..6 {
            let xr = &x[r * 768..(r + 1) * 768];
            let a = quantize_i8tok(xr);
            assert_eq!(a.q, want_q[r * 768..(r + 1) * 768], "row {r}");
            assert_eq!(a.scale.to_bits(), want_s[r].to_bits(), "row {r}");
            assert_eq!(a.sum, want_sum[r]);
            for o in 0..64 {
                // The fixture's dot is over codes 0/1/2: ours + sum.
                assert_eq!(dot_codes(w.row(o), &a.q) + a.sum, dots[r * 64 + o]);
            }
            w.matvec(xr, ActScheme::I8Tok, &mut y);
            for o in 0..64 {
                assert_eq!(y[o].to_bits(), y_i8[r * 64 + o].to_bits(), "i8tok row {r} out {o}");
            }
            let b = quantize_q8k(xr);
            assert_eq!(b.q, want_q8[r * 768..(r + 1) * 768], "q8k row {r}");
            assert_eq!(b.d, want_d[r * 3..(r + 1) * 3]);
            w.matvec(xr, ActScheme::Q8K, &mut y);
            for o in 0..64 {
                let want = y_q8k[r * 64 + o];
                assert!((y[o] - want).abs() <= 1e-5 * want.abs().max(1e-3), "q8k {r} {o}: {} vs {want}", y[o]);
            }
            w.matvec(xr, ActScheme::Float, &mut y);
            for o in 0..64 {
                let want = y_float[r * 64 + o];
                assert!((y[o] - want).abs() <= 1e-5 * want.abs().max(1.0), "float {r} {o}: {} vs {want}", y[o]);
            }
        }
    }
}
