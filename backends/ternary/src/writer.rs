//! Writing GGUF files, and generating BitNet models of any shape with random
//! ternary weights from a seed: the host's default model (so the machinery
//! can be tried before a real model is downloaded), and the test and
//! benchmark models.

use half::f16;

use crate::gguf::Value;
use crate::sampler::Rng;

/// A tensor to write: name, dims (ne0 first), GGUF type id, bytes.
pub struct TensorData {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => {
            // An empty array's element type is irrelevant; say string.
            out.extend(a.first().map(value_type).unwrap_or(8).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// Serialize a GGUF v3 file (alignment 32).
pub fn gguf_bytes(metadata: &[(&str, Value)], tensors: &[TensorData]) -> Vec<u8> {
    const ALIGN: usize = 32;
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(value_type(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    let base = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(base + off, 0);
        out.extend(&t.data);
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    out
}

/// The shape of a generated model.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    pub rope_base: f32,
    /// Vocabulary size: the byte-level tokens and specials, padded with
    /// reserved control tokens up to this (None: no padding).
    pub n_vocab: Option<usize>,
}

impl Shape {
    /// The built-in default: small and quick, BitNet b1.58 2B4T's graph.
    pub fn default_model() -> Self {
        Shape {
            arch: "bitnet-b1.58".into(),
            n_embd: 256,
            n_layer: 4,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 768,
            n_ctx: 2048,
            rope_base: 500000.0,
            n_vocab: None,
        }
    }

    /// BitNet b1.58 2B4T's shape (for benchmarks).
    pub fn b158_2b4t() -> Self {
        Shape {
            arch: "bitnet-b1.58".into(),
            n_embd: 2560,
            n_layer: 30,
            n_head: 20,
            n_head_kv: 5,
            n_ff: 6912,
            n_ctx: 4096,
            rope_base: 500000.0,
            n_vocab: Some(128256),
        }
    }
}

/// Special tokens after the 256 byte tokens.
const SPECIALS: &[&str] =
    &["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"];

/// I2_S bytes of a ternary matrix (codes row-major, -1/0/+1) with one scale.
/// Q8_0 blocks of `values` (llama.cpp's reference quantizer): per 32, d =
/// amax/127 stored f16, q = round(x / d).
pub fn q8_0_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for b in values.chunks(32) {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q6_K blocks of `values` (a simple quantizer, not llama.cpp's search):
/// per 16 values a scale amax/31 quantized to int8 against the block's
/// largest, values to 0..=63 around 32.
pub fn q6k_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 256 * 210);
    for b in values.chunks(256) {
        let sub: Vec<f32> = b.chunks(16).map(|s| s.iter().fold(0f32, |a, v| a.max(v.abs())) / 31.0).collect();
        let max = sub.iter().fold(0f32, |a, &v| a.max(v));
        let d = half::f16::from_f32(max / 127.0).to_f32();
        let scales: Vec<i8> = sub.iter().map(|&s| if d > 0.0 { (s / d).round().min(127.0) as i8 } else { 0 }).collect();
        let mut q = [0u8; 256];
        for (e, &v) in b.iter().enumerate() {
            let step = d * f32::from(scales[e / 16]);
            let w = if step > 0.0 { (v / step).round() } else { 0.0 };
            q[e] = (w.clamp(-32.0, 31.0) + 32.0) as u8;
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for half in 0..2 {
            for l in 0..32 {
                let e = |part: usize| q[half * 128 + part * 32 + l];
                ql[half * 64 + l] = (e(0) & 0xF) | ((e(2) & 0xF) << 4);
                ql[half * 64 + 32 + l] = (e(1) & 0xF) | ((e(3) & 0xF) << 4);
                qh[half * 32 + l] = (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
            }
        }
        out.extend(ql);
        out.extend(qh);
        out.extend(scales.iter().map(|&s| s as u8));
        out.extend(half::f16::from_f32(d).to_le_bytes());
    }
    out
}

pub fn i2s_bytes(codes: &[i8], scale: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(codes.len() / 4 + 32);
    for block in codes.chunks(128) {
        for j in 0..32 {
            let e = |k: usize| ((block[k * 32 + j] + 1) as u8) & 3;
            out.push(e(0) << 6 | e(1) << 4 | e(2) << 2 | e(3));
        }
    }
    out.extend(scale.to_le_bytes());
    out.extend([0u8; 28]);
    out
}

/// TQ2_0 bytes of a ternary matrix (llama.cpp's layout: per 256 weights,
/// 64 bytes of 2-bit codes, element 4j + 32l + m at bits 2l of byte j + m
/// of group j, then the f16 scale).
pub fn tq2_bytes(codes: &[i8], scale: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(codes.len() / 256 * 66);
    for block in codes.chunks(256) {
        for j in [0usize, 32] {
            for m in 0..32 {
                let e = |l: usize| ((block[j * 4 + l * 32 + m] + 1) as u8) & 3;
                out.push(e(0) | e(1) << 2 | e(2) << 4 | e(3) << 6);
            }
        }
        out.extend(f16::from_f32(scale).to_le_bytes());
    }
    out
}

/// TQ1_0 blocks (llama.cpp's layout, see `kernels::tq1_block_dots_scalar`)
/// of `codes` (-1..1) with one `scale`: base-3 digits, most significant
/// first, scaled so that ((b * 3^n mod 256) * 3) >> 8 reads digit n back.
pub fn tq1_bytes(codes: &[i8], scale: f32) -> Vec<u8> {
    let pack = |digits: &mut dyn Iterator<Item = i8>| -> u8 {
        let v = digits.fold(0u16, |v, c| v * 3 + (c + 1) as u16);
        (v * 256).div_ceil(243) as u8
    };
    let mut out = Vec::with_capacity(codes.len() / 256 * 54);
    for block in codes.chunks(256) {
        out.extend((0..32).map(|m| pack(&mut (0..5).map(|n| block[32 * n + m]))));
        out.extend((0..16).map(|m| pack(&mut (0..5).map(|n| block[160 + 16 * n + m]))));
        // Four digits, the fifth a zero.
        out.extend((0..4).map(|j| pack(&mut (0..4).map(|n| block[240 + 4 * n + j]).chain([-1]))));
        out.extend(f16::from_f32(scale).to_le_bytes());
    }
    out
}

/// How `random_model_as` stores the ternary matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernaryFormat {
    I2S,
    TQ2_0,
    TQ1_0,
    /// The codes times the scale as F16 values (what GPU builds run).
    F16,
}

/// A BitNet model of `shape` with a byte-level vocabulary (256 bytes + the
/// Llama 3 control tokens) and random ternary I2_S weights from `seed`.
pub fn random_model(shape: &Shape, seed: u64) -> Vec<u8> {
    random_model_as(shape, seed, TernaryFormat::I2S)
}

/// The output (vocabulary) matrix of a generated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMatrix {
    /// None in the file: the F16 token embedding serves (as in 2B4T's release).
    Tied,
    /// `output.weight` in Q6_K, as llama.cpp's quantizer writes TQ1_0 / TQ2_0
    /// files (random values of the embedding's amplitude).
    Q6K,
}

/// Same, with the ternary matrices in `format` (the same codes either way).
pub fn random_model_as(shape: &Shape, seed: u64, format: TernaryFormat) -> Vec<u8> {
    random_model_with(shape, seed, format, OutputMatrix::Tied)
}

/// Same, with the output matrix `output`.
pub fn random_model_with(shape: &Shape, seed: u64, format: TernaryFormat, output: OutputMatrix) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let enc = crate::tokenizer::byte_encoder_chars();
    let mut tokens: Vec<Value> = enc.iter().map(|c| Value::Str(c.to_string())).collect();
    tokens.extend(SPECIALS.iter().map(|s| Value::Str(s.to_string())));
    let base = tokens.len();
    let n_vocab = shape.n_vocab.unwrap_or(base).max(base);
    tokens.extend((base..n_vocab).map(|i| Value::Str(format!("<|reserved_{i}|>"))));
    let mut types: Vec<Value> = vec![Value::I32(1); 256];
    types.extend((256..n_vocab).map(|_| Value::I32(3)));
    let a = |k: &str| format!("{}.{k}", shape.arch);
    let keys: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(shape.arch.clone())),
        ("general.name".into(), Value::Str(format!("random ternary {} (seed {seed})", shape.arch))),
        (a("vocab_size"), Value::U32(n_vocab as u32)),
        (a("context_length"), Value::U32(shape.n_ctx as u32)),
        (a("embedding_length"), Value::U32(shape.n_embd as u32)),
        (a("block_count"), Value::U32(shape.n_layer as u32)),
        (a("feed_forward_length"), Value::U32(shape.n_ff as u32)),
        (a("rope.dimension_count"), Value::U32((shape.n_embd / shape.n_head) as u32)),
        (a("attention.head_count"), Value::U32(shape.n_head as u32)),
        (a("attention.head_count_kv"), Value::U32(shape.n_head_kv as u32)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (a("rope.freq_base"), Value::F32(shape.rope_base)),
        // llama.cpp's llama_ftype: MOSTLY_F16 1, MOSTLY_TQ1_0 36, MOSTLY_TQ2_0 37; bitnet.cpp's I2_S files say 40.
        (
            "general.file_type".into(),
            Value::U32(match format {
                TernaryFormat::I2S => 40,
                TernaryFormat::TQ2_0 => 37,
                TernaryFormat::TQ1_0 => 36,
                TernaryFormat::F16 => 1,
            }),
        ),
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str("llama-bpe".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(256)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(257)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ];
    let d = shape.n_embd;
    let kv = shape.n_head_kv * (d / shape.n_head);
    let mut tensors = Vec::new();
    let f16s = |rng: &mut Rng, n: usize, amp: f32| -> Vec<u8> {
        (0..n).flat_map(|_| f16::from_f32((rng.next_f32() * 2.0 - 1.0) * amp).to_le_bytes()).collect()
    };
    tensors.push(TensorData {
        name: "token_embd.weight".into(),
        dims: vec![d as u64, n_vocab as u64],
        ty: 1,
        data: f16s(&mut rng, d * n_vocab, 0.17),
    });
    if output == OutputMatrix::Q6K {
        let values: Vec<f32> = (0..d * n_vocab).map(|_| (rng.next_f32() * 2.0 - 1.0) * 0.17).collect();
        tensors.push(TensorData {
            name: "output.weight".into(),
            dims: vec![d as u64, n_vocab as u64],
            ty: 14,
            data: q6k_bytes(&values),
        });
    }
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect() };
    tensors.push(TensorData { name: "output_norm.weight".into(), dims: vec![d as u64], ty: 0, data: ones(d) });
    let ternary = |rng: &mut Rng, rows: usize, cols: usize| -> Vec<u8> {
        let codes: Vec<i8> = (0..rows * cols).map(|_| (rng.next_u64() % 3) as i8 - 1).collect();
        match format {
            TernaryFormat::I2S => i2s_bytes(&codes, 0.05),
            TernaryFormat::TQ2_0 => tq2_bytes(&codes, 0.05),
            TernaryFormat::TQ1_0 => tq1_bytes(&codes, 0.05),
            TernaryFormat::F16 => {
                codes.iter().flat_map(|&c| f16::from_f32(f32::from(c) * 0.05).to_le_bytes()).collect()
            }
        }
    };
    for l in 0..shape.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        let lin = |name: &str, rows: usize, cols: usize, rng: &mut Rng| TensorData {
            name: n(name),
            dims: vec![cols as u64, rows as u64],
            ty: match format {
                TernaryFormat::I2S => 36,
                TernaryFormat::TQ2_0 => 35,
                TernaryFormat::TQ1_0 => 34,
                TernaryFormat::F16 => 1,
            },
            data: ternary(rng, rows, cols),
        };
        let layer = [
            TensorData { name: n("attn_norm"), dims: vec![d as u64], ty: 0, data: ones(d) },
            lin("attn_q", d, d, &mut rng),
            lin("attn_k", kv, d, &mut rng),
            lin("attn_v", kv, d, &mut rng),
            TensorData { name: n("attn_sub_norm"), dims: vec![d as u64], ty: 0, data: ones(d) },
            lin("attn_output", d, d, &mut rng),
            TensorData { name: n("ffn_norm"), dims: vec![d as u64], ty: 0, data: ones(d) },
            lin("ffn_gate", shape.n_ff, d, &mut rng),
            lin("ffn_up", shape.n_ff, d, &mut rng),
            TensorData { name: n("ffn_sub_norm"), dims: vec![shape.n_ff as u64], ty: 0, data: ones(shape.n_ff) },
            lin("ffn_down", d, shape.n_ff, &mut rng),
        ];
        tensors.extend(layer);
    }
    let meta: Vec<(&str, Value)> = keys.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    gguf_bytes(&meta, &tensors)
}

/// Models are written atomically: a crash never leaves half of one behind.
pub use bitnet_safefs::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Generate, Message};
    use crate::gguf::Gguf;
    use crate::quant::decode_i2s;

    #[test]
    fn tq2_bytes_round_trip_through_the_decoder() {
        let mut rng = Rng::new(5);
        let codes: Vec<i8> = (0..2 * 512).map(|_| (rng.next_u64() % 3) as i8 - 1).collect();
        let t = crate::quant::decode_tq2_0(&tq2_bytes(&codes, 0.25), 2, 512).unwrap();
        assert_eq!(t.codes, codes);
        assert!(t.scales.iter().all(|&s| s == 0.25));
    }

    #[test]
    fn tq1_bytes_round_trip_through_the_decoder() {
        let mut rng = Rng::new(6);
        let codes: Vec<i8> = (0..3 * 512).map(|_| (rng.next_u64() % 3) as i8 - 1).collect();
        let t = crate::quant::decode_tq1_0(&tq1_bytes(&codes, 0.25), 3, 512).unwrap();
        assert_eq!(t.codes, codes);
        assert!(t.scales.iter().all(|&s| s == 0.25));
    }

    #[test]
    fn i2s_bytes_round_trip_through_the_decoder() {
        let mut rng = Rng::new(3);
        let codes: Vec<i8> = (0..256 * 3).map(|_| (rng.next_u64() % 3) as i8 - 1).collect();
        let t = decode_i2s(&i2s_bytes(&codes, 0.25), 3, 256).unwrap();
        assert_eq!(t.codes, codes);
        assert_eq!(t.single_scale(), Some(0.25));
    }

    #[test]
    fn a_q6_k_output_matrix_is_written_loaded_and_used() {
        let shape = Shape::default_model();
        let tied = random_model_as(&shape, 1, TernaryFormat::TQ2_0);
        let q6k = random_model_with(&shape, 1, TernaryFormat::TQ2_0, OutputMatrix::Q6K);
        let dir = std::env::temp_dir().join(format!("bitnet-writer-q6k-{}", std::process::id()));
        let (a, b) = (dir.join("tied.gguf"), dir.join("q6k.gguf"));
        write_atomic(&a, &tied).unwrap();
        write_atomic(&b, &q6k).unwrap();
        let (tied, q6k) = (Engine::load(&a, 64).unwrap(), Engine::load(&b, 64).unwrap());
        assert_eq!((tied.model.output_format(), q6k.model.output_format()), ("f16", "q6_k"));
        // Its own matrix: 210 bytes per 256 values, not the embedding's 512.
        let vocab_bytes = (q6k.model.hp.n_vocab * shape.n_embd) as u64;
        assert_eq!(
            tied.model.bytes_per_token() - q6k.model.bytes_per_token(),
            vocab_bytes * 2 - vocab_bytes / 256 * 210
        );
        let req = Generate {
            prompt: q6k.chat_tokens(&[Message { role: "user".into(), content: "Hi".into() }]),
            max_tokens: 3,
            sampler: Default::default(),
            stop: vec![],
            n_probs: 0,
            cache_prompt: false,
        };
        let (x, y) = (tied.generate(&req, |_, _| true).unwrap(), q6k.generate(&req, |_, _| true).unwrap());
        // Other logits (random matrices apart), so other greedy tokens.
        assert!(x.tokens != y.tokens || x.finish != y.finish, "{:?} {:?}", x.tokens, y.tokens);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_generated_model_is_deterministic_loads_and_chats() {
        let a = random_model(&Shape::default_model(), 1);
        assert_eq!(a, random_model(&Shape::default_model(), 1));
        assert_ne!(a, random_model(&Shape::default_model(), 2));
        let dir = std::env::temp_dir().join(format!("bitnet-writer-{}", std::process::id()));
        let path = dir.join("m.gguf");
        write_atomic(&path, &a).unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.weight_format().as_deref(), Some("i2_s"));
        let e = Engine::load(&path, 512).unwrap();
        assert_eq!(e.model.hp.n_layer, 4);
        let prompt = e.chat_tokens(&[Message { role: "user".into(), content: "Hello".into() }]);
        assert_eq!(e.tokenizer.decode(&prompt, true), "<|begin_of_text|>User: Hello<|eot_id|>Assistant: ");
        let req = Generate {
            prompt,
            max_tokens: 5,
            sampler: Default::default(),
            stop: vec![],
            n_probs: 0,
            cache_prompt: false,
        };
        let o = e.generate(&req, |_, _| true).unwrap();
        assert!(!o.tokens.is_empty() || o.finish == crate::engine::Finish::Stop);
        let _ = std::fs::remove_dir_all(dir);
    }
}
