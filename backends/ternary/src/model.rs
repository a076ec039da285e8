//! The BitNet graph: `bitnet` (SiLU-gated FFN), `bitnet-b1.58` / `bitnet-25`
//! (2B4T: ReLU^2 FFN), and `llama` with ternary weights. RMSNorm, NEOX RoPE,
//! grouped-query attention with an f32 KV cache, attention and FFN
//! sub-norms when present, tied output matrix when there is no
//! `output.weight`. One token at a time (prefill feeds the prompt through
//! the same path; the math is causal, so the logits are those of a batch).

use std::path::Path;

use half::f16;

use crate::gguf::{Gguf, GgufError, TensorInfo, TensorType, Value};
use crate::kernels::{self, Gate, KvHead, Q8KeyCache, Queries};
use crate::linear::{matmul_group, Linear, Norm, VocabMatrix};
use crate::quant::{self, ActScheme, QuantError};
use crate::weights;
pub use crate::weights::Tq1Layout;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("cannot map the model file: {0}")]
    Map(std::io::Error),
    #[error("architecture `{0}` is not supported (bitnet, bitnet-b1.58, bitnet-25, llama are)")]
    Architecture(String),
    #[error("metadata `{0}` is missing or has the wrong type")]
    Metadata(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {dims:?}, expected {want:?}")]
    Shape { name: String, dims: Vec<u64>, want: Vec<u64> },
    #[error("tensor `{name}`: {source}")]
    Quant { name: String, source: QuantError },
    #[error("{0}: TL1/TL2 files carry kernels generated for one model shape; convert the model to I2_S or TQ2_0")]
    LookupTable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_layer: usize,
    pub n_ctx: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub act: Gate,
}

/// An attention task's buffers, reused by each compute thread.
struct AttentionScratch {
    /// Rows x positions.
    scores: Vec<f32>,
    /// The task's query rows gathered, then its outputs, before they are
    /// copied into the step's rows.
    q: Vec<f32>,
    out: Vec<f32>,
    visible: Vec<usize>,
}

thread_local! {
    static ATTENTION: std::cell::RefCell<AttentionScratch> = const {
        std::cell::RefCell::new(AttentionScratch { scores: Vec::new(), q: Vec::new(), out: Vec::new(), visible: Vec::new() })
    };
}

/// Prompt tokens run through the layers together (engine and bench).
pub const PREFILL_BATCH: usize = 128;

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    attn_sub_norm: Option<Vec<f32>>,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    ffn_sub_norm: Option<Vec<f32>>,
    w_down: Linear,
}

#[derive(Debug)]
pub struct Model {
    pub hp: Hparams,
    pub gguf: Gguf,
    /// How activations are quantized for the ternary products.
    pub scheme: ActScheme,
    /// The file's ternary format (lower case), e.g. "i2_s".
    pub format: String,
    token_embd: VocabMatrix,
    output: Option<VocabMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// How new KV caches store keys and values (f32 unless set).
    pub kv_type: KvType,
}

/// How the KV cache stores keys and values (llama-server's
/// `--cache-type-k/-v`): f32; f16, which halves its memory and what
/// long-context attention reads, at the cost of rounding each value once;
/// or q8_0 keys with f16 values (`-ctk q8_0 -ctv f16`): keys in int8 per
/// 32 with a scale, scored by integer dot products against the query
/// quantized the same way (`kernels::attend_q8`), for 0.56x f16's key
/// bytes and a faster attention. Heads whose size is not a multiple of
/// 32 keep f16 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F32,
    F16,
    /// q8_0 keys, f16 values.
    Q8_0,
}

impl KvType {
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum KvData {
    F32 {
        k: Vec<HeadMajor<f32>>,
        v: Vec<HeadMajor<f32>>,
    },
    /// f16 bits.
    F16 {
        k: Vec<HeadMajor<u16>>,
        v: Vec<HeadMajor<u16>>,
    },
    /// q8_0 keys (one `Q8KeyCache` per layer and kv head, a head's
    /// tiles in one run as `HeadMajor`'s), f16 values.
    Q8 {
        k: Vec<Vec<Q8KeyCache>>,
        v: Vec<HeadMajor<u16>>,
    },
}

/// One layer's keys or values, each kv head's positions in one run
/// (`head_dim` apart). A decoding token reads one kv head's vectors
/// start to end: as a stream a core reads 14 GB/s here, as 512 bytes of
/// every 2.5 KiB (positions holding all heads side by side) 9.
#[derive(Debug, Clone, PartialEq)]
struct HeadMajor<T> {
    heads: Vec<Vec<T>>,
}

impl<T: Copy> HeadMajor<T> {
    fn new(n_head: usize, cap: usize, head_dim: usize) -> Self {
        HeadMajor { heads: (0..n_head).map(|_| Vec::with_capacity(cap * head_dim)).collect() }
    }

    /// Append positions given as rows of every head's vector side by side,
    /// each head's part converted by `convert(from, to)` (a slice at a
    /// time: f16 one value at a time was 3% of a 4-sequence decoding step,
    /// on one thread while the others waited).
    fn extend<S: Copy>(&mut self, rows: &[S], head_dim: usize, convert: impl Fn(&[S], &mut [T]))
    where
        T: Default,
    {
        let kv_dim = self.heads.len() * head_dim;
        for row in rows.chunks_exact(kv_dim) {
            for (head, part) in self.heads.iter_mut().zip(row.chunks_exact(head_dim)) {
                let at = head.len();
                head.resize(at + head_dim, T::default());
                convert(part, &mut head[at..]);
            }
        }
    }

    fn truncate(&mut self, n: usize, head_dim: usize) {
        self.heads.iter_mut().for_each(|h| h.truncate(n * head_dim));
    }

    /// The first `n` positions, with room for `cap`.
    fn prefix(&self, n: usize, cap: usize, head_dim: usize) -> Self {
        let mut c = HeadMajor::new(self.heads.len(), cap, head_dim);
        for (to, from) in c.heads.iter_mut().zip(&self.heads) {
            to.extend_from_slice(&from[..n * head_dim]);
        }
        c
    }

    fn head(&self, h: usize) -> &[T] {
        &self.heads[h]
    }

    /// Position `p`'s vectors of every head, side by side.
    fn row(&self, p: usize, head_dim: usize) -> impl Iterator<Item = T> + '_ {
        self.heads.iter().flat_map(move |h| h[p * head_dim..(p + 1) * head_dim].iter().copied())
    }
}

/// Keys and values of every layer for up to `cap` positions.
#[derive(Debug, Clone, PartialEq)]
pub struct KvCache {
    data: KvData,
    pub len: usize,
    cap: usize,
    kv_dim: usize,
    head_dim: usize,
}

