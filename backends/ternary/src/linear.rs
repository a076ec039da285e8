//! Weight matrices as the model holds them, and their products with
//! activations, parallel over output rows on the engine's pool.
//!
//! `Linear` is a layer's ternary matrix (packed I2_S / TQ2_0 read in place,
//! or decoded); `VocabMatrix` the embedding / output matrix in its file
//! precision. Products that share an input (q/k/v, gate/up) go through
//! `matvec_group` (one token) or `matmul_group` (several): the input is
//! quantized once and all their rows are one parallel job, instead of one
//! job (and one wake-up) per matrix.

use std::sync::Arc;

use half::f16;

use crate::gguf::TensorType;
use crate::kernels;
use crate::pool::{self, SharedMut};
use crate::quant::{self, ActScheme, Ternary};

/// A tensor's bytes: read in place from the loaded file (no second
/// copy), or rewritten at load into a buffer of their own or the model's
/// arena (`weights::Arena`).
#[derive(Debug, Clone)]
pub struct Mapped {
    buf: Buffer,
    start: usize,
    len: usize,
}

#[derive(Debug, Clone)]
enum Buffer {
    Map(Arc<memmap2::Mmap>),
    /// Bytes `start..start + len` of the arena were written once, before
    /// this `Mapped` was made, and are never written again.
    Arena(Arc<memmap2::MmapRaw>),
}

impl Mapped {
    pub fn new(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Self {
        assert!(start.checked_add(len).is_some_and(|end| end <= map.len()), "tensor past the end of the file");
        Mapped { buf: Buffer::Map(map), start, len }
    }

    /// Bytes of an arena that the caller filled and will not write again.
    ///
    /// # Safety
    /// `start..start + len` is inside `arena`, initialized, and nothing
    /// writes it while this or a clone lives.
    pub(crate) unsafe fn in_arena(arena: Arc<memmap2::MmapRaw>, start: usize, len: usize) -> Self {
        assert!(start.checked_add(len).is_some_and(|end| end <= arena.len()), "past the arena's end");
        Mapped { buf: Buffer::Arena(arena), start, len }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.buf {
            Buffer::Map(m) => &m[self.start..self.start + self.len],
            // SAFETY: in bounds (checked in `in_arena`), written before
            // and never after this Mapped was made (its promise), and the
            // mapping lives as long as the Arc.
            Buffer::Arena(a) => unsafe { std::slice::from_raw_parts(a.as_ptr().add(self.start), self.len) },
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether these bytes are in an arena (`weights::Arena`).
    #[cfg(test)]
    pub(crate) fn is_in_arena(&self) -> bool {
        matches!(self.buf, Buffer::Arena(_))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes as f16 values; None if they are not 2-byte aligned.
    pub fn f16s(&self) -> Option<&[f16]> {
        let b = self.bytes();
        if !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f16>()) {
            return None;
        }
        // SAFETY: aligned (checked), f16 is plain 2 bytes with no invalid
        // bit patterns, the length is whole values, and the map lives as
        // long as self.
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f16>(), b.len() / 2) })
    }
}

