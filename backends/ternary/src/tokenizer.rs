//! Tokenizers from GGUF metadata: byte-level BPE (`tokenizer.ggml.model =
//! gpt2`, with the llama3 pre-tokenizer; a file without
//! `tokenizer.ggml.pre`, like the official 2B4T one, gets the llama3 rules
//! too) and SentencePiece (`llama`: score-ordered merges, `▁` for spaces,
//! byte fallback).

use std::collections::HashMap;

use crate::gguf::{Gguf, Value};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata `{0}` is missing or malformed")]
    Metadata(String),
    #[error("tokenizer model `{0}` is not supported (gpt2 and llama are)")]
    Model(String),
    #[error("pre-tokenizer `{0}` is not supported")]
    Pre(String),
}

/// llama.cpp's llama3 pre-tokenizer (needs look-ahead: fancy-regex).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GGUF token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bpe,
    Spm,
}

#[derive(Debug)]
pub struct Tokenizer {
    pub kind: Kind,
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    types: Vec<i32>,
    scores: Vec<f32>,
    merges: HashMap<(String, String), usize>,
    split: Option<fancy_regex::Regex>,
    ignore_merges: bool,
    byte_enc: Vec<char>,
    byte_dec: HashMap<char, u8>,
    /// Special tokens (control, user-defined) longest first, for parse_special.
    specials: Vec<(String, u32)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `<|eot_id|>` or the like: the end of a chat turn.
    pub eot: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's byte -> printable char map (a byte-level vocabulary spells byte
/// b as `byte_encoder_chars()[b]`).
pub fn byte_encoder_chars() -> Vec<char> {
    byte_encoder()
}

fn byte_encoder() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(u32::from).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut enc = vec!['\0'; 256];
    for (b, c) in bs.iter().zip(cs) {
        enc[*b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    enc
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, TokenizerError> {
    g.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect())
        .ok_or_else(|| TokenizerError::Metadata(key.into()))
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        let kind = match model {
            "gpt2" => Kind::Bpe,
            "llama" => Kind::Spm,
            other => return Err(TokenizerError::Model(other.into())),
        };
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().map(|x| x as i32).unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
            None => vec![0.0; tokens.len()],
        };
        let mut merges = HashMap::new();
        if kind == Kind::Bpe {
            for (rank, m) in strings(g, "tokenizer.ggml.merges").unwrap_or_default().iter().enumerate() {
                if let Some((a, b)) = m.split_once(' ') {
                    merges.insert((a.to_string(), b.to_string()), rank);
                }
            }
        }
        let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str);
        let (split, ignore_merges) = match (kind, pre) {
            (Kind::Spm, _) => (None, false),
            // No pre-tokenizer named: the 2B4T file; its vocabulary is Llama 3's.
            (Kind::Bpe, None | Some("llama-bpe" | "llama3" | "llama-v3" | "default")) => (Some(LLAMA3_SPLIT), true),
            (Kind::Bpe, Some("gpt2" | "gpt-2")) => (Some(GPT2_SPLIT), false),
            (Kind::Bpe, Some(other)) => return Err(TokenizerError::Pre(other.into())),
        };
        let split = split
            .map(|re| fancy_regex::Regex::new(re).map_err(|e| TokenizerError::Metadata(format!("pre-tokenizer: {e}"))))
            .transpose()?;
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
        let mut specials: Vec<(String, u32)> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
            .map(|(i, _)| (tokens[i].clone(), i as u32))
            .filter(|(s, _)| !s.is_empty())
            .collect();
        specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let eot = ids.get("<|eot_id|>").or(ids.get("<|im_end|>")).or(ids.get("<end_of_turn>")).copied();
        let byte_enc = byte_encoder();
        let byte_dec = byte_enc.iter().enumerate().map(|(b, c)| (*c, b as u8)).collect();
        Ok(Tokenizer {
            kind,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .map(|v| matches!(v, Value::Bool(true)))
                .unwrap_or(kind == Kind::Spm),
            tokens,
            ids,
            types,
            scores,
            merges,
            split,
            ignore_merges,
            byte_enc,
            byte_dec,
            specials,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&TYPE_CONTROL)
    }