impl KvCache {
    pub fn new(hp: &Hparams, cap: usize, ty: KvType) -> Self {
        let kv_dim = hp.n_head_kv * hp.head_dim;
        fn layers<T: Copy>(hp: &Hparams, cap: usize) -> Vec<HeadMajor<T>> {
            (0..hp.n_layer).map(|_| HeadMajor::new(hp.n_head_kv, cap, hp.head_dim)).collect()
        }
        let data = match ty {
            KvType::F32 => KvData::F32 { k: layers(hp, cap), v: layers(hp, cap) },
            KvType::Q8_0 if hp.head_dim.is_multiple_of(32) => {
                let heads = || (0..hp.n_head_kv).map(|_| Q8KeyCache::new(hp.head_dim, cap)).collect();
                KvData::Q8 { k: (0..hp.n_layer).map(|_| heads()).collect(), v: layers(hp, cap) }
            }
            KvType::F16 | KvType::Q8_0 => KvData::F16 { k: layers(hp, cap), v: layers(hp, cap) },
        };
        KvCache { data, len: 0, cap, kv_dim, head_dim: hp.head_dim }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn kv_type(&self) -> KvType {
        match self.data {
            KvData::F32 { .. } => KvType::F32,
            KvData::F16 { .. } => KvType::F16,
            KvData::Q8 { .. } => KvType::Q8_0,
        }
    }

    /// Bytes its keys and values hold now.
    pub fn bytes(&self) -> usize {
        match &self.data {
            KvData::F32 { k, .. } => 2 * 4 * k.len() * self.len * self.kv_dim,
            KvData::F16 { k, .. } => 2 * 2 * k.len() * self.len * self.kv_dim,
            KvData::Q8 { k, .. } => {
                k.iter().flatten().map(Q8KeyCache::bytes).sum::<usize>() + 2 * k.len() * self.len * self.kv_dim
            }
        }
    }

    /// Layer `l`'s keys and values of new positions (rows of kv_dim),
    /// stored in the cache's type (f16: rounded to nearest).
    fn append(&mut self, l: usize, k_rows: &[f32], v_rows: &[f32]) {
        let hd = self.head_dim;
        let f16 = |from: &[f32], to: &mut [u16]| {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            to.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(from)
        };
        let f32 = |from: &[f32], to: &mut [f32]| to.copy_from_slice(from);
        match &mut self.data {
            KvData::F32 { k, v } => {
                k[l].extend(k_rows, hd, f32);
                v[l].extend(v_rows, hd, f32);
            }
            KvData::F16 { k, v } => {
                k[l].extend(k_rows, hd, f16);
                v[l].extend(v_rows, hd, f16);
            }
            KvData::Q8 { k, v } => {
                for row in k_rows.chunks_exact(self.kv_dim) {
                    for (head, part) in k[l].iter_mut().zip(row.chunks_exact(hd)) {
                        head.extend(part);
                    }
                }
                v[l].extend(v_rows, hd, f16);
            }
        }
    }

    /// Layer `l`'s keys as f32 (tests compare caches with it).
    pub fn keys(&self, l: usize) -> Vec<f32> {
        match &self.data {
            KvData::F32 { k, .. } => (0..self.len).flat_map(|p| k[l].row(p, self.head_dim)).collect(),
            KvData::F16 { k, .. } => {
                (0..self.len).flat_map(|p| k[l].row(p, self.head_dim)).map(crate::kernels::f16_bits_to_f32).collect()
            }
            KvData::Q8 { k, .. } => (0..self.len).flat_map(|p| k[l].iter().flat_map(move |h| h.key(p))).collect(),
        }
    }

    /// A new cache of the same capacity and type holding this one's first
    /// `n` positions (copied: this one stays as it is).
    pub fn copy_prefix(&self, n: usize) -> KvCache {
        let n = n.min(self.len);
        let (cap, hd) = (self.cap, self.head_dim);
        fn take<T: Copy>(layers: &[HeadMajor<T>], n: usize, cap: usize, hd: usize) -> Vec<HeadMajor<T>> {
            layers.iter().map(|l| l.prefix(n, cap, hd)).collect()
        }
        let data = match &self.data {
            KvData::F32 { k, v } => KvData::F32 { k: take(k, n, cap, hd), v: take(v, n, cap, hd) },
            KvData::F16 { k, v } => KvData::F16 { k: take(k, n, cap, hd), v: take(v, n, cap, hd) },
            KvData::Q8 { k, v } => {
                let heads = |l: &Vec<Q8KeyCache>| l.iter().map(|h| h.prefix(n, cap)).collect();
                KvData::Q8 { k: k.iter().map(heads).collect(), v: take(v, n, cap, hd) }
            }
        };
        KvCache { data, len: n, cap, kv_dim: self.kv_dim, head_dim: hd }
    }

    /// Forget everything from position `n` on.
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len);
        let hd = self.head_dim;
        match &mut self.data {
            KvData::F32 { k, v } => k.iter_mut().chain(v.iter_mut()).for_each(|l| l.truncate(n, hd)),
            KvData::F16 { k, v } => k.iter_mut().chain(v.iter_mut()).for_each(|l| l.truncate(n, hd)),
            KvData::Q8 { k, v } => {
                k.iter_mut().flatten().for_each(|h| h.truncate(n));
                v.iter_mut().for_each(|l| l.truncate(n, hd));
            }
        }
        self.len = n;
    }

    /// Attention of the query rows `q` over kv head `kv_head` of layer
    /// `l`, in the cache's own type.
    fn attend(&self, l: usize, q: Queries, kv_head: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
        let len = self.head_dim;
        // A kv head's positions are one run (`HeadMajor`): `len` apart.
        let (stride, offset) = (len, 0);
        match &self.data {
            KvData::F32 { k, v } => {
                let kv = KvHead { k: k[l].head(kv_head), v: v[l].head(kv_head), stride, offset, len };
                crate::kernels::attend(q, kv, scale, scores, out)
            }
            KvData::F16 { k, v } => {
                let kv = KvHead { k: k[l].head(kv_head), v: v[l].head(kv_head), stride, offset, len };
                crate::kernels::attend(q, kv, scale, scores, out)
            }
            KvData::Q8 { k, v } => {
                let values = KvHead { k: &[][..], v: v[l].head(kv_head), stride, offset, len };
                crate::kernels::attend_q8(q, k[l][kv_head].head(0, len), values, scale, scores, out)
            }
        }
    }
}

fn meta_u(g: &Gguf, key: &str) -> Result<usize, ModelError> {
    g.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| ModelError::Metadata(key.into()))
}

fn meta_f(g: &Gguf, key: &str) -> Option<f32> {
    g.get(key).and_then(Value::as_f64).map(|v| v as f32)
}

/// RoPE angles of one position: (sin, cos) of pos * base^(-2i/hd) for
/// i < hd/2, computed in f64 once per token and shared by every head of
/// every layer.
fn rope_angles(hd: usize, pos: usize, base: f32) -> Vec<(f32, f32)> {
    (0..hd / 2)
        .map(|i| {
            let theta = pos as f64 * f64::from(base).powf(-2.0 * i as f64 / hd as f64);
            (theta.sin() as f32, theta.cos() as f32)
        })
        .collect()
}

/// NEOX RoPE in place on heads of `2 * angles.len()`: pairs (i, i + hd/2).
fn rope(x: &mut [f32], angles: &[(f32, f32)]) {
    let half = angles.len();
    for head in x.chunks_exact_mut(2 * half) {
        for (i, &(s, c)) in angles.iter().enumerate() {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c - b * s;
            head[i + half] = a * s + b * c;
        }
    }
}

impl Model {
    /// Load a GGUF model. `scheme` overrides the activation scheme the
    /// format's reference uses.
    pub fn load(path: &Path, scheme: Option<ActScheme>) -> Result<Self, ModelError> {
        Self::load_with(path, scheme, Tq1Layout::from_env())
    }

    /// `load`, with TQ1_0 matrices held as `tq1` says.
    pub fn load_with(path: &Path, scheme: Option<ActScheme>, tq1: Tq1Layout) -> Result<Self, ModelError> {
        let gguf = Gguf::open(path)?;
        let file =
            bitnet_safefs::open_regular(path).map_err(|e| ModelError::Map(std::io::Error::other(e.to_string())))?;
        let file = weights::ModelFile::load(file, &gguf).map_err(ModelError::Map)?;
        Self::from_parts(gguf, &file, scheme, tq1)
    }