/// A weight matrix [rows = out][cols = in].
#[derive(Debug)]
pub enum Linear {
    /// I2_S kept packed (2 bits per weight) in the loaded file, for the
    /// per-token int8 scheme: the fast path.
    /// `grouped`: regrouped at load for the AVX-512 kernels
    /// (`kernels::group_i2s`), else as the file holds them.
    I2S {
        bytes: Mapped,
        rows: usize,
        cols: usize,
        scale: f32,
        grouped: bool,
    },
    /// TQ2_0 kept packed (66 bytes per 256 weights), for the Q8K scheme
    /// (llama.cpp's): the same numbers as decoding it, a quarter of the
    /// bytes per token. `grouped`: regrouped at load for the AVX-512
    /// kernels (`kernels::group_tq2`), else as the file holds them.
    Tq2 {
        bytes: Mapped,
        rows: usize,
        cols: usize,
        grouped: bool,
    },
    /// TQ1_0 kept packed (54 bytes per 256 weights, base-3 digits), for
    /// the Q8K scheme: the same numbers as TQ2_0 (tested), the fewest bytes
    /// per token of any format here; unpacking costs more compute.
    Tq1 {
        bytes: Mapped,
        rows: usize,
        cols: usize,
    },
    Ternary(Ternary),
    Dense {
        w: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

/// One token's activations quantized for a packed format, shared by every
/// matrix that reads the same input.
enum Quantized<'a> {
    I2S { a: &'a quant::I8Tok, prepared: kernels::Prepared<'a> },
    Q8K { a: &'a quant::Q8K, prepared: kernels::Prepared<'a>, bsums: Vec<i32> },
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::I2S { rows, .. }
            | Linear::Tq2 { rows, .. }
            | Linear::Tq1 { rows, .. }
            | Linear::Dense { rows, .. } => *rows,
            Linear::Ternary(t) => t.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Linear::I2S { cols, .. }
            | Linear::Tq2 { cols, .. }
            | Linear::Tq1 { cols, .. }
            | Linear::Dense { cols, .. } => *cols,
            Linear::Ternary(t) => t.cols,
        }
    }

    /// Bytes a product reads from this matrix.
    pub fn bytes_read(&self) -> u64 {
        match self {
            // Regrouped, a matrix's last group is filled out with zero
            // rows that are not read as weights.
            Linear::I2S { rows, cols, .. } => (rows * cols / 4) as u64,
            Linear::Tq1 { bytes, .. } => bytes.len() as u64,
            // Regrouped matrices pad each group's scales to a line: the
            // codes and scales read are the file's bytes.
            Linear::Tq2 { rows, cols, .. } => (rows * cols / 256 * 66) as u64,
            Linear::Ternary(t) => t.codes.len() as u64 + 4 * t.scales.len() as u64,
            Linear::Dense { w, .. } => 4 * w.len() as u64,
        }
    }

    pub fn matvec(&self, x: &[f32], scheme: ActScheme, y: &mut [f32]) {
        matvec_group(&mut [(self, y)], x, scheme);
    }

    /// Rows `first..first + ys.len()` of the product with quantized input.
    fn rows_into(&self, q: &Quantized, first: usize, ys: &mut [f32]) {
        match (self, q) {
            (Linear::I2S { bytes, cols, scale, grouped, .. }, Quantized::I2S { a, prepared }) => {
                let (bytes, row_bytes) = (bytes.bytes(), cols / 4);
                let mut dots = [0i32; 64];
                for (first, ys) in (first..).step_by(64).zip(ys.chunks_mut(64)) {
                    let dots = &mut dots[..ys.len()];
                    if *grouped {
                        kernels::i2s_grouped_rows(bytes, cols / 256, first, prepared, dots);
                    } else {
                        let rows = &bytes[first * row_bytes..(first + ys.len()) * row_bytes];
                        kernels::i2s_rows_prepared(rows, row_bytes, prepared, dots);
                    }
                    for (out, d) in ys.iter_mut().zip(&*dots) {
                        // bitnet.cpp's order of operations, as the reference.
                        *out = ((d - a.sum) as f32 / a.scale) * scale;
                    }
                }
            }
            (Linear::Tq2 { bytes, cols, grouped: true, .. }, Quantized::Q8K { a, prepared, bsums }) => {
                kernels::tq2_grouped_rows(bytes.bytes(), cols / 256, first, prepared, bsums, &a.d, ys);
            }
            (Linear::Tq2 { bytes, cols, .. }, Quantized::Q8K { a, prepared, bsums }) => {
                let row_bytes = cols / 256 * 66;
                let rows = &bytes.bytes()[first * row_bytes..(first + ys.len()) * row_bytes];
                kernels::tq2_rows(rows, row_bytes, prepared, bsums, &a.d, ys);
            }
            (Linear::Tq1 { bytes, cols, .. }, Quantized::Q8K { a, bsums, .. }) => {
                let row_bytes = cols / 256 * 54;
                let rows = &bytes.bytes()[first * row_bytes..(first + ys.len()) * row_bytes];
                kernels::tq1_rows(rows, row_bytes, &a.q, bsums, &a.d, ys);
            }
            _ => unreachable!("activations quantized for another format"),
        }
    }

    /// `n` tokens at once: `xs` is n x cols, `ys` n x rows, each token's
    /// input through `norm` first where one is given. Each token's results
    /// equal `matvec`'s (of the normed input) exactly; packed rows are read
    /// once for all the tokens (prompt chunks, sequences decoded together).
    pub fn matmul(&self, xs: &[f32], n: usize, scheme: ActScheme, norm: Option<Norm>, ys: &mut [f32]) {
        matmul_group(&mut [(self, ys)], xs, n, scheme, norm);
    }

    /// Rows `first..first + m` of the product with the n quantized tokens
    /// of `q`, into `out` token-major (token t's m results at t * m).
    fn rows_tokens_into(&self, q: &QuantizedTokens, first: usize, out: &mut [f32]) {
        let n = q.len();
        let m = out.len() / n;
        let row_bytes = self.bytes_read() as usize / self.rows();
        let span = first * row_bytes..(first + m) * row_bytes;
        match (self, q) {
            (Linear::Tq2 { bytes, cols, grouped, .. }, QuantizedTokens::Q8K { acts, bsums, prepared, staging })
                if *grouped || kernels::tq2_rows_for_prompts() =>
            {
                let prepared: Vec<&kernels::Prepared> = prepared.iter().collect();
                let (bsums, d) = q8k_lists(acts, bsums);
                if *grouped {
                    kernels::tq2_grouped_rows_tokens(
                        bytes.bytes(),
                        cols / 256,
                        first,
                        &prepared,
                        &bsums,
                        &d,
                        staging,
                        out,
                    );
                } else {
                    kernels::tq2_rows_tokens(&bytes.bytes()[span], row_bytes, &prepared, &bsums, &d, out);
                }
            }
            (Linear::I2S { bytes, cols, scale, grouped, .. }, QuantizedTokens::I2S { acts, prepared, staging }) => {
                let prepared: Vec<&kernels::Prepared> = prepared.iter().collect();
                pool::with_scratch(out.len(), |dots: &mut [i32]| {
                    if *grouped {
                        kernels::i2s_grouped_rows_tokens(bytes.bytes(), cols / 256, first, &prepared, staging, dots);
                    } else {
                        kernels::i2s_rows_tokens(&bytes.bytes()[span], row_bytes, &prepared, dots);
                    }
                    i2s_finish(dots, acts, *scale, out)
                });
            }
            (Linear::Tq1 { bytes, .. }, QuantizedTokens::Q8K { acts, bsums, .. })
                if kernels::tq1_rows_for_prompts() =>
            {
                let q: Vec<&[i8]> = acts.iter().map(|a| a.q.as_slice()).collect();
                let (bsums, d) = q8k_lists(acts, bsums);
                kernels::tq1_rows_tokens(&bytes.bytes()[span], row_bytes, &q, &bsums, &d, out);
            }
            (Linear::Tq2 { bytes, cols, .. }, QuantizedTokens::Q8K { acts, bsums, .. }) => {
                let blocks = cols / 256;
                let mut dots = vec![0i32; 4 * blocks];
                for (r, row) in bytes.bytes()[span].chunks_exact(row_bytes).enumerate() {
                    let mut t = 0;
                    while t + 4 <= n {
                        let q = [&acts[t].q[..], &acts[t + 1].q[..], &acts[t + 2].q[..], &acts[t + 3].q[..]];
                        let (d0, rest) = dots.split_at_mut(blocks);
                        let (d1, rest) = rest.split_at_mut(blocks);
                        let (d2, d3) = rest.split_at_mut(blocks);
                        kernels::tq2_block_dots_x4(row, q, [d0, d1, d2, d3]);
                        for i in 0..4 {
                            let d = &dots[i * blocks..(i + 1) * blocks];
                            out[(t + i) * m + r] = kernels::tq2_finish(row, d, &bsums[t + i], &acts[t + i].d);
                        }
                        t += 4;
                    }
                    while t < n {
                        kernels::tq2_block_dots(row, &acts[t].q, &mut dots[..blocks]);
                        out[t * m + r] = kernels::tq2_finish(row, &dots[..blocks], &bsums[t], &acts[t].d);
                        t += 1;
                    }
                }
            }
            (Linear::Tq1 { bytes, cols, .. }, QuantizedTokens::Q8K { acts, bsums, .. }) => {
                // Each row against every token while it is in L1.
                let mut dots = vec![0i32; cols / 256];
                for (r, row) in bytes.bytes()[span].chunks_exact(row_bytes).enumerate() {
                    for (t, (a, bsums)) in acts.iter().zip(bsums).enumerate() {
                        kernels::tq1_block_dots(row, &a.q, &mut dots);
                        out[t * m + r] = kernels::ternary_blocks_finish(row, 54, &dots, bsums, &a.d);
                    }
                }
            }
            _ => unreachable!("activations quantized for another format"),
        }
    }
}