    /// Token ids for `text`. `add_special`: BOS when the model wants it.
    /// `parse_special`: special-token text becomes that token.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            let next = if parse_special { self.next_special(rest) } else { None };
            match next {
                Some((at, s, id)) => {
                    self.encode_plain(&rest[..at], &mut out);
                    out.push(id);
                    rest = &rest[at + s.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    fn next_special(&self, text: &str) -> Option<(usize, &str, u32)> {
        self.specials
            .iter()
            .filter_map(|(s, id)| text.find(s.as_str()).map(|at| (at, s.as_str(), *id)))
            .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())))
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        match self.kind {
            Kind::Bpe => {
                let re = self.split.as_ref().expect("BPE has a pre-tokenizer");
                let mut last = 0;
                for m in re.find_iter(text).flatten() {
                    // The regex covers all input; guard anyway.
                    if m.start() > last {
                        self.bpe_word(&text[last..m.start()], out);
                    }
                    self.bpe_word(m.as_str(), out);
                    last = m.end();
                }
                if last < text.len() {
                    self.bpe_word(&text[last..], out);
                }
            }
            Kind::Spm => self.spm(text, out),
        }
    }

    fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        let mapped: String = word.bytes().map(|b| self.byte_enc[b as usize]).collect();
        if self.ignore_merges {
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<String> = mapped.chars().map(String::from).collect();
        loop {
            let best = syms
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", syms[i], syms[i + 1]);
            syms.splice(i..i + 2, [merged]);
        }
        for s in syms {
            match self.ids.get(&s) {
                Some(&id) => out.push(id),
                // Not in the vocabulary: one token per byte-char.
                None => out.extend(s.chars().filter_map(|c| self.ids.get(&c.to_string()).copied())),
            }
        }
    }

    /// SentencePiece BPE: spaces as `▁`, a leading `▁`, then repeatedly merge
    /// the adjacent pair whose merge is a token with the highest score; what
    /// is left unknown falls back to `<0xXX>` byte tokens.
    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let norm = format!("▁{}", text.replace(' ', "▁"));
        let mut syms: Vec<String> = norm.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let cat = format!("{}{}", syms[i], syms[i + 1]);
                if let Some(&id) = self.ids.get(&cat) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", syms[i], syms[i + 1]);
            syms.splice(i..i + 2, [merged]);
        }
        for s in syms {
            match self.ids.get(&s) {
                Some(&id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        if let Some(&id) = self.ids.get(&format!("<0x{b:02X}>")) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// The bytes one token stands for. Control tokens give their text only
    /// when `special` is set.
    pub fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else { return Vec::new() };
        let ty = self.types[id as usize];
        if ty == TYPE_CONTROL {
            return if special { t.as_bytes().to_vec() } else { Vec::new() };
        }
        if ty == TYPE_USER_DEFINED {
            return t.as_bytes().to_vec();
        }
        match self.kind {
            Kind::Bpe => t.chars().map(|c| self.byte_dec.get(&c).copied().unwrap_or(b'?')).collect(),
            Kind::Spm => {
                if ty == TYPE_BYTE {
                    if let Some(b) =
                        t.strip_prefix("<0x").and_then(|h| u8::from_str_radix(h.trim_end_matches('>'), 16).ok())
                    {
                        return vec![b];
                    }
                }
                t.replace('▁', " ").into_bytes()
            }
        }
    }

    /// Text of `ids` (invalid UTF-8 replaced). SentencePiece drops the
    /// leading space its normalization added.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.piece(i, special)).collect();
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match (self.kind, s.strip_prefix(' ')) {
            (Kind::Spm, Some(rest)) => rest.to_string(),
            _ => s,
        }
    }
}

