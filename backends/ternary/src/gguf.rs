//! GGUF: header, metadata and tensor table, read with hard limits so that a
//! corrupt or hostile file is a typed error, never a huge allocation or a
//! panic. Tensor data is not read here; every tensor's byte range is checked
//! against the file's length.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Limits: far above any real model, far below what would exhaust memory.
const MAX_STRING: u64 = 16 << 20;
const MAX_ARRAY: u64 = 1 << 24;
const MAX_KV: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
/// Memory the decoded metadata may take (values as held, strings' bytes): a
/// real model's vocabulary takes tens of MB, while a header of one huge
/// array of bytes would otherwise cost 32x its size.
const MAX_DECODED: u64 = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    File(#[from] bitnet_safefs::SafeFsError),
    #[error("not a GGUF file (it does not start with `GGUF`)")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("the file ends inside its header (at byte {0})")]
    Truncated(u64),
    #[error("{what} of {n} at byte {at} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, n: u64, at: u64, limit: u64 },
    #[error("metadata value type {0} is unknown")]
    ValueType(u32),
    #[error("the string at byte {0} is not valid UTF-8")]
    Utf8(u64),
    #[error("tensor `{name}`: {problem}")]
    Tensor { name: String, problem: String },
    #[error("metadata `{key}`: {problem}")]
    Metadata { key: String, problem: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Tensor element types this project knows the size of. Ids 34-36 follow
/// llama.cpp (34, 35) and bitnet.cpp (36); see [`TensorType::from_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's 2-bit ternary: n/4 bytes + a 32-byte scale block.
    I2S,
    /// Any other id: loadable by someone, sized by no one here.
    Other(u32),
}

impl TensorType {
    pub fn from_id(id: u32) -> Self {
        use TensorType::*;
        match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            // 36 is I2_S in bitnet.cpp's fork; upstream reuses ids from 36
            // (IQ4_NL_4_4 once, later others). A tensor of type 36 is taken
            // as I2_S only when its byte size says so (checked in parse).
            36 => I2S,
            other => Other(other),
        }
    }

    /// The GGUF type id (`from_id`'s inverse).
    pub fn id(self) -> u32 {
        use TensorType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            I2S => 36,
            Other(id) => id,
        }
    }

    /// Lower-case name, as the catalog's `formats` spell it.
    pub fn name(self) -> String {
        use TensorType::*;
        match self {
            F32 => "f32".into(),
            F16 => "f16".into(),
            Q4_0 => "q4_0".into(),
            Q4_1 => "q4_1".into(),
            Q5_0 => "q5_0".into(),
            Q5_1 => "q5_1".into(),
            Q8_0 => "q8_0".into(),
            Q8_1 => "q8_1".into(),
            Q2K => "q2_k".into(),
            Q3K => "q3_k".into(),
            Q4K => "q4_k".into(),
            Q5K => "q5_k".into(),
            Q6K => "q6_k".into(),
            Q8K => "q8_k".into(),
            I8 => "i8".into(),
            I16 => "i16".into(),
            I32 => "i32".into(),
            I64 => "i64".into(),
            F64 => "f64".into(),
            BF16 => "bf16".into(),
            TQ1_0 => "tq1_0".into(),
            TQ2_0 => "tq2_0".into(),
            I2S => "i2_s".into(),
            Other(id) => format!("type{id}"),
        }
    }

    /// (bytes per block, elements per block), for the block-quantized and
    /// plain types.
    fn block(self) -> Option<(u64, u64)> {
        use TensorType::*;
        Some(match self {
            F32 | I32 => (4, 1),
            F16 | BF16 | I16 => (2, 1),
            I8 => (1, 1),
            I64 | F64 => (8, 1),
            Q4_0 => (18, 32),
            Q4_1 => (20, 32),
            Q5_0 => (22, 32),
            Q5_1 => (24, 32),
            Q8_0 => (34, 32),
            Q8_1 => (36, 32),
            Q2K => (84, 256),
            Q3K => (110, 256),
            Q4K => (144, 256),
            Q5K => (176, 256),
            Q6K => (210, 256),
            Q8K => (292, 256),
            TQ1_0 => (54, 256),
            TQ2_0 => (66, 256),
            I2S | Other(_) => return None,
        })
    }

    /// Bytes of a tensor with `n` elements, when known (None too when `n`
    /// is not whole blocks, or the size does not fit in a u64).
    pub fn bytes(self, n: u64) -> Option<u64> {
        if self == TensorType::I2S {
            return Some(n / 4 + 32);
        }
        let (bytes, per) = self.block()?;
        if !n.is_multiple_of(per) {
            return None;
        }
        (n / per).checked_mul(bytes)
    }

    /// Whether weights of this type are ternary.
    pub fn is_ternary(self) -> bool {
        matches!(self, TensorType::TQ1_0 | TensorType::TQ2_0 | TensorType::I2S)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ne0 first (contiguous).
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes, when the type's size is known.
    pub size: Option<u64>,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    pub alignment: u64,
    pub file_len: u64,
}