/// Several tokens' activations quantized once for every packed matrix
/// that reads them.
/// `staging` is the AMX kernel's, shared by every part of the product.
enum QuantizedTokens<'a> {
    I2S {
        acts: &'a [quant::I8Tok],
        prepared: Vec<kernels::Prepared<'a>>,
        staging: kernels::Staging,
    },
    Q8K {
        acts: &'a [quant::Q8K],
        bsums: Vec<Vec<i32>>,
        prepared: Vec<kernels::Prepared<'a>>,
        staging: kernels::Staging,
    },
}

impl QuantizedTokens<'_> {
    fn len(&self) -> usize {
        match self {
            QuantizedTokens::I2S { acts, .. } => acts.len(),
            QuantizedTokens::Q8K { acts, .. } => acts.len(),
        }
    }
}

/// An RMS norm each token's input goes through before a product (its
/// weights and epsilon), applied where the token is quantized: on the
/// pool with the quantizing, and not as a pass of its own over all the
/// tokens on one thread between jobs (0.9 ms of a 4-sequence step for a
/// model's norms, and a job per layer for the FFN's sub-norm).
#[derive(Debug, Clone, Copy)]
pub struct Norm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
}

impl Norm<'_> {
    /// `f` of `x` through `norm` (in this thread's scratch), or of `x`.
    fn apply<R>(norm: Option<Norm>, x: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        match norm {
            None => f(x),
            Some(n) => pool::with_scratch(x.len(), |normed: &mut [f32]| {
                kernels::rms_norm(x, n.weight, n.eps, normed);
                f(normed)
            }),
        }
    }
}