    fn from_parts(
        gguf: Gguf,
        file: &weights::ModelFile,
        scheme: Option<ActScheme>,
        tq1: Tq1Layout,
    ) -> Result<Self, ModelError> {
        // TQ1_0 / TQ2_0 files use llama.cpp's per-block scheme unless told otherwise.
        let packed_q8k = scheme.is_none_or(|s| s == ActScheme::Q8K);
        let unpack_tq1 = packed_q8k && tq1 == Tq1Layout::Unpacked;
        // The matrices read from the file (`weights::goes_to_arena`), end to
        // end in huge pages; where there is none, each in a buffer of its own.
        let arena = weights::Arena::new(weights::arena_bound(&gguf)).ok();
        let arena = arena.as_ref();
        let held = |start: usize, len: usize| file.held(start, len, arena).map_err(ModelError::Map);
        // `items` runs of `item_bytes` from `start`, read from the file to be held.
        let rows_at = |start: usize, items: usize, item_bytes: usize, tq1: bool| {
            weights::Rows::new(file, start, items, item_bytes, tq1).map_err(ModelError::Map)
        };
        // A TQ2_0 matrix (of the file, or unpacked from TQ1_0) as the model
        // holds it: regrouped where the kernels read that layout
        // (`weights::regroups_tq2`).
        let tq2 = |src: weights::Rows<'_>, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            let grouped = weights::regroups_tq2();
            let bytes = match grouped {
                true => weights::regroup_tq2(&src, rows, cols / 256, arena),
                false => weights::place(&src, arena),
            };
            Ok(Linear::Tq2 { bytes: bytes.map_err(ModelError::Map)?, rows, cols, grouped })
        };
        let arch = gguf.architecture().unwrap_or("").to_string();
        let act = match arch.as_str() {
            "bitnet" | "llama" => Gate::Silu,
            "bitnet-b1.58" | "bitnet-25" => Gate::Relu2,
            _ => return Err(ModelError::Architecture(arch)),
        };
        let a = |k: &str| format!("{arch}.{k}");
        let n_embd = meta_u(&gguf, &a("embedding_length"))?;
        let n_head = meta_u(&gguf, &a("attention.head_count"))?;
        let n_layer = meta_u(&gguf, &a("block_count"))?;
        let emb = find(&gguf, "token_embd.weight")?;
        let hp = Hparams {
            n_vocab: meta_u(&gguf, &a("vocab_size")).unwrap_or(emb.dims.get(1).copied().unwrap_or(0) as usize),
            n_embd,
            n_ff: meta_u(&gguf, &a("feed_forward_length"))?,
            n_head,
            n_head_kv: meta_u(&gguf, &a("attention.head_count_kv")).unwrap_or(n_head),
            n_layer,
            n_ctx: meta_u(&gguf, &a("context_length")).unwrap_or(4096),
            head_dim: meta_u(&gguf, &a("rope.dimension_count")).unwrap_or(n_embd / n_head.max(1)),
            rms_eps: meta_f(&gguf, &a("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_base: meta_f(&gguf, &a("rope.freq_base")).unwrap_or(10000.0),
            act,
            arch: arch.clone(),
        };
        if hp.n_head == 0
            || hp.n_head_kv == 0
            || !hp.n_head.is_multiple_of(hp.n_head_kv)
            || hp.head_dim * hp.n_head != n_embd
        {
            return Err(ModelError::Metadata(format!("{arch}.attention.head_count(_kv)")));
        }
        // Where a tensor's bytes are in the file and how many of them there
        // are; the bytes themselves, read from the file if they were left there.
        let span = |t: &TensorInfo| -> (usize, usize) {
            let start = (gguf.data_offset + t.offset) as usize;
            let end = t.size.map(|s| start + s as usize).unwrap_or(file.len()).min(file.len());
            (start.min(end), end - start.min(end))
        };
        let data = |t: &TensorInfo| -> Result<std::borrow::Cow<'_, [u8]>, ModelError> {
            let (start, len) = span(t);
            file.bytes(start, len).map_err(ModelError::Map)
        };
        let quant_err = |name: &str| {
            let name = name.to_string();
            move |source| ModelError::Quant { name: name.clone(), source }
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let t = find(&gguf, name)?;
            if t.elements() != n as u64 {
                return Err(ModelError::Shape { name: name.into(), dims: t.dims.clone(), want: vec![n as u64] });
            }
            quant::decode_float(t.ty, &data(t)?, n).map_err(quant_err(name))
        };
        let dense16 = |name: &str, rows: usize, cols: usize| -> Result<VocabMatrix, ModelError> {
            let t = find(&gguf, name)?;
            if t.dims != [cols as u64, rows as u64] {
                return Err(ModelError::Shape {
                    name: name.into(),
                    dims: t.dims.clone(),
                    want: vec![cols as u64, rows as u64],
                });
            }
            let n = rows * cols;
            match t.ty {
                TensorType::F16 => {
                    let d = data(t)?;
                    if d.len() < n * 2 {
                        return Err(ModelError::Shape {
                            name: name.into(),
                            dims: t.dims.clone(),
                            want: vec![cols as u64, rows as u64],
                        });
                    }
                    let m = held(span(t).0, n * 2)?;
                    // Little-endian hosts read the file's f16 in place.
                    if cfg!(target_endian = "little") && m.f16s().is_some() {
                        return Ok(VocabMatrix::F16Mapped(m));
                    }
                    Ok(VocabMatrix::F16(d[..n * 2].chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()))
                }
                TensorType::Q8_0 | TensorType::Q6K
                    if cols.is_multiple_of(if t.ty == TensorType::Q8_0 { 32 } else { 256 }) =>
                {
                    let len = t.ty.bytes(n as u64).unwrap_or(u64::MAX) as usize;
                    let (start, have) = span(t);
                    if have < len {
                        return Err(ModelError::Quant {
                            name: name.into(),
                            source: QuantError::Size { ty: t.ty.name(), n, want: len, have },
                        });
                    }
                    Ok(match t.ty {
                        TensorType::Q8_0 => VocabMatrix::Q8_0(held(start, len)?),
                        _ if weights::permutes_q6k() => {
                            let blocks = rows_at(start, len / kernels::Q6K_BLOCK, kernels::Q6K_BLOCK, false)?;
                            VocabMatrix::Q6KPermuted(weights::permute_q6k(&blocks, arena).map_err(ModelError::Map)?)
                        }
                        _ => VocabMatrix::Q6K(held(start, len)?),
                    })
                }
                ty => Ok(VocabMatrix::F32(quant::decode_float(ty, &data(t)?, n).map_err(quant_err(name))?)),
            }
        };
        let mut formats = std::collections::BTreeMap::<String, usize>::new();
        // I2_S files use bitnet.cpp's per-token scheme unless told otherwise.
        let packed_i2s = scheme.is_none_or(|s| s == ActScheme::I8Tok);
        let mut linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
            let t = find(&gguf, name)?;
            if t.dims != [cols as u64, rows as u64] {
                return Err(ModelError::Shape {
                    name: name.into(),
                    dims: t.dims.clone(),
                    want: vec![cols as u64, rows as u64],
                });
            }
            *formats.entry(t.ty.name()).or_default() += 1;
            let (start, have) = span(t);
            let e = quant_err(name);
            Ok(match t.ty {
                TensorType::I2S if packed_i2s => {
                    let n = rows * cols;
                    if have < n / 4 + 4 || !cols.is_multiple_of(128) {
                        return Err(ModelError::Quant {
                            name: name.into(),
                            source: QuantError::Size { ty: "i2_s".into(), n, want: n / 4 + 4, have },
                        });
                    }
                    let scale = file.bytes(start + n / 4, 4).map_err(ModelError::Map)?;
                    let scale = f32::from_le_bytes(scale[..].try_into().expect("4 bytes"));
                    let src = rows_at(start, rows, cols / 4, false)?;
                    let grouped = weights::regroups_i2s(cols);
                    let bytes = match grouped {
                        true => weights::regroup_i2s(&src, rows, cols / 256, arena),
                        false => weights::place(&src, arena),
                    };
                    Linear::I2S { bytes: bytes.map_err(ModelError::Map)?, rows, cols, scale, grouped }
                }
                TensorType::I2S => Linear::Ternary(quant::decode_i2s(&data(t)?, rows, cols).map_err(e)?),
                TensorType::TQ2_0 if packed_q8k => {
                    let n = rows * cols;
                    if !cols.is_multiple_of(256) || have < n / 256 * 66 {
                        return Err(ModelError::Quant {
                            name: name.into(),
                            source: QuantError::Size { ty: "tq2_0".into(), n, want: n / 256 * 66, have },
                        });
                    }
                    tq2(rows_at(start, rows, cols / 256 * 66, false)?, rows, cols)?
                }
                TensorType::TQ2_0 => Linear::Ternary(quant::decode_tq2_0(&data(t)?, rows, cols).map_err(e)?),
                TensorType::TQ1_0 if packed_q8k => {
                    let n = rows * cols;
                    if !cols.is_multiple_of(256) || have < n / 256 * 54 {
                        return Err(ModelError::Quant {
                            name: name.into(),
                            source: QuantError::Size { ty: "tq1_0".into(), n, want: n / 256 * 54, have },
                        });
                    }
                    let src = rows_at(start, rows, cols / 256 * 54, unpack_tq1)?;
                    match unpack_tq1 {
                        true => tq2(src, rows, cols)?,
                        false => {
                            Linear::Tq1 { bytes: weights::place(&src, arena).map_err(ModelError::Map)?, rows, cols }
                        }
                    }
                }
                TensorType::TQ1_0 => Linear::Ternary(quant::decode_tq1_0(&data(t)?, rows, cols).map_err(e)?),
                TensorType::Other(37 | 38) | TensorType::Other(39) if arch.starts_with("bitnet") => {
                    return Err(ModelError::LookupTable(name.into()))
                }
                ty => {
                    let w = quant::decode_float(ty, &data(t)?, rows * cols).map_err(quant_err(name))?;
                    match quant::ternarize_f32(&w, rows, cols) {
                        Ok(t) => Linear::Ternary(t),
                        Err(_) => Linear::Dense { w, rows, cols },
                    }
                }
            })
        };
        let kv = hp.n_head_kv * hp.head_dim;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let optional = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                match gguf.tensors.iter().any(|t| t.name == n(s)) {
                    true => vector(&n(s), len).map(Some),
                    false => Ok(None),
                }
            };
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm"), n_embd)?,
                wq: linear(&n("attn_q"), n_embd, n_embd)?,
                wk: linear(&n("attn_k"), kv, n_embd)?,
                wv: linear(&n("attn_v"), kv, n_embd)?,
                attn_sub_norm: optional("attn_sub_norm", n_embd)?,
                wo: linear(&n("attn_output"), n_embd, n_embd)?,
                ffn_norm: vector(&n("ffn_norm"), n_embd)?,
                w_gate: linear(&n("ffn_gate"), hp.n_ff, n_embd)?,
                w_up: linear(&n("ffn_up"), hp.n_ff, n_embd)?,
                ffn_sub_norm: optional("ffn_sub_norm", hp.n_ff)?,
                w_down: linear(&n("ffn_down"), n_embd, hp.n_ff)?,
            });
        }
        let format = formats.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k).unwrap_or_default();
        let file_scheme = match format.as_str() {
            "i2_s" => ActScheme::I8Tok,
            "tq1_0" | "tq2_0" => ActScheme::Q8K,
            _ => ActScheme::Float,
        };
        let token_embd = dense16("token_embd.weight", hp.n_vocab, n_embd)?;
        let output = match gguf.tensors.iter().any(|t| t.name == "output.weight") {
            true => Some(dense16("output.weight", hp.n_vocab, n_embd)?),
            false => None,
        };
        let output_norm = vector("output_norm.weight", n_embd)?;
        Ok(Model {
            hp,
            scheme: scheme.unwrap_or(file_scheme),
            format,
            token_embd,
            output,
            output_norm,
            layers,
            gguf,
            kv_type: KvType::F32,
        })
    }

    /// The format the layers' ternary matrices are held in (most of them,
    /// lower case): the file's, except a TQ1_0 file's unpacked to TQ2_0
    /// (`Tq1Layout`).
    pub fn weights_format(&self) -> &str {
        let unpacked = self.layers.iter().any(|l| matches!(l.wq, Linear::Tq2 { .. }));
        if self.format == "tq1_0" && unpacked {
            "tq2_0"
        } else {
            &self.format
        }
    }

    /// The output (vocabulary) matrix's type as GGUF names it: that of
    /// `output.weight`, or of the embedding when tied.
    pub fn output_format(&self) -> &'static str {
        match self.output.as_ref().unwrap_or(&self.token_embd) {
            VocabMatrix::F32(_) => "f32",
            VocabMatrix::F16(_) | VocabMatrix::F16Mapped(_) => "f16",
            VocabMatrix::Q8_0(_) => "q8_0",
            VocabMatrix::Q6K(_) | VocabMatrix::Q6KPermuted(_) => "q6_k",
        }
    }

    /// Bytes one decoded token reads: every weight matrix, the output
    /// matrix, the norms (the KV cache comes on top, small at short context).
    pub fn bytes_per_token(&self) -> u64 {
        self.layer_bytes() + self.output.as_ref().unwrap_or(&self.token_embd).bytes_read()
    }

    /// `bytes_per_token` with the matrices packed as the file packs them:
    /// less than it for a TQ1_0 model held unpacked (54 bytes per 256
    /// weights rather than 66), the figure a bandwidth ceiling for the
    /// file's format is reckoned from.
    pub fn file_bytes_per_token(&self) -> u64 {
        let layers = match (self.format.as_str(), self.weights_format()) {
            ("tq1_0", "tq2_0") => self.layer_bytes() / 66 * 54,
            _ => self.layer_bytes(),
        };
        layers + self.output.as_ref().unwrap_or(&self.token_embd).bytes_read()
    }

    fn layer_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .into_iter()
                    .map(Linear::bytes_read)
                    .sum::<u64>()
            })
            .sum()
    }

    /// A KV cache of `cap` positions (at most the model's context) in
    /// `kv_type`.
    pub fn new_cache(&self, cap: usize) -> KvCache {
        KvCache::new(&self.hp, cap.min(self.hp.n_ctx).max(1), self.kv_type)
    }

    /// Feed one token at the cache's next position; the logits it gives.
    pub fn forward(&self, token: u32, cache: &mut KvCache) -> Vec<f32> {
        self.forward_batch(&[token], cache)
    }

    /// Feed `tokens` at the cache's next positions (a prompt): every layer
    /// runs on all of them at once, so each weight matrix is read once per
    /// batch, not once per token. The logits of the last token.
    pub fn forward_batch(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        self.forward_segments(&mut [Segment { tokens, cache }]).into_only_row()
    }

    /// Feed several sequences at once, each its tokens at its own cache's
    /// next positions (a decode step of every running request, a chunk of
    /// a new prompt among them): every layer runs on all their tokens
    /// together, so each weight matrix, the output matrix included, is read
    /// once per call for all of them. Each sequence attends to its own
    /// cache only. The logits of each segment's last token, in order.
    pub fn forward_segments(&self, segs: &mut [Segment<'_>]) -> Logits {
        let hp = &self.hp;
        let n: usize = segs.iter().map(|s| s.tokens.len()).sum();
        assert!(n > 0 && segs.iter().all(|s| !s.tokens.is_empty()), "no tokens");
        let (d, hd) = (hp.n_embd, hp.head_dim);
        for s in segs.iter() {
            assert!(s.cache.len + s.tokens.len() <= s.cache.cap, "KV cache full");
        }
        // Each row's position in its sequence; each segment's first row,
        // token count and cached positions.
        let mut row_pos = Vec::with_capacity(n);
        let mut seg_rows = Vec::with_capacity(segs.len());
        for s in segs.iter() {
            seg_rows.push(SegmentRows { first: row_pos.len(), tokens: s.tokens.len(), cached: s.cache.len });
            row_pos.extend(s.cache.len..s.cache.len + s.tokens.len());
        }
        let kv = hp.n_head_kv * hd;
        let group = hp.n_head / hp.n_head_kv;
        let mut x = vec![0f32; n * d];
        let tokens = segs.iter().flat_map(|s| s.tokens.iter());
        for (t, xt) in tokens.zip(x.chunks_exact_mut(d)) {
            self.token_embd.row_into((*t as usize).min(hp.n_vocab - 1), d, xt);
        }
        let (mut q, mut k, mut v) = (vec![0f32; n * d], vec![0f32; n * kv], vec![0f32; n * kv]);
        let (mut att, mut o) = (vec![0f32; n * d], vec![0f32; n * d]);
        let (mut g, mut u) = (vec![0f32; n * hp.n_ff], vec![0f32; n * hp.n_ff]);
        let scale = 1.0 / (hd as f32).sqrt();
        // Each norm is applied to a token where it is quantized for the
        // product that reads it (`linear::Norm`).
        let eps = hp.rms_eps;
        let angles: Vec<Vec<(f32, f32)>> = row_pos.iter().map(|&p| rope_angles(hd, p, hp.rope_base)).collect();
        // Each attention task: some tokens of one sequence and query heads
        // that share a kv head, so each key and value is read once for all
        // of them (see `attention_tasks`); the same split in every layer.
        let tasks = attention_tasks(&seg_rows, hp.n_head, group, crate::pool::current_threads());
        for (l, layer) in self.layers.iter().enumerate() {
            let qkv = &mut [(&layer.wq, &mut q[..]), (&layer.wk, &mut k[..]), (&layer.wv, &mut v[..])];
            matmul_group(qkv, &x, n, self.scheme, Some(Norm { weight: &layer.attn_norm, eps }));
            for (t, angles) in angles.iter().enumerate() {
                rope(&mut q[t * d..(t + 1) * d], angles);
                rope(&mut k[t * kv..(t + 1) * kv], angles);
            }
            let mut row = 0;
            for s in segs.iter_mut() {
                let m = s.tokens.len();
                s.cache.append(l, &k[row * kv..(row + m) * kv], &v[row * kv..(row + m) * kv]);
                row += m;
            }
            // Causal: a row at position p sees its sequence's positions
            // 0..=p. The same bits however the rows are split.
            let (q, row_pos) = (&q, &row_pos);
            let caches: Vec<&KvCache> = segs.iter().map(|s| &*s.cache).collect();
            let att_rows = crate::pool::SharedMut::new(&mut att);
            crate::pool::with_current(|pool| {
                pool.run(tasks.len(), &|i| {
                    let task = &tasks[i];
                    let (first, width) = (task.head * hd, task.heads * hd);
                    let rows = task.first_row..task.first_row + task.tokens;
                    ATTENTION.with_borrow_mut(|a| {
                        a.q.clear();
                        a.visible.clear();
                        for row in rows.clone() {
                            a.q.extend_from_slice(&q[row * d + first..][..width]);
                            a.visible.push(row_pos[row] + 1);
                        }
                        a.out.resize(a.q.len(), 0.0);
                        let queries = Queries { q: &a.q, heads: task.heads, visible: &a.visible };
                        caches[task.seg].attend(l, queries, task.head / group, scale, &mut a.scores, &mut a.out);
                        for (row, o) in rows.zip(a.out.chunks_exact(width)) {
                            // SAFETY: tasks cover disjoint (row, head) pieces
                            // of att (attention_tasks), each within a row.
                            unsafe { att_rows.slice(row * d + first, row * d + first + width) }.copy_from_slice(o);
                        }
                    })
                })
            });
            layer.wo.matmul(
                &att,
                n,
                self.scheme,
                layer.attn_sub_norm.as_deref().map(|weight| Norm { weight, eps }),
                &mut o,
            );
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            matmul_group(
                &mut [(&layer.w_gate, &mut g), (&layer.w_up, &mut u)],
                &x,
                n,
                self.scheme,
                Some(Norm { weight: &layer.ffn_norm, eps }),
            );
            // A task per token: one token's gate is a few microseconds
            // (vectorized), less than handing it to another thread.
            let u = &u;
            crate::pool::for_each_chunk_mut(&mut g, hp.n_ff, |start, gs| {
                kernels::gate(hp.act, gs, &u[start..start + gs.len()]);
            });
            layer.w_down.matmul(
                &g,
                n,
                self.scheme,
                layer.ffn_sub_norm.as_deref().map(|weight| Norm { weight, eps }),
                &mut o,
            );
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
        }
        // Only each segment's last token's logits are needed: one pass over
        // the output matrix for all of them.
        let mut last_rows = vec![0f32; segs.len() * d];
        let mut row = 0;
        for (s, hl) in segs.iter_mut().zip(last_rows.chunks_exact_mut(d)) {
            let m = s.tokens.len();
            s.cache.len += m;
            row += m;
            kernels::rms_norm(&x[(row - 1) * d..row * d], &self.output_norm, hp.rms_eps, hl);
        }
        let mut logits = vec![0f32; segs.len() * hp.n_vocab];
        self.output.as_ref().unwrap_or(&self.token_embd).matmul(d, &last_rows, segs.len(), &mut logits);
        Logits { data: logits, n_vocab: hp.n_vocab }
    }
}