/// Turns token pieces into text as soon as they form whole UTF-8 characters
/// (a character may span tokens).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let out = s.to_string();
                self.pending.clear();
                out
            }
            Err(e) => {
                let good = e.valid_up_to();
                // An invalid sequence (not just an unfinished one) is replaced.
                if e.error_len().is_some() {
                    let out = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending.clear();
                    return out;
                }
                let out = String::from_utf8_lossy(&self.pending[..good]).into_owned();
                self.pending.drain(..good);
                out
            }
        }
    }

    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::fixture;

    fn cases(stem: &str) -> Vec<(String, Vec<u32>)> {
        let inp = std::fs::read_to_string(fixture(&format!("{stem}.inp"))).unwrap();
        let out = std::fs::read_to_string(fixture(&format!("{stem}.out"))).unwrap();
        let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        texts.pop();
        let ids: Vec<Vec<u32>> =
            out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
        assert_eq!(texts.len(), ids.len());
        texts.into_iter().map(String::from).zip(ids).collect()
    }

    #[test]
    fn the_tiny_bpe_vocabulary_reproduces_llama_cpp() {
        let g = Gguf::open(&fixture("bitnet-tq2_0.gguf")).unwrap();
        let t = Tokenizer::from_gguf(&g).unwrap();
        for (text, want) in cases("tiny-bpe") {
            assert_eq!(t.encode(&text, false, false), want, "{text:?}");
            assert_eq!(t.decode(&want, false), text);
        }
        assert_eq!((t.bos, t.eos, t.eot), (Some(366), Some(367), Some(370)));
        // With BOS, as the fixture prompts were made.
        let p = t.encode("Hello, world! The quick brown fox", true, false);
        assert_eq!(p[..3], [366, 348, 44]);
        // Special-token text is plain text unless parse_special.
        assert_eq!(t.encode("<|eot_id|>", false, true), vec![370]);
        assert!(t.encode("<|eot_id|>", false, false).len() > 1);
        assert_eq!(t.decode(&[370], false), "");
        assert_eq!(t.decode(&[370], true), "<|eot_id|>");
    }

    #[test]
    fn the_2b4t_style_file_without_a_pre_tokenizer_uses_the_llama3_rules() {
        let g = Gguf::open(&fixture("bitnet-b1.58-i2_s.gguf")).unwrap();
        assert!(g.get("tokenizer.ggml.pre").is_none());
        let t = Tokenizer::from_gguf(&g).unwrap();
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("bitnet-b1.58-i2_s.golden.json")).unwrap()).unwrap();
        let p0 = &golden["prompts"][0];
        let want: Vec<u32> = p0["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(t.encode(p0["text"].as_str().unwrap(), true, false), want);
    }

    #[test]
    fn utf8_stream_holds_split_characters_until_whole() {
        let mut s = Utf8Stream::default();
        let bytes = "é🙂".as_bytes();
        assert_eq!(s.push(&bytes[..1]), "");
        assert_eq!(s.push(&bytes[1..3]), "é");
        assert_eq!(s.push(&bytes[3..5]), "");
        assert_eq!(s.push(&bytes[5..]), "🙂");
        assert_eq!(s.push(b"\xffok"), "\u{FFFD}ok");
        // An unfinished character at the end comes out replaced.
        assert_eq!(s.push(&bytes[2..3]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}

#[cfg(test)]
mod vocab_tests {
    use super::*;
    use crate::golden::fixture;

    fn check(stem: &str) {
        let g = Gguf::open(&fixture(stem)).unwrap();
        let t = Tokenizer::from_gguf(&g).unwrap();
        let inp = std::fs::read_to_string(fixture(&format!("{stem}.inp"))).unwrap();
        let out = std::fs::read_to_string(fixture(&format!("{stem}.out"))).unwrap();
        let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        texts.pop();
        let mut failed = Vec::new();
        for (text, line) in texts.iter().zip(out.lines()) {
            let want: Vec<u32> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let got = t.encode(text, false, false);
            if got != want {
                failed.push(format!("{text:?}: got {got:?} want {want:?}"));
            }
            // (SentencePiece: decode removes the one space encode added.)
            assert_eq!(t.decode(&want, false), *text, "{stem}");
        }
        assert!(failed.is_empty(), "{stem}: {} of {} differ:\n{}", failed.len(), texts.len(), failed.join("\n"));
    }

    #[test]
    fn llama3_bpe_vocabulary_reproduces_every_llama_cpp_tokenization() {
        check("ggml-vocab-llama-bpe.gguf");
    }

    #[test]
    fn sentencepiece_vocabulary_reproduces_every_llama_cpp_tokenization() {
        check("ggml-vocab-llama-spm.gguf");
    }
}