/// `matvec_group` for `n` tokens (`xs`: n x cols; each `ys`: n x its
/// rows): each token quantized once for all the matrices, and all their
/// rows one parallel job, each row read once for every token. Each
/// token's results equal `matvec`'s exactly.
pub fn matmul_group(items: &mut [(&Linear, &mut [f32])], xs: &[f32], n: usize, scheme: ActScheme, norm: Option<Norm>) {
    if n <= 1 {
        return Norm::apply(norm, xs, |x| matvec_group(items, x, scheme));
    }
    let cols = xs.len() / n;
    let all = |f: fn(&Linear) -> bool| items.iter().all(|(l, _)| f(l));
    // Regrouped matrices' many-token kernels read the activations as they
    // are: no interleaved copy for them.
    let grouped = all(|l| matches!(l, Linear::I2S { grouped: true, .. } | Linear::Tq2 { grouped: true, .. }));
    let prepare = |q| if grouped { kernels::Prepared::plain(q) } else { kernels::Prepared::new(q) };
    let (i8tok, q8k): (Vec<_>, Vec<_>);
    let q = if all(|l| matches!(l, Linear::I2S { .. })) {
        i8tok = per_token(xs, cols, |x| Norm::apply(norm, x, quant::quantize_i8tok));
        QuantizedTokens::I2S {
            prepared: i8tok.iter().map(|a| prepare(&a.q)).collect(),
            staging: staging(i8tok.iter().map(|a| &a.q[..]), cols),
            acts: &i8tok,
        }
    } else if all(|l| matches!(l, Linear::Tq2 { .. } | Linear::Tq1 { .. })) {
        q8k = per_token(xs, cols, |x| Norm::apply(norm, x, quant::quantize_q8k));
        QuantizedTokens::Q8K {
            bsums: q8k.iter().map(|a| block_sums(&a.q)).collect(),
            prepared: q8k.iter().map(|a| prepare(&a.q)).collect(),
            staging: staging(q8k.iter().map(|a| &a.q[..]), cols),
            acts: &q8k,
        }
    } else {
        for (l, ys) in items.iter_mut() {
            let rows = l.rows();
            for (x, y) in xs.chunks_exact(cols).zip(ys.chunks_exact_mut(rows)) {
                Norm::apply(norm, x, |x| l.matvec(x, scheme, y));
            }
        }
        return;
    };
    // Each task computes its rows for every token in a scratch buffer and
    // copies them out itself: rows s..e of each token's output are a run
    // no other task touches. (Computed row-major and laid out per token
    // after the job, on one thread, the layout left the other threads idle.)
    for_each_part_of_group(items, n, |l, out, rows| {
        pool::with_scratch(rows.len() * n, |part| {
            l.rows_tokens_into(&q, rows.start, part);
            // SAFETY: these rows of each token's output are this call's alone.
            unsafe { out.write_rows(part, n, l.rows(), rows.start) };
        })
    });
}