/// The logits of each segment's last token, in one buffer (a row of the
/// vocabulary's size per segment): no copy per sequence. (A second 0.5 MB
/// buffer per token made the allocator give its pages back and fault them
/// in again, zeroed, each token: 1.5% of decoding.)
#[derive(Debug)]
pub struct Logits {
    data: Vec<f32>,
    n_vocab: usize,
}

impl Logits {
    /// Segments (rows).
    pub fn len(&self) -> usize {
        self.data.len() / self.n_vocab.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.n_vocab.max(1))
    }

    /// Each row to sample from in place (a sampler rewrites its logits).
    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(self.n_vocab.max(1))
    }

    /// The one segment's row, the buffer itself.
    fn into_only_row(self) -> Vec<f32> {
        assert_eq!(self.len(), 1, "logits of one segment");
        self.data
    }
}

impl std::ops::Index<usize> for Logits {
    type Output = [f32];

    fn index(&self, i: usize) -> &[f32] {
        &self.data[i * self.n_vocab..][..self.n_vocab]
    }
}

/// One sequence's share of a `forward_segments` call.
pub struct Segment<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Where a segment's tokens are among a step's rows.
struct SegmentRows {
    first: usize,
    tokens: usize,
    /// Positions in its cache before this step.
    cached: usize,
}