struct Reader<R> {
    inner: R,
    pos: u64,
    /// What decoding may still allocate (see MAX_DECODED).
    budget: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|_| GgufError::Truncated(self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn len(&mut self, what: &'static str, limit: u64) -> Result<u64, GgufError> {
        let at = self.pos;
        let n = self.u64()?;
        if n > limit {
            return Err(GgufError::TooLarge { what, n, at, limit });
        }
        Ok(n)
    }
    /// Takes `bytes` of the decoding budget.
    fn spend(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.budget = self.budget.checked_sub(bytes).ok_or(GgufError::TooLarge {
            what: "decoded metadata",
            n: MAX_DECODED + bytes,
            at: self.pos,
            limit: MAX_DECODED,
        })?;
        Ok(())
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let at = self.pos;
        let n = self.len("string length", MAX_STRING)?;
        self.spend(n)?;
        let mut buf = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut buf).map_err(|_| GgufError::Truncated(self.pos))?;
        if buf.len() as u64 != n {
            return Err(GgufError::Truncated(self.pos + buf.len() as u64));
        }
        self.pos += n;
        String::from_utf8(buf).map_err(|_| GgufError::Utf8(at))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        self.spend(std::mem::size_of::<Value>() as u64)?;
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 if depth == 0 => {
                let inner = self.u32()?;
                let n = self.len("array length", MAX_ARRAY)?;
                // Grow as elements really arrive: a lying length costs a
                // Truncated error, not memory.
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(GgufError::ValueType(other)),
        })
    }
}