/// `f(matrix, its output, rows)` over parts of the matrices' rows taken
/// end to end, each row met by `tokens` vectors (a part may span two;
/// `guided_parts` by their mean row bytes, in whole groups of `kernels::GROUP_ROWS`), in parallel on the current pool: one job for the whole group.
/// The rows of each call belong to it alone.
fn for_each_part_of_group(
    items: &mut [(&Linear, &mut [f32])],
    tokens: usize,
    f: impl Fn(&Linear, &SharedMut<f32>, std::ops::Range<usize>) + Sync,
) {
    // Parts in whole groups of rows, each matrix's rows counted up to a
    // whole group: a part then starts on a group of every matrix it
    // touches and ends on one or at the matrix's end, as regrouped
    // matrices need (`kernels::GROUP_ROWS`).
    let group = kernels::GROUP_ROWS;
    let padded = |l: &Linear| l.rows().next_multiple_of(group);
    let total: usize = items.iter().map(|(l, _)| padded(l)).sum();
    let bytes: usize = items.iter().map(|(l, _)| l.bytes_read() as usize).sum();
    let parts = pool::guided_parts(total, bytes / total.max(1), tokens, group);
    let outs: Vec<(&Linear, SharedMut<f32>)> = items.iter_mut().map(|(l, y)| (*l, SharedMut::new(y))).collect();
    pool::with_current(|p| {
        p.run(parts.len(), &|t| {
            let mut first = 0;
            for (l, out) in &outs {
                let rows = l.rows();
                let (s, e) = (parts[t].start.max(first) - first, parts[t].end.min(first + rows).saturating_sub(first));
                first += padded(l);
                if s < e {
                    f(l, out, s..e);
                }
            }
        })
    });
}

/// `f` of each token of `xs` (n x cols), tokens shared out on the pool:
/// quantizing several tokens on one thread left the others waiting.
fn per_token<T: Send>(xs: &[f32], cols: usize, f: impl Fn(&[f32]) -> T + Sync) -> Vec<T> {
    let mut out: Vec<Option<T>> = xs.chunks_exact(cols).map(|_| None).collect();
    pool::for_each_chunk_mut(&mut out, 1, |t, o| o[0] = Some(f(&xs[t * cols..(t + 1) * cols])));
    out.into_iter().map(|o| o.expect("every token quantized")).collect()
}

/// I2_S's integer dots (`dots`: a run per token) as results, in
/// bitnet.cpp's order of operations (the reference's).
fn i2s_finish(dots: &[i32], acts: &[quant::I8Tok], scale: f32, out: &mut [f32]) {
    let m = out.len() / acts.len().max(1);
    for ((out, dots), a) in out.chunks_exact_mut(m).zip(dots.chunks_exact(m)).zip(acts) {
        for (o, d) in out.iter_mut().zip(dots) {
            *o = ((d - a.sum) as f32 / a.scale) * scale;
        }
    }
}