/// Attention work for a thread: `tokens` rows of segment `seg` from row
/// `first_row` on, query heads `head..head + heads` (all on one kv head).
#[derive(Debug, Clone, PartialEq)]
struct AttentionTask {
    seg: usize,
    first_row: usize,
    tokens: usize,
    head: usize,
    heads: usize,
    /// Rows x positions read: the order tasks are handed out in.
    work: usize,
}

/// Rows (tokens x heads) one attention task takes at most: its scores
/// are rows x positions floats (1 MiB at 4,096 positions).
const MAX_ATTENTION_ROWS: usize = 64;

/// A step's attention cut into tasks. The heads of a kv head stay
/// together where that leaves enough tasks (`heads_per_attention_task`),
/// and a segment's tokens together up to `MAX_ATTENTION_ROWS` rows or
/// until there are four tasks per thread: a task reads its kv head's
/// keys and values once for all its rows, so fewer, larger tasks read the
/// cache fewer times (a 20-token turn over 1,000 cached positions, on 2
/// threads: 10 tasks of 10 tokens x 4 heads, each kv head read twice, not
/// 40 times). Heaviest first, so no thread is left with a large one at
/// the end.
fn attention_tasks(segs: &[SegmentRows], n_head: usize, group: usize, threads: usize) -> Vec<AttentionTask> {
    let rows: usize = segs.iter().map(|s| s.tokens).sum::<usize>() * n_head;
    let heads = heads_per_attention_task(rows, group, threads);
    let per_segment = n_head / heads;
    let split = (4 * threads).div_ceil((segs.len() * per_segment).max(1)).max(1);
    let most = (MAX_ATTENTION_ROWS / heads).max(1);
    let mut tasks = Vec::new();
    for (seg, s) in segs.iter().enumerate() {
        let per = s.tokens.div_ceil(split).clamp(1, most);
        for t0 in (0..s.tokens).step_by(per) {
            let tokens = per.min(s.tokens - t0);
            let work = tokens * heads * (s.cached + t0 + tokens);
            for head in (0..n_head).step_by(heads) {
                tasks.push(AttentionTask { seg, first_row: s.first + t0, tokens, head, heads, work });
            }
        }
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.work));
    tasks
}