impl Gguf {
    /// Parse the header of the file at `path` and check every tensor lies
    /// inside it.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = bitnet_safefs::open_regular(path)?;
        let io = |source| GgufError::Io { path: path.display().to_string(), source };
        let len = file.metadata().map_err(io)?.len();
        Self::parse(BufReader::with_capacity(1 << 16, file), len)
    }

    /// Parse from a reader positioned at the start of a file of `file_len` bytes.
    pub fn parse<R: Read>(inner: R, file_len: u64) -> Result<Self, GgufError> {
        let mut r = Reader { inner, pos: 0, budget: MAX_DECODED };
        let magic = r.bytes::<4>()?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.len("tensor count", MAX_TENSORS)?;
        let n_kv = r.len("metadata count", MAX_KV)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Metadata {
                        key: "general.alignment".into(),
                        problem: "must be a power of two".into(),
                    })
                }
            },
        };
        let arch = metadata.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()?;
            let bad = |problem: String| GgufError::Tensor { name: name.clone(), problem };
            if nd == 0 || nd > MAX_DIMS {
                return Err(bad(format!("{nd} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(r.u64()?);
            }
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            let n = dims
                .iter()
                .try_fold(1u64, |a, d| a.checked_mul(*d))
                .ok_or_else(|| bad("element count overflows".into()))?;
            let mut ty = TensorType::from_id(ty_id);
            if ty == TensorType::I2S && !arch.starts_with("bitnet") {
                // Upstream's meaning of 36, not bitnet.cpp's.
                ty = TensorType::Other(ty_id);
            }
            if offset % alignment != 0 {
                return Err(bad(format!("offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let size = ty.bytes(n);
            if let (None, Some((_, per))) = (size, ty.block()) {
                return Err(bad(if n.is_multiple_of(per) {
                    format!("{n} elements of {} is more bytes than a file can hold", ty.name())
                } else {
                    format!("{n} elements is not a whole number of {} blocks", ty.name())
                }));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let data_len = file_len.saturating_sub(data_offset);
        // Check ranges in file order: each must end before the next begins
        // (this is how a type-36 tensor that is not I2_S shows itself).
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for (k, &i) in order.iter().enumerate() {
            let t = &tensors[i];
            let next = order.get(k + 1).map(|&j| tensors[j].offset).unwrap_or(data_len);
            if let Some(size) = t.size {
                let end = t.offset.saturating_add(size);
                if end > data_len {
                    return Err(GgufError::Tensor {
                        name: t.name.clone(),
                        problem: format!(
                            "needs bytes {}..{} of the data section but the file has {data_len} (truncated download?)",
                            t.offset, end
                        ),
                    });
                }
                if end > next {
                    return Err(GgufError::Tensor {
                        name: t.name.clone(),
                        problem: format!("its {} bytes overlap the next tensor at {next}", size),
                    });
                }
            } else if t.offset > data_len {
                return Err(GgufError::Tensor {
                    name: t.name.clone(),
                    problem: "starts past the end of the file".into(),
                });
            }
        }
        Ok(Gguf { version, metadata, tensors, data_offset, alignment, file_len })
    }

    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get("general.architecture").and_then(Value::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The model's weight format: the type of most 2-D weights other than
    /// the embeddings and output matrix (which are often kept at higher
    /// precision), lower case. None for a file with no such tensor (e.g. a
    /// vocabulary-only file).
    pub fn weight_format(&self) -> Option<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in &self.tensors {
            if t.dims.len() == 2 && t.name.starts_with("blk.") {
                *counts.entry(t.ty.name()).or_default() += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_safefs::SafeFsError;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
    }

    #[test]
    fn the_fixture_models_parse_with_their_formats() {
        for (file, arch, format) in [
            ("bitnet-tq2_0.gguf", "bitnet", "tq2_0"),
            ("bitnet-tq1_0.gguf", "bitnet", "tq1_0"),
            ("bitnet-b1.58-i2_s.gguf", "bitnet-b1.58", "i2_s"),
        ] {
            let g = Gguf::open(&fixture(file)).unwrap();
            assert_eq!(g.version, 3);
            assert_eq!(g.architecture(), Some(arch));
            assert_eq!(g.weight_format().as_deref(), Some(format), "{file}");
            assert_eq!(g.get(&format!("{arch}.embedding_length")).and_then(Value::as_u64), Some(256));
            let emb = g.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap();
            assert_eq!(emb.ty, TensorType::F16);
            assert_eq!(emb.dims, vec![256, 384]);
            let toks = g.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
            assert_eq!(toks.len(), 384);
            // The last tensor ends at (or just before, by padding) the end of the file.
            let last = g.tensors.iter().max_by_key(|t| t.offset).unwrap();
            assert!(g.data_offset + last.offset + last.size.unwrap() <= g.file_len);
        }
    }

    #[test]
    fn only_regular_files_are_opened_and_never_block() {
        let dir = std::env::temp_dir().join(format!("gguf-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Gguf::open(&dir).unwrap_err();
        assert!(matches!(e, GgufError::File(SafeFsError::NotAFile { kind: "a folder", .. })), "{e}");
        #[cfg(unix)]
        {
            // A FIFO with no writer would block open(2) forever.
            let fifo = dir.join("model.gguf");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = Gguf::open(&fifo).unwrap_err();
            assert!(matches!(e, GgufError::File(SafeFsError::NotAFile { kind: "a FIFO", .. })), "{e}");
            // A symlink to a device: followed, and refused.
            let link = dir.join("zero.gguf");
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            let e = Gguf::open(&link).unwrap_err();
            assert!(matches!(e, GgufError::File(SafeFsError::NotAFile { kind: "a device", .. })), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_header_of_one_huge_array_is_refused_before_it_costs_its_size_many_times() {
        // 16 Mi one-byte elements: 16 MiB of file, 512 MiB as values.
        let n: u64 = 16 << 20;
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"junk");
        b.extend_from_slice(&9u32.to_le_bytes()); // array
        b.extend_from_slice(&0u32.to_le_bytes()); // of u8
        b.extend_from_slice(&n.to_le_bytes());
        b.resize(b.len() + n as usize, 7);
        let e = Gguf::parse(&b[..], b.len() as u64).unwrap_err();
        assert!(matches!(e, GgufError::TooLarge { what: "decoded metadata", .. }), "{e}");
        // Its message names the problem, not the file's bytes.
        assert!(!e.to_string().contains('\u{7}'));
        let e = Gguf::parse(&b"\x7fELF\x02\x01\x01\0"[..], 8).unwrap_err();
        assert_eq!(e.to_string(), "not a GGUF file (it does not start with `GGUF`)");
    }

    #[test]
    fn inputs_the_fuzzer_found_are_typed_errors() {
        // Each file in fixtures/fuzz/ broke the reader once, e.g.
        // tensor-size-overflow.gguf: a tensor whose byte size overflows u64
        // (it wrapped to a small size in release builds and passed the
        // range check).
        let mut n = 0;
        for entry in std::fs::read_dir(fixture("fuzz")).unwrap() {
            let path = entry.unwrap().path();
            let b = std::fs::read(&path).unwrap();
            let e = Gguf::parse(&b[..], b.len() as u64).unwrap_err();
            assert!(matches!(e, GgufError::Tensor { .. }), "{}: {e}", path.display());
            n += 1;
        }
        assert!(n >= 1);
    }

    #[test]
    fn corrupt_files_are_typed_errors() {
        let good = std::fs::read(fixture("bitnet-tq2_0.gguf")).unwrap();
        let parse = |b: &[u8]| Gguf::parse(b, b.len() as u64);

        assert!(matches!(parse(b"GGML\x03\0\0\0"), Err(GgufError::BadMagic(_))));
        let mut v = good.clone();
        v[4] = 9;
        assert!(matches!(parse(&v), Err(GgufError::Version(9))));
        // Cut inside the header.
        assert!(matches!(parse(&good[..1000]), Err(GgufError::Truncated(_))));
        // Cut inside the tensor data: a truncated download.
        let e = parse(&good[..good.len() - 5000]).unwrap_err();
        assert!(e.to_string().contains("truncated download"), "{e}");
        // A huge declared kv count.
        let mut v = good.clone();
        v[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&v), Err(GgufError::TooLarge { what: "metadata count", .. })));
        // A huge string length in the first key.
        let mut v = good.clone();
        v[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&v), Err(GgufError::TooLarge { what: "string length", .. })));
        // Empty file.
        assert!(matches!(parse(&[]), Err(GgufError::Truncated(0))));
    }

    #[test]
    fn every_prefix_of_a_header_fails_cleanly() {
        let good = std::fs::read(fixture("bitnet-b1.58-i2_s.gguf")).unwrap();
        let g = Gguf::parse(&good[..], good.len() as u64).unwrap();
        // Every cut inside the header (sampled) is an error, never a panic.
        for cut in 0..g.data_offset as usize {
            assert!(Gguf::parse(&good[..cut], cut as u64).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn alignment_and_type_problems_are_typed_errors() {
        use crate::writer::{gguf_bytes, TensorData};
        let t = |ty: u32, bytes: usize| TensorData { name: "w".into(), dims: vec![256], ty, data: vec![0; bytes] };
        let parse = |b: Vec<u8>| Gguf::parse(&b[..], b.len() as u64);
        // A non-power-of-two alignment.
        let bad = gguf_bytes(&[("general.alignment", Value::U32(3))], &[t(0, 1024)]);
        assert!(matches!(parse(bad), Err(GgufError::Metadata { .. })));
        // A tensor offset that is not aligned: patch the written offset.
        let mut b = gguf_bytes(&[], &[t(0, 1024)]);
        let at = b.windows(8).position(|w| w == 0u64.to_le_bytes()).unwrap();
        let header = b"GGUF".len() + 4 + 8 + 8; // magic, version, counts
        let off_pos = header + 8 + 1 + 4 + 8 + 4; // name len + "w" + n_dims + dim + type
        assert!(at <= off_pos);
        b[off_pos..off_pos + 8].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(parse(b), Err(GgufError::Tensor { .. })));
        // Zero or five dimensions.
        let mut z = t(0, 1024);
        z.dims = vec![];
        assert!(matches!(parse(gguf_bytes(&[], &[z])), Err(GgufError::Tensor { .. })));
        let mut five = t(0, 1024);
        five.dims = vec![1, 1, 1, 1, 256];
        assert!(matches!(parse(gguf_bytes(&[], &[five])), Err(GgufError::Tensor { .. })));
        // An unknown type id parses (someone may load it) but has no size...
        let g = parse(gguf_bytes(&[], &[t(99, 64)])).unwrap();
        assert_eq!(g.tensors[0].ty, TensorType::Other(99));
        assert_eq!(g.tensors[0].size, None);
        // ...and an unknown metadata value type is an error.
        let mut b = gguf_bytes(&[("k", Value::U8(1))], &[]);
        let ty_pos = 24 + 8 + 1;
        b[ty_pos..ty_pos + 4].copy_from_slice(&77u32.to_le_bytes());
        assert!(matches!(parse(b), Err(GgufError::ValueType(77))));
        // A tensor that overlaps the next one.
        let mut b = gguf_bytes(
            &[],
            &[t(0, 1024), TensorData { name: "x".into(), dims: vec![256], ty: 0, data: vec![0; 1024] }],
        );
        let second_off = b.windows(8).rposition(|w| w == 1024u64.to_le_bytes()).unwrap();
        b[second_off..second_off + 8].copy_from_slice(&512u64.to_le_bytes());
        assert!(parse(b).unwrap_err().to_string().contains("overlap"));
    }

    #[test]
    fn sizes_of_the_ternary_types() {
        assert_eq!(TensorType::TQ2_0.bytes(256 * 3), Some(66 * 3));
        assert_eq!(TensorType::TQ1_0.bytes(512), Some(108));
        assert_eq!(TensorType::I2S.bytes(256 * 512), Some(256 * 512 / 4 + 32));
        assert_eq!(TensorType::Q8_0.bytes(33), None);
        assert!(TensorType::I2S.is_ternary() && !TensorType::F16.is_ternary());
        assert_eq!(TensorType::from_id(39).name(), "type39");
    }
}