/// Each token's block sums and block scales as the many-token kernels
/// take them.
fn q8k_lists<'a>(acts: &'a [quant::Q8K], bsums: &'a [Vec<i32>]) -> (Vec<&'a [i32]>, Vec<&'a [f32]>) {
    (bsums.iter().map(Vec::as_slice).collect(), acts.iter().map(|a| a.d.as_slice()).collect())
}

/// The tokens' activations staged for the AMX kernel (where it runs)
/// before the product's parallel job.
fn staging<'a>(qs: impl Iterator<Item = &'a [i8]>, cols: usize) -> kernels::Staging {
    kernels::Staging::new(&qs.collect::<Vec<_>>(), cols)
}

/// Sum of each 256-value block of Q8K activations.
fn block_sums(q: &[i8]) -> Vec<i32> {
    q.chunks_exact(256).map(|b| b.iter().map(|&v| i32::from(v)).sum()).collect()
}

/// y_i = W_i x for matrices that read the same input: quantized once, and
/// all their rows in one parallel job when they are packed in one format.
pub fn matvec_group(items: &mut [(&Linear, &mut [f32])], x: &[f32], scheme: ActScheme) {
    let all = |f: fn(&Linear) -> bool| items.iter().all(|(l, _)| f(l));
    let (i8tok, q8k);
    let q = if all(|l| matches!(l, Linear::I2S { .. })) {
        i8tok = quant::quantize_i8tok(x);
        Quantized::I2S { a: &i8tok, prepared: kernels::Prepared::new(&i8tok.q) }
    } else if all(|l| matches!(l, Linear::Tq2 { .. } | Linear::Tq1 { .. })) {
        q8k = quant::quantize_q8k(x);
        Quantized::Q8K { bsums: block_sums(&q8k.q), prepared: kernels::Prepared::new(&q8k.q), a: &q8k }
    } else {
        for (l, y) in items.iter_mut() {
            match l {
                Linear::Ternary(t) => t.matvec(x, scheme, y),
                Linear::Dense { w, cols, .. } => quant::matvec_f32(w, *cols, x, y),
                packed => matvec_group(&mut [(*packed, &mut **y)], x, scheme),
            }
        }
        return;
    };
    for_each_part_of_group(items, 1, |l, out, rows| {
        // SAFETY: these rows of this matrix's output are this call's alone.
        l.rows_into(&q, rows.start, unsafe { out.slice(rows.start, rows.end) })
    });
}

/// The embedding / output (vocabulary) matrix, kept in its file precision.
#[derive(Debug)]
pub enum VocabMatrix {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// F16 read in place from the loaded file.
    F16Mapped(Mapped),
    /// Q8_0 in place: products against Q8_0 activations, as llama.cpp.
    Q8_0(Mapped),
    /// Q6_K in place: products against Q8_K activations, as llama.cpp.
    Q6K(Mapped),
    /// Q6_K with each block's values permuted at load for the AVX-512
    /// kernels (`kernels::permute_q6k`): the same bytes per block, the
    /// same products bit for bit.
    Q6KPermuted(Mapped),
}