/// Query heads per attention task: the largest divisor of `group` (the
/// heads sharing one kv head) that still leaves a task per thread
/// (`heads` = tokens x query heads). Each task a group is split into
/// reads that kv head's keys and values again: decoding 2B4T (20 heads,
/// groups of 4) on 2 threads after 4,000 positions, whole groups (5 tasks,
/// 3 and 2 per thread) gave 12.1-12.4 tokens/s with an f32 cache where
/// halves (10 tasks, each kv head read twice) gave 10.2-10.6; after 512,
/// the same within noise. A prompt: 4 heads per task either way.
fn heads_per_attention_task(heads: usize, group: usize, threads: usize) -> usize {
    (1..=group).rev().find(|g| group.is_multiple_of(*g) && heads / g >= threads).unwrap_or(1)
}

fn find<'a>(g: &'a Gguf, name: &str) -> Result<&'a TensorInfo, ModelError> {
    g.tensors.iter().find(|t| t.name == name).ok_or_else(|| ModelError::MissingTensor(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{fixture, Golden};

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let s = b.iter().fold(0f32, |m, y| m.max(y.abs()));
        d / s
    }

    /// Several sequences in one pass (a chunk of one's prompt beside
    /// others' single decode tokens, at different positions) give each the
    /// logits it gets alone, and leave each cache as feeding it alone does.
    #[test]
    fn sequences_fed_together_get_the_logits_each_gets_alone() {
        for name in ["bitnet-b1.58-i2_s.gguf", "bitnet-tq2_0.gguf", "bitnet-tq1_0.gguf", "bitnet-b1.58-tq2_0.gguf"] {
            let m = Model::load(&fixture(name), None).unwrap();
            let prompts: [&[u32]; 3] = [&[1, 5, 9, 13, 2], &[7, 3], &[11, 4, 6, 8]];
            let next: [&[u32]; 3] = [&[21], &[22, 23, 24], &[25]];
            // Alone.
            let mut alone = Vec::new();
            let mut alone_caches = Vec::new();
            for (p, n) in prompts.iter().zip(&next) {
                let mut c = m.new_cache(32);
                m.forward_batch(p, &mut c);
                alone.push(m.forward_batch(n, &mut c));
                alone_caches.push(c);
            }
            // Together: the prompts in one call, then the next tokens in another.
            let mut caches: Vec<KvCache> = (0..3).map(|_| m.new_cache(32)).collect();
            let mut segs: Vec<Segment> =
                caches.iter_mut().zip(&prompts).map(|(cache, tokens)| Segment { tokens, cache }).collect();
            m.forward_segments(&mut segs);
            let mut segs: Vec<Segment> =
                caches.iter_mut().zip(&next).map(|(cache, tokens)| Segment { tokens, cache }).collect();
            let together = m.forward_segments(&mut segs);
            assert_eq!(together.len(), 3);
            for i in 0..3 {
                assert!(rel(&together[i], &alone[i]) < 1e-4, "{name} seq {i}: {}", rel(&together[i], &alone[i]));
                assert_eq!(argmax(&together[i]), argmax(&alone[i]), "{name} seq {i}");
                assert_eq!(caches[i].len, alone_caches[i].len);
                assert!(rel(&caches[i].keys(0), &alone_caches[i].keys(0)) < 1e-4, "{name} seq {i} keys");
            }
        }
    }

    /// An f16 KV cache: half the bytes, and logits within the fixtures'
    /// tolerances for an F16 cache (shared/fixtures README) of an f32
    /// cache's, over a prompt and 12 steps teacher-forced with the f32 run's
    /// greedy tokens: with float activations rel <= 2e-3 and top1 >= 0.98;
    /// with the file's quantized activations (int8 rounding amplifies a
    /// value's change) rel <= 5e-2 and top1 >= 0.9. q8_0 keys (f16
    /// values): 100/256 of f32's bytes, and the f16 tolerances except rel
    /// <= 1e-2 with float activations (measured: 3.8e-3 to 5.2e-3, top1 1;
    /// quantized 2.5e-2 to 4.7e-2, top1 >= 0.92); the fixtures' README
    /// has no q8_0 figure.
    #[test]
    fn f16_and_q8_0_kv_caches_hold_fewer_bytes_and_keep_the_logits_within_tolerance() {
        for name in ["bitnet-b1.58-i2_s.gguf", "bitnet-tq2_0.gguf", "bitnet-tq1_0.gguf", "bitnet-b1.58-tq2_0.gguf"] {
            for (scheme, tol, min_top1) in [(Some(ActScheme::Float), 2e-3, 0.98), (None, 5e-2, 0.9)] {
                let mut m = Model::load(&fixture(name), scheme).unwrap();
                let prompt: Vec<u32> = vec![1, 50, 300, 7, 99, 1000, 3, 42];
                let run = |m: &Model, forced: Option<&[u32]>| {
                    let mut c = m.new_cache(64);
                    let mut logits = m.forward_batch(&prompt, &mut c);
                    let (mut all, mut tokens) = (vec![logits.clone()], Vec::new());
                    for step in 0..12 {
                        let t = forced.map_or(argmax(&logits) as u32, |f| f[step]);
                        tokens.push(t);
                        logits = m.forward(t, &mut c);
                        all.push(logits.clone());
                    }
                    (all, tokens, c)
                };
                let (want, tokens, f32_cache) = run(&m, None);
                m.kv_type = KvType::F16;
                let (got, _, f16_cache) = run(&m, Some(&tokens));
                assert_eq!(f16_cache.kv_type(), KvType::F16);
                assert_eq!(2 * f16_cache.bytes(), f32_cache.bytes(), "{name}");
                let worst = got.iter().zip(&want).map(|(a, b)| rel(a, b)).fold(0f32, f32::max);
                let top1 = got.iter().zip(&want).filter(|(a, b)| argmax(a) == argmax(b)).count() as f32 / 13.0;
                assert!(worst <= tol, "{name} {scheme:?}: worst relative error {worst}");
                assert!(top1 >= min_top1, "{name} {scheme:?}: top1 {top1}");
                m.kv_type = KvType::Q8_0;
                let (got, _, q8_cache) = run(&m, Some(&tokens));
                assert_eq!(q8_cache.kv_type(), KvType::Q8_0);
                let worst = got.iter().zip(&want).map(|(a, b)| rel(a, b)).fold(0f32, f32::max);
                let top1 = got.iter().zip(&want).filter(|(a, b)| argmax(a) == argmax(b)).count() as f32 / 13.0;
                // Keys: 32 codes + a 4-byte scale per 32 values; values f16.
                assert_eq!(256 * q8_cache.bytes(), 100 * f32_cache.bytes(), "{name}");
                let (tol, min_top1) = if scheme.is_some() { (1e-2, 0.98) } else { (tol, min_top1) };
                assert!(worst <= tol, "{name} {scheme:?}: q8_0 keys: worst relative error {worst}");
                assert!(top1 >= min_top1, "{name} {scheme:?}: q8_0 keys: top1 {top1}");
            }
        }
        assert_eq!(KvType::parse("F16"), Some(KvType::F16));
        assert_eq!(KvType::parse("Q8_0"), Some(KvType::Q8_0));
        assert_eq!(KvType::parse("q4_0"), None);
    }

    /// The vocabulary matrix's product with several vectors in one pass
    /// gives each the bits `matvec` gives it (5 vectors: a group of four and one).
    fn assert_matmul_is_matvec_per_vector(m: &Model, what: &str) {
        let (d, v) = (m.hp.n_embd, m.hp.n_vocab);
        let xs: Vec<f32> = (0..5 * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let mut together = vec![0f32; 5 * v];
        m.token_embd.matmul(d, &xs, 5, &mut together);
        for (j, x) in xs.chunks_exact(d).enumerate() {
            let mut one = vec![0f32; v];
            m.token_embd.matvec(d, x, &mut one);
            assert_eq!(&together[j * v..(j + 1) * v], &one[..], "{what}: vector {j}");
        }
    }

    #[test]
    fn the_vocabulary_matrix_gives_several_vectors_what_it_gives_each() {
        assert_matmul_is_matvec_per_vector(&Model::load(&fixture("bitnet-b1.58-i2_s.gguf"), None).unwrap(), "f16");
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
    }

    /// Logits at every prompt position, and 16 greedy tokens after it.
    fn run(m: &Model, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
        let mut cache = m.new_cache(256);
        let rows: Vec<Vec<f32>> = prompt.iter().map(|&t| m.forward(t, &mut cache)).collect();
        let mut last = rows.last().unwrap().clone();
        let mut greedy = Vec::new();
        for _ in 0..16 {
            let t = argmax(&last) as u32;
            greedy.push(t);
            last = m.forward(t, &mut cache);
        }
        (rows, greedy)
    }

    fn check(stem: &str, scheme: ActScheme, src: &str) {
        let g = Golden::open(stem);
        let m = Model::load(&fixture(&format!("{stem}.gguf")), Some(scheme)).unwrap();
        // Packed TQ2_0 matrices are regrouped exactly where the kernels
        // read that layout, so the references check those kernels too.
        for l in &m.layers {
            if let Linear::Tq2 { grouped, bytes, .. } = &l.w_down {
                assert_eq!(*grouped, weights::regroups_tq2(), "{stem}: TQ2_0 layout");
                // Regrouped matrices share the model's arena.
                assert!(bytes.is_in_arena(), "{stem}: TQ2_0 read into the arena");
            }
        }
        let v = m.hp.n_vocab;
        for p in g.meta["prompts"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let prompt: Vec<u32> = p["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            let want = g.f32(&format!("{name}.logits.{src}"));
            let (rows, greedy) = run(&m, &prompt);
            let r0 = rel(&rows[0], &want[..v]);
            let mut worst = 0f32;
            let mut top1 = 0;
            for (i, row) in rows.iter().enumerate() {
                let w = &want[i * v..(i + 1) * v];
                worst = worst.max(rel(row, w));
                top1 += usize::from(argmax(row) == argmax(w));
            }
            let share = top1 as f32 / rows.len() as f32;
            let (tol0, tol, min_top1) = match scheme {
                ActScheme::Float => (1e-5, 1e-5, 1.0),
                _ => (1e-3, 5e-2, 0.9),
            };
            assert!(r0 <= tol0, "{stem} {src} {name}: position 0 rel {r0}");
            assert!(worst <= tol, "{stem} {src} {name}: rel {worst}");
            assert!(share >= min_top1, "{stem} {src} {name}: top1 {share}");
            let want_greedy: Vec<u32> =
                g.meta["greedy"][name][src].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(greedy, want_greedy, "{stem} {src} {name}: greedy");
        }
    }

    #[test]
    fn b158_i2s_matches_float_i8tok_and_q8k_references() {
        check("bitnet-b1.58-i2_s", ActScheme::Float, "ref_float");
        check("bitnet-b1.58-i2_s", ActScheme::I8Tok, "ref_i8tok");
        check("bitnet-b1.58-i2_s", ActScheme::Q8K, "ref_q8k");
    }

    #[test]
    fn bitnet_tq2_matches_float_i8tok_and_q8k_references() {
        check("bitnet-tq2_0", ActScheme::Float, "ref_float");
        check("bitnet-tq2_0", ActScheme::I8Tok, "ref_i8tok");
        check("bitnet-tq2_0", ActScheme::Q8K, "ref_q8k");
    }

    #[test]
    fn i2s_and_tq2_files_of_the_same_weights_give_the_same_logits_per_scheme() {
        let i2 = |s| Model::load(&fixture("bitnet-b1.58-i2_s.gguf"), Some(s)).unwrap();
        let tq = |s| Model::load(&fixture("bitnet-b1.58-tq2_0.gguf"), Some(s)).unwrap();
        let prompt = [366u32, 72, 101, 108, 108, 111];
        for scheme in [ActScheme::Float, ActScheme::I8Tok, ActScheme::Q8K] {
            let (a, b) = (i2(scheme), tq(scheme));
            let (mut ca, mut cb) = (a.new_cache(16), b.new_cache(16));
            for &t in &prompt {
                let (la, lb) = (a.forward(t, &mut ca), b.forward(t, &mut cb));
                assert!(rel(&la, &lb) < 1e-6, "{scheme:?}: {}", rel(&la, &lb));
            }
        }
        // The packed I2_S fast path gives the decoded path's numbers, bit for bit.
        let packed = Model::load(&fixture("bitnet-b1.58-i2_s.gguf"), None).unwrap();
        for l in &packed.layers {
            let Linear::I2S { bytes, rows, cols, scale, grouped } = &l.w_down else { panic!("not packed") };
            assert_eq!(*grouped, weights::regroups_i2s(*cols), "I2_S layout");
            assert!(bytes.is_in_arena(), "I2_S read into the arena");
            let mut raw = if *grouped {
                crate::kernels::i2s_file_rows(bytes.bytes(), *rows, *cols / 256)
            } else {
                bytes.bytes().to_vec()
            };
            raw.extend(scale.to_le_bytes());
            let decoded = quant::decode_i2s(&raw, *rows, *cols).unwrap();
            let mut rng = crate::sampler::Rng::new(5);
            let x: Vec<f32> = (0..*cols).map(|_| rng.next_f32() - 0.5).collect();
            let (mut y1, mut y2) = (vec![0f32; *rows], vec![0f32; *rows]);
            l.w_down.matvec(&x, ActScheme::I8Tok, &mut y1);
            decoded.matvec(&x, ActScheme::I8Tok, &mut y2);
            assert_eq!(y1, y2);
        }
    }

    #[test]
    fn a_batched_prompt_gives_the_same_logits_and_cache_as_token_by_token() {
        for stem in ["bitnet-b1.58-i2_s", "bitnet-tq2_0", "bitnet-tq1_0"] {
            let m = Model::load(&fixture(&format!("{stem}.gguf")), None).unwrap();
            // Tails of the 4-token kernel included: 1, 3, 6 and 9 tokens.
            let prompt: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % m.hp.n_vocab as u32).collect();
            for split in [1usize, 3, 6, 9] {
                let mut seq = m.new_cache(32);
                let mut want = Vec::new();
                for &t in &prompt {
                    want = m.forward(t, &mut seq);
                }
                let mut bat = m.new_cache(32);
                let mut got = Vec::new();
                for chunk in prompt.chunks(split) {
                    got = m.forward_batch(chunk, &mut bat);
                }
                assert_eq!(got, want, "{stem} in batches of {split}");
                assert_eq!(bat.len, seq.len);
                assert!(bat == seq, "{stem}: keys and values differ");
            }
        }
    }

    #[test]
    fn attention_tasks_group_heads_while_every_thread_stays_busy() {
        // 2B4T: 20 query heads in groups of 4.
        assert_eq!(heads_per_attention_task(20, 4, 2), 4);
        assert_eq!(heads_per_attention_task(20, 4, 1), 4);
        assert_eq!(heads_per_attention_task(20, 4, 8), 2);
        assert_eq!(heads_per_attention_task(20, 4, 16), 1);
        assert_eq!(heads_per_attention_task(128 * 20, 4, 16), 4);
        // Groups of 3 never split into 2.
        assert_eq!(heads_per_attention_task(12, 3, 5), 1);
        assert_eq!(heads_per_attention_task(12, 3, 2), 3);
        assert_eq!(heads_per_attention_task(8, 1, 4), 1);
    }

    /// Every (row, query head) of a step is in exactly one task, a task's
    /// heads share a kv head and its tokens a segment, no task is over
    /// `MAX_ATTENTION_ROWS`, the heaviest go first, and there are enough
    /// for the threads: decoding several streams, a cached turn, a prompt.
    #[test]
    fn attention_tasks_cover_every_row_once_and_keep_the_threads_busy() {
        let (n_head, group) = (20, 4);
        // (tokens, cached positions) per segment, threads, tasks expected.
        type Case = (&'static [(usize, usize)], usize, usize);
        let cases: [Case; 5] = [
            (&[(1, 500)], 2, 5),
            (&[(1, 3), (1, 40), (1, 7), (1, 900)], 2, 20),
            (&[(20, 1000)], 2, 10),
            (&[(20, 1000)], 1, 10),
            (&[(128, 0), (1, 60)], 2, 45),
        ];
        for (shape, threads, want_tasks) in cases {
            let mut segs = Vec::new();
            let mut first = 0;
            for &(tokens, cached) in shape {
                segs.push(SegmentRows { first, tokens, cached });
                first += tokens;
            }
            let tasks = attention_tasks(&segs, n_head, group, threads);
            assert_eq!(tasks.len(), want_tasks, "{shape:?} on {threads} threads: {tasks:?}");
            let mut seen = vec![0u8; first * n_head];
            for t in &tasks {
                let s = &segs[t.seg];
                assert!(t.first_row >= s.first && t.first_row + t.tokens <= s.first + s.tokens, "{t:?}");
                assert_eq!(t.head / group, (t.head + t.heads - 1) / group, "{t:?} spans kv heads");
                assert!(t.tokens * t.heads <= MAX_ATTENTION_ROWS, "{t:?}");
                for row in t.first_row..t.first_row + t.tokens {
                    for h in t.head..t.head + t.heads {
                        seen[row * n_head + h] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|c| *c == 1), "{shape:?}: rows covered {seen:?}");
            assert!(tasks.windows(2).all(|w| w[0].work >= w[1].work), "{shape:?}: not heaviest first");
            assert!(tasks.len() >= threads, "{shape:?}: {} tasks for {threads} threads", tasks.len());
        }
    }

    #[test]
    fn each_format_picks_its_references_scheme_and_tq1_equals_tq2() {
        let i2 = Model::load(&fixture("bitnet-b1.58-i2_s.gguf"), None).unwrap();
        assert_eq!((i2.scheme, i2.format.as_str(), i2.hp.act), (ActScheme::I8Tok, "i2_s", Gate::Relu2));
        let tq2 = Model::load(&fixture("bitnet-tq2_0.gguf"), None).unwrap();
        assert_eq!((tq2.scheme, tq2.hp.act), (ActScheme::Q8K, Gate::Silu));
        let layers = |m: &Model| m.bytes_per_token() - m.output.as_ref().unwrap_or(&m.token_embd).bytes_read();
        for layout in [Tq1Layout::Unpacked, Tq1Layout::Packed] {
            let tq1 = Model::load_with(&fixture("bitnet-tq1_0.gguf"), None, layout).unwrap();
            assert_eq!((tq1.scheme, tq1.format.as_str()), (ActScheme::Q8K, "tq1_0"));
            let mut c1 = tq1.new_cache(8);
            let mut c2 = tq2.new_cache(8);
            for t in [366u32, 72, 101] {
                assert_eq!(tq1.forward(t, &mut c1), tq2.forward(t, &mut c2), "{layout:?}");
            }
            // A prompt through the batched path too.
            let prompt = [5, 9, 300, 2, 77];
            assert_eq!(tq1.forward_batch(&prompt, &mut c1), tq2.forward_batch(&prompt, &mut c2), "{layout:?}");
            // Unpacked: TQ2_0's 66 bytes per 256 weights; packed: 54.
            let want = match layout {
                Tq1Layout::Unpacked => layers(&tq2),
                Tq1Layout::Packed => layers(&tq2) / 66 * 54,
            };
            assert_eq!(layers(&tq1), want, "{layout:?}");
            assert_eq!(tq1.file_bytes_per_token(), tq2.bytes_per_token() - layers(&tq2) / 66 * 12);
            assert_eq!(tq1.weights_format(), if layout == Tq1Layout::Packed { "tq1_0" } else { "tq2_0" });
        }
    }

    /// The fixture with its (tied) embedding / output matrix re-encoded as
    /// `ty`, and the same quantized values decoded to F32 (`decoded`).
    fn with_vocab_matrix(ty: TensorType, decoded: bool) -> Vec<u8> {
        let path = fixture("bitnet-b1.58-i2_s.gguf");
        let g = Gguf::open(&path).unwrap();
        let file = std::fs::read(&path).unwrap();
        let tensors: Vec<crate::writer::TensorData> = g
            .tensors
            .iter()
            .map(|t| {
                let start = (g.data_offset + t.offset) as usize;
                let data = &file[start..start + t.size.unwrap() as usize];
                let (ty, data) = match t.name.as_str() {
                    "token_embd.weight" => {
                        let n = t.elements() as usize;
                        let v = quant::decode_float(t.ty, data, n).unwrap();
                        let q = match ty {
                            TensorType::Q8_0 => crate::writer::q8_0_bytes(&v),
                            _ => crate::writer::q6k_bytes(&v),
                        };
                        match decoded {
                            false => (ty.id(), q),
                            true => (
                                0,
                                quant::decode_float(ty, &q, n).unwrap().iter().flat_map(|f| f.to_le_bytes()).collect(),
                            ),
                        }
                    }
                    _ => (t.ty.id(), data.to_vec()),
                };
                crate::writer::TensorData { name: t.name.clone(), dims: t.dims.clone(), ty, data }
            })
            .collect();
        let meta: Vec<(&str, Value)> = g.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        crate::writer::gguf_bytes(&meta, &tensors)
    }

    #[test]
    fn q8_0_and_q6_k_vocab_matrices_are_used_in_place_and_match_their_decoded_values() {
        let dir = std::env::temp_dir().join(format!("bitnet-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (ty, bytes_per_value) in [(TensorType::Q8_0, 34.0 / 32.0), (TensorType::Q6K, 210.0 / 256.0)] {
            let load = |decoded: bool| {
                let path = dir.join(format!("{}-{decoded}.gguf", ty.name()));
                std::fs::write(&path, with_vocab_matrix(ty, decoded)).unwrap();
                Model::load(&path, None).unwrap()
            };
            let (m, reference) = (load(false), load(true));
            let in_place = match &m.token_embd {
                VocabMatrix::Q8_0(_) => ty == TensorType::Q8_0,
                VocabMatrix::Q6K(_) => ty == TensorType::Q6K && !weights::permutes_q6k(),
                VocabMatrix::Q6KPermuted(_) => ty == TensorType::Q6K && weights::permutes_q6k(),
                _ => false,
            };
            assert!(in_place, "{ty:?} kept in its file format");
            let n = (m.hp.n_vocab * m.hp.n_embd) as f64;
            assert_eq!(m.token_embd.bytes_read() as f64, n * bytes_per_value, "{ty:?} reads its own bytes per token");
            // Embedding rows decode to the same values, so the layers see the
            // same numbers; the logits differ only by the int8 activations of
            // the output product (llama.cpp's way), a fraction of a percent.
            let (mut c1, mut c2) = (reference.new_cache(16), m.new_cache(16));
            for t in [366u32, 72, 101, 5, 900] {
                let (want, got) = (reference.forward(t, &mut c1), m.forward(t, &mut c2));
                assert_eq!(c1.keys(0), c2.keys(0), "{ty:?}: the same embeddings went in");
                let r = rel(&got, &want);
                assert!(r < 1e-2, "{ty:?}: relative error {r} at token {t}");
                assert!(r > 0.0, "{ty:?}: the quantized product ran");
            }
            assert_matmul_is_matvec_per_vector(&m, &ty.name());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