impl VocabMatrix {
    pub fn row_into(&self, r: usize, cols: usize, out: &mut [f32]) {
        let mut f16_row = |w: &[f16]| {
            for (o, v) in out.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
                *o = v.to_f32();
            }
        };
        match self {
            VocabMatrix::F32(w) => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
            VocabMatrix::F16(w) => f16_row(w),
            VocabMatrix::F16Mapped(m) => f16_row(m.f16s().expect("checked at load")),
            VocabMatrix::Q8_0(m) => {
                let rb = cols / 32 * kernels::Q8_0_BLOCK;
                let v = quant::decode_float(TensorType::Q8_0, &m.bytes()[r * rb..(r + 1) * rb], cols);
                out.copy_from_slice(&v.expect("sized at load"));
            }
            VocabMatrix::Q6K(m) => {
                let rb = cols / 256 * kernels::Q6K_BLOCK;
                let v = quant::decode_float(TensorType::Q6K, &m.bytes()[r * rb..(r + 1) * rb], cols);
                out.copy_from_slice(&v.expect("sized at load"));
            }
            VocabMatrix::Q6KPermuted(m) => {
                // A tied embedding's row: back in the file's order first.
                let rb = cols / 256 * kernels::Q6K_BLOCK;
                let mut row = vec![0u8; rb];
                kernels::unpermute_q6k(&m.bytes()[r * rb..(r + 1) * rb], &mut row);
                out.copy_from_slice(&quant::decode_float(TensorType::Q6K, &row, cols).expect("sized at load"));
            }
        }
    }

    pub fn matvec(&self, cols: usize, x: &[f32], y: &mut [f32]) {
        match self {
            VocabMatrix::F32(w) => pool::for_each_rows_mut(y, 1, 4 * cols, |first, ys| {
                quant::matvec_f32(&w[first * cols..(first + ys.len()) * cols], cols, x, ys)
            }),
            VocabMatrix::F16(w) => matvec_f16(w, cols, x, y),
            VocabMatrix::F16Mapped(m) => matvec_f16(m.f16s().expect("checked at load"), cols, x, y),
            VocabMatrix::Q8_0(m) => {
                let a = quant::quantize_q8_0(x);
                let rb = cols / 32 * kernels::Q8_0_BLOCK;
                blocks_matvec(m.bytes(), rb, cols / 32, y, |row, dots| q8_0_row_dot(row, &a, dots));
            }
            VocabMatrix::Q6K(m) | VocabMatrix::Q6KPermuted(m) => {
                let a = quant::quantize_q8k(x);
                let sums = kernels::q6k_sums(&a.q);
                let rb = cols / 256 * kernels::Q6K_BLOCK;
                let w = m.bytes();
                let permuted = matches!(self, VocabMatrix::Q6KPermuted(_));
                let q = if permuted { kernels::permute_q6k_acts(&a.q) } else { a.q };
                let rows = if permuted { kernels::q6k_permuted_rows } else { kernels::q6k_rows };
                pool::for_each_rows_mut(y, 1, rb, |first, ys| {
                    rows(&w[first * rb..(first + ys.len()) * rb], rb, &q, &sums, &a.d, ys)
                });
            }
        }
    }

    /// Products with `n` vectors at once (`xs`: n rows of `cols`), each
    /// weight row read once for all of them: the logits of several
    /// sequences in one pass over the (largest) matrix. `ys`: n rows of
    /// this matrix's row count. The same bits as `matvec` on each vector.
    pub fn matmul(&self, cols: usize, xs: &[f32], n: usize, ys: &mut [f32]) {
        if n == 1 {
            return self.matvec(cols, xs, ys);
        }
        // Each task fills its rows for every vector (token-major within
        // the part), then copies them out.
        let vectors: Vec<&[f32]> = xs.chunks_exact(cols).collect();
        match self {
            VocabMatrix::F32(w) => pool::for_each_rows_token_major(ys, n, 4 * cols, |first, out| {
                let m = out.len() / n;
                for (x, o) in vectors.iter().zip(out.chunks_exact_mut(m)) {
                    quant::matvec_f32(&w[first * cols..(first + m) * cols], cols, x, o);
                }
            }),
            VocabMatrix::F16(_) | VocabMatrix::F16Mapped(_) => {
                let w = match self {
                    VocabMatrix::F16(w) => &w[..],
                    VocabMatrix::F16Mapped(m) => m.f16s().expect("checked at load"),
                    _ => unreachable!(),
                };
                pool::for_each_rows_token_major(ys, n, 2 * cols, |first, out| {
                    let m = out.len() / n;
                    kernels::f16_rows_many(&w[first * cols..(first + m) * cols], cols, &vectors, out);
                })
            }
            VocabMatrix::Q8_0(m) => {
                let acts: Vec<_> = vectors.iter().map(|x| quant::quantize_q8_0(x)).collect();
                let rb = cols / 32 * kernels::Q8_0_BLOCK;
                let w = m.bytes();
                pool::for_each_rows_token_major(ys, n, rb, |first, out| {
                    let mut dots = vec![0i32; cols / 32];
                    let m = out.len() / n;
                    for (i, r) in (first..first + m).enumerate() {
                        let row = &w[r * rb..(r + 1) * rb];
                        for (y, a) in out.iter_mut().skip(i).step_by(m).zip(&acts) {
                            *y = q8_0_row_dot(row, a, &mut dots);
                        }
                    }
                })
            }
            VocabMatrix::Q6K(m) | VocabMatrix::Q6KPermuted(m) => {
                let permuted = matches!(self, VocabMatrix::Q6KPermuted(_));
                let mut acts: Vec<_> = vectors.iter().map(|x| quant::quantize_q8k(x)).collect();
                let sums: Vec<Vec<i16>> = acts.iter().map(|a| kernels::q6k_sums(&a.q)).collect();
                if permuted {
                    for a in &mut acts {
                        a.q = kernels::permute_q6k_acts(&a.q);
                    }
                }
                let (qs, d): (Vec<&[i8]>, Vec<&[f32]>) = acts.iter().map(|a| (&a.q[..], &a.d[..])).unzip();
                let sums: Vec<&[i16]> = sums.iter().map(|s| &s[..]).collect();
                let rb = cols / 256 * kernels::Q6K_BLOCK;
                let w = m.bytes();
                let rows = if permuted { kernels::q6k_permuted_rows_tokens } else { kernels::q6k_rows_tokens };
                pool::for_each_rows_token_major(ys, n, rb, |first, out| {
                    let m = out.len() / n;
                    rows(&w[first * rb..(first + m) * rb], rb, &qs, &sums, &d, out);
                })
            }
        }
    }

    /// Bytes a product reads from this matrix.
    pub fn bytes_read(&self) -> u64 {
        match self {
            VocabMatrix::F32(w) => 4 * w.len() as u64,
            VocabMatrix::F16(w) => 2 * w.len() as u64,
            VocabMatrix::F16Mapped(m) | VocabMatrix::Q8_0(m) | VocabMatrix::Q6K(m) | VocabMatrix::Q6KPermuted(m) => {
                m.len() as u64
            }
        }
    }
}

/// One Q8_0 row's product with Q8_0 activations, in llama.cpp's order:
/// per block, dot * (w_d * x_d), summed in block order. `dots`: scratch,
/// one per block.
fn q8_0_row_dot(row: &[u8], a: &quant::Q8_0Acts, dots: &mut [i32]) -> f32 {
    kernels::q8_0_block_dots(row, &a.q, dots);
    let mut acc = 0f32;
    for (b, (dot, xd)) in dots.iter().zip(&a.d).enumerate() {
        acc += *dot as f32 * (kernels::f16_le_to_f32(&row[b * kernels::Q8_0_BLOCK..]) * xd);
    }
    acc
}

/// Rows of `row_bytes` in parallel, each reduced by `f(row, scratch for
/// `blocks` per-block dots)`.
fn blocks_matvec(
    w: &[u8],
    row_bytes: usize,
    blocks: usize,
    y: &mut [f32],
    f: impl Fn(&[u8], &mut [i32]) -> f32 + Sync,
) {
    pool::for_each_rows_mut(y, 1, row_bytes, |first, ys| {
        let mut dots = vec![0i32; blocks];
        for (r, out) in (first..).zip(ys.iter_mut()) {
            *out = f(&w[r * row_bytes..(r + 1) * row_bytes], &mut dots);
        }
    });
}

fn matvec_f16(w: &[f16], cols: usize, x: &[f32], y: &mut [f32]) {
    pool::for_each_rows_mut(y, 1, 2 * cols, |first, ys| {
        for (r, out) in (first..).zip(ys.iter_mut()) {
            *out = kernels::dot_f16(&w[r * cols..(r + 1) * cols], x);
        }
    });
}
