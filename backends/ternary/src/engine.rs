//! A loaded model with its tokenizer: chat prompts, and generation with
//! stop tokens, stop strings and a token limit, streaming text pieces.

use std::path::Path;

use crate::model::{KvCache, Model, ModelError};
use crate::sampler::SamplerConfig;
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the prompt has {0} tokens; the context holds {1}")]
    PromptTooLong(usize, usize),
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("the engine is shutting down")]
    Closed,
}

#[derive(Debug)]
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// Context size used for each request (<= the model's).
    pub n_ctx: usize,
    /// KV caches of finished requests, for the next request that starts
    /// with the same tokens (a chat resends its whole history each turn).
    pub prompt_cache: PromptCache,
}

/// Finished requests' KV caches, each with the tokens it holds. A request
/// starts from the one sharing the longest prefix with its prompt and
/// computes only the rest: it takes that cache when at least half of it is
/// shared (the conversation goes on, an answer regenerated), else copies
/// the shared part and leaves the cache to its own conversation (another
/// conversation with the same system prompt). Caches come back when a
/// request is done; at most `slots` are kept, the least recently used
/// dropped first. A cache in use belongs to one request only.
#[derive(Debug)]
pub struct PromptCache {
    slots: std::sync::Mutex<Vec<Slot>>,
    max_slots: std::sync::atomic::AtomicUsize,
    clock: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Slot {
    tokens: Vec<u32>,
    cache: KvCache,
    used: u64,
}

/// Caches kept by default: llama-server's default slot count.
pub const DEFAULT_CACHE_SLOTS: usize = 4;

impl PromptCache {
    pub fn new(max_slots: usize) -> Self {
        PromptCache {
            slots: std::sync::Mutex::new(Vec::new()),
            max_slots: std::sync::atomic::AtomicUsize::new(max_slots),
            clock: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many caches to keep (0: none).
    pub fn set_slots(&self, n: usize) {
        self.max_slots.store(n, std::sync::atomic::Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        evict_to(&mut slots, n);
    }

    /// The cache to run `prompt` on and how many of its first tokens it
    /// already holds (never all of them: the last prompt token is fed again
    /// for its logits). None when no kept cache shares a prefix.
    pub(crate) fn take(&self, prompt: &[u32]) -> Option<(KvCache, usize)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (i, n) = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.tokens, prompt)))
            .max_by_key(|&(i, n)| (n, slots[i].used))?;
        if n == 0 {
            return None;
        }
        let reuse = n.min(prompt.len() - 1);
        // Mostly shared (the conversation goes on, an answer regenerated):
        // take it. A small shared part (a common system prompt): copy that
        // and leave the cache to its own conversation.
        if 2 * n < slots[i].tokens.len() {
            return Some((slots[i].cache.copy_prefix(reuse), reuse));
        }
        let mut slot = slots.swap_remove(i);
        slot.cache.truncate(reuse);
        Some((slot.cache, reuse))
    }

    /// Keep `cache`, which holds `tokens`.
    pub(crate) fn give_back(&self, tokens: Vec<u32>, cache: KvCache) {
        let max = self.max_slots.load(std::sync::atomic::Ordering::Relaxed);
        if max == 0 || tokens.is_empty() {
            return;
        }
        let used = self.clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.push(Slot { tokens, cache, used });
        evict_to(&mut slots, max);
    }

    /// Tokens held by each kept cache (for tests and status).
    pub fn held(&self) -> Vec<usize> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|s| s.tokens.len()).collect()
    }
}

fn evict_to(slots: &mut Vec<Slot>, max: usize) {
    while slots.len() > max {
        if let Some(lru) = slots.iter().enumerate().min_by_key(|(_, s)| s.used).map(|(i, _)| i) {
            slots.swap_remove(lru);
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[derive(Debug, Clone)]
pub struct Generate {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// Record the n most likely tokens (with probabilities) at each step.
    pub n_probs: usize,
    /// Reuse a kept KV cache that starts with this prompt, and keep this
    /// one (llama-server's `cache_prompt`).
    pub cache_prompt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of turn / EOS / a stop string.
    Stop,
    /// max_tokens or the context ran out.
    Length,
    /// The consumer asked to stop (client gone).
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    /// Per generated token (when `n_probs` > 0): the top candidates and
    /// their probabilities before sampling (softmax of the raw logits).
    pub probs: Vec<Vec<(u32, f32)>>,
    /// Prompt tokens taken from a kept cache (not computed again).
    pub cached_tokens: usize,
    /// Time spent on the prompt (up to the first token's logits), and on
    /// generating after it.
    pub prompt_ms: f64,
    pub decode_ms: f64,
}

/// The `n` most likely tokens of `logits`, with softmax probabilities.
pub fn top_probs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let max = crate::kernels::max_values(logits);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n.saturating_sub(1), |a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
    let mut top: Vec<(u32, f32)> = idx[..n].iter().map(|&i| (i, (logits[i as usize] - max).exp() / sum)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top
}

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Render a Hugging Face style chat template (`messages`, `bos_token`,
/// `eos_token`, `add_generation_prompt`).
pub fn render_template(tpl: &str, messages: &[Message], bos: &str, eos: &str) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", tpl).map_err(|e| e.to_string())?;
    let msgs: Vec<minijinja::Value> =
        messages.iter().map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() }).collect();
    env.get_template("chat")
        .and_then(|t| {
            t.render(minijinja::context! {
                messages => msgs, bos_token => bos, eos_token => eos, add_generation_prompt => true,
            })
        })
        .map_err(|e| e.to_string())
}

impl Engine {
    pub fn load(path: &Path, n_ctx: usize) -> Result<Self, EngineError> {
        let model = Model::load(path, None)?;
        let tokenizer = Tokenizer::from_gguf(&model.gguf)?;
        let n_ctx = n_ctx.clamp(16, model.hp.n_ctx.max(16));
        Ok(Engine { model, tokenizer, n_ctx, prompt_cache: PromptCache::new(DEFAULT_CACHE_SLOTS) })
    }

    /// The chat prompt. BitNet b1.58 2B4T's embedded template is wrong; its
    /// working format is `<|begin_of_text|>User: ...<|eot_id|>Assistant: `.
    /// Other models use their `tokenizer.chat_template` (Jinja) when it
    /// renders; else Llama 3 vocabularies get their header format, others
    /// plain turns.
    pub fn chat_prompt(&self, messages: &[Message]) -> String {
        let t = &self.tokenizer;
        let special = |id: Option<u32>| id.and_then(|b| String::from_utf8(t.piece(b, true)).ok()).unwrap_or_default();
        let bos = special(t.bos);
        let arch = self.model.hp.arch.as_str();
        let b158 = matches!(arch, "bitnet-b1.58" | "bitnet-25") && t.token_id("<|eot_id|>").is_some();
        if !b158 {
            if let Some(tpl) = self.model.gguf.get("tokenizer.chat_template").and_then(crate::gguf::Value::as_str) {
                match render_template(tpl, messages, &bos, &special(t.eos)) {
                    Ok(s) => return s,
                    Err(e) => eprintln!("chat template failed ({e}); using a built-in format"),
                }
            }
        }
        let mut s = bos;
        if b158 {
            for m in messages {
                let role = match m.role.as_str() {
                    "system" => "System",
                    "assistant" => "Assistant",
                    _ => "User",
                };
                s.push_str(&format!("{role}: {}<|eot_id|>", m.content));
            }
            s.push_str("Assistant: ");
        } else if t.token_id("<|start_header_id|>").is_some() && t.token_id("<|eot_id|>").is_some() {
            for m in messages {
                s.push_str(&format!("<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>", m.role, m.content));
            }
            s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
        } else {
            for m in messages {
                s.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            s.push_str("assistant: ");
        }
        s
    }

    /// Tokens of a chat prompt (special tokens parsed; a template that
    /// writes the BOS text gives the BOS token once). (special tokens parsed, BOS already in the text).
    pub fn chat_tokens(&self, messages: &[Message]) -> Vec<u32> {
        self.tokenizer.encode(&self.chat_prompt(messages), false, true)
    }

    pub(crate) fn is_end(&self, t: u32) -> bool {
        Some(t) == self.tokenizer.eos || Some(t) == self.tokenizer.eot
    }

    /// Generate, calling `on_text(piece, token)` for each piece of text as
    /// soon as it is whole UTF-8 and cannot be the start of a stop string;
    /// `on_text` returning false cancels.
    pub fn generate(&self, req: &Generate, on_text: impl FnMut(&str, u32) -> bool) -> Result<Outcome, EngineError> {
        // One sequence alone: the prompt in batches (each weight matrix read
        // once per batch), then a token at a time. `batch::Batcher` runs the
        // same sequences several at once.
        let mut s = crate::batch::Sequence::start(self, req.clone(), on_text)?;
        while s.finish.is_none() {
            let tokens = s.pending(crate::model::PREFILL_BATCH).to_vec();
            let mut logits = self.model.forward_batch(&tokens, &mut s.cache);
            s.advance(tokens.len(), &mut logits);
        }
        Ok(s.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::fixture;

    fn engine() -> Engine {
        Engine::load(&fixture("bitnet-b1.58-i2_s.gguf"), 256).unwrap()
    }

    fn greedy(max: usize, stop: &[&str], prompt: Vec<u32>) -> Generate {
        Generate {
            prompt,
            max_tokens: max,
            sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
            stop: stop.iter().map(|s| s.to_string()).collect(),
            n_probs: 3,
            cache_prompt: false,
        }
    }

    #[test]
    fn greedy_generation_follows_the_reference_tokens_and_text_is_their_decoding() {
        let e = engine();
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("bitnet-b1.58-i2_s.golden.json")).unwrap()).unwrap();
        let p: Vec<u32> =
            golden["prompts"][0]["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = golden["greedy"]["p0"]["ref_i8tok"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut text = String::new();
        let o = e.generate(&greedy(8, &[], p.clone()), |s, _| {
            text.push_str(s);
            true
        });
        let o = o.unwrap();
        // The golden greedy never stops at EOS; ours stops there, so compare
        // up to our stop.
        assert_eq!(o.tokens[..], want[..o.tokens.len()]);
        assert_eq!(text, e.tokenizer.decode(&o.tokens, false));
        // Greedy picks the most likely token each step.
        assert_eq!(o.probs.len(), o.tokens.len());
        for (p, t) in o.probs.iter().zip(&o.tokens) {
            assert_eq!(p[0].0, *t);
            assert!(p[0].1 >= p[1].1 && p[1].1 >= p[2].1 && p[0].1 <= 1.0);
        }
        assert_eq!(o.prompt_tokens, p.len());
    }

    /// Every fixture model: a conversation's second turn, computed with the
    /// first turn's kept cache, gives the same greedy tokens (and the same
    /// top probabilities) as computed from nothing; the cache answered the
    /// shared prefix. Also with q8_0 keys, whose tiles of 16 positions a
    /// kept prefix cuts through.
    #[test]
    fn a_kept_prompt_cache_gives_the_same_greedy_tokens_as_none() {
        use crate::model::KvType::{F32, Q8_0};
        let cases = [
            ("bitnet-b1.58-i2_s.gguf", F32),
            ("bitnet-tq2_0.gguf", F32),
            ("bitnet-b1.58-tq2_0.gguf", F32),
            ("bitnet-tq1_0.gguf", F32),
            ("bitnet-b1.58-i2_s.gguf", Q8_0),
            ("bitnet-tq2_0.gguf", Q8_0),
        ];
        for (name, kv) in cases {
            let mut e = Engine::load(&fixture(name), 256).unwrap();
            e.model.kv_type = kv;
            let name = format!("{name} ({kv:?} KV)");
            let turn1 = e.tokenizer.encode("Hello, world! The quick brown fox", true, false);
            let cached = |prompt: Vec<u32>| Generate { cache_prompt: true, ..greedy(6, &[], prompt) };
            let first = e.generate(&cached(turn1.clone()), |_, _| true).unwrap();
            assert_eq!(first.cached_tokens, 0, "{name}: nothing kept yet");
            // Turn 2: turn 1, its answer, and more.
            let mut turn2 = turn1.clone();
            turn2.extend(&first.tokens);
            turn2.extend(e.tokenizer.encode(" jumps over the lazy dog", false, false));
            let with = e.generate(&cached(turn2.clone()), |_, _| true).unwrap();
            let without = e.generate(&greedy(6, &[], turn2.clone()), |_, _| true).unwrap();
            assert_eq!(with.tokens, without.tokens, "{name}");
            for (a, b) in with.probs.iter().zip(&without.probs) {
                assert_eq!(a[0].0, b[0].0, "{name}");
                assert!((a[0].1 - b[0].1).abs() < 1e-4, "{name}: {a:?} vs {b:?}");
            }
            // Everything turn 1 fed (its prompt and its answer but the last
            // token, whose logits nobody needs) came from the cache.
            assert_eq!(first.finish, Finish::Length);
            assert_eq!(with.cached_tokens, turn1.len() + first.tokens.len() - 1, "{name}");
            assert_eq!(without.cached_tokens, 0);
            // The same prompt again: all but its last token from the cache.
            let again = e.generate(&cached(turn2.clone()), |_, _| true).unwrap();
            assert_eq!(again.tokens, with.tokens, "{name}");
            assert_eq!(again.cached_tokens, turn2.len() - 1, "{name}");
        }
    }

    #[test]
    fn the_prompt_cache_keeps_its_slot_count_dropping_the_least_recently_used() {
        let e = engine();
        e.prompt_cache.set_slots(2);
        let run = |text: &str| {
            let p = e.tokenizer.encode(text, true, false);
            e.generate(&Generate { cache_prompt: true, ..greedy(2, &[], p) }, |_, _| true).unwrap()
        };
        run("alpha beta gamma");
        // Another conversation shares only BOS: it copies that and leaves
        // alpha's cache alone.
        assert_eq!(run("one two three four").cached_tokens, 1);
        assert_eq!(e.prompt_cache.held().len(), 2);
        // A third conversation pushes out the least recently used (alpha).
        run("red green blue");
        assert_eq!(e.prompt_cache.held().len(), 2);
        assert!(run("one two three four five").cached_tokens > 1, "kept");
        assert_eq!(run("alpha beta gamma delta").cached_tokens, 1, "dropped: only BOS is shared");
        // Off: nothing kept, nothing reused.
        e.prompt_cache.set_slots(0);
        assert!(e.prompt_cache.held().is_empty());
        assert_eq!(run("red green blue").cached_tokens, 0);
    }

    #[test]
    fn stop_strings_cut_the_text_and_cancel_stops_at_once() {
        let e = engine();
        let p = e.tokenizer.encode("Hello, world! The quick brown fox", true, false);
        let mut full = String::new();
        e.generate(&greedy(12, &[], p.clone()), |s, _| {
            full.push_str(s);
            true
        })
        .unwrap();
        assert!(full.len() > 4, "{full:?}");
        // Stop at a piece of what greedy produces.
        let stop: String = full.chars().skip(2).take(2).collect();
        let mut cut = String::new();
        let o = e
            .generate(&greedy(12, &[&stop], p.clone()), |s, _| {
                cut.push_str(s);
                true
            })
            .unwrap();
        assert_eq!(o.finish, Finish::Stop);
        assert_eq!(cut, full[..full.find(&stop).unwrap()]);
        let mut calls = 0;
        let o = e
            .generate(&greedy(12, &[], p), |_, _| {
                calls += 1;
                false
            })
            .unwrap();
        assert_eq!((o.finish, calls), (Finish::Cancelled, 1));
    }

    #[test]
    fn prompts_that_do_not_fit_are_errors() {
        let e = engine();
        assert!(matches!(e.generate(&greedy(1, &[], vec![]), |_, _| true), Err(EngineError::PromptTooLong(0, _))));
        assert!(matches!(
            e.generate(&greedy(1, &[], vec![1; 300]), |_, _| true),
            Err(EngineError::PromptTooLong(300, _))
        ));
        assert!(matches!(e.generate(&greedy(1, &[], vec![100_000]), |_, _| true), Err(EngineError::BadToken(100_000))));
    }

    #[test]
    fn jinja_chat_templates_render_and_bad_ones_are_errors() {
        let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let m = [
            Message { role: "system".into(), content: "Be brief.".into() },
            Message { role: "user".into(), content: "Hi".into() },
        ];
        assert_eq!(
            render_template(chatml, &m, "<s>", "</s>").unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let strict =
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ bos_token }}";
        assert!(render_template(strict, &m, "<s>", "").unwrap_err().contains("first must be user"));
        assert!(render_template("{% for %}", &m, "", "").is_err());
    }

    #[test]
    fn the_2b4t_chat_format_is_used_for_b158_models() {
        let e = engine();
        let m = [Message { role: "user".into(), content: "Hi".into() }];
        assert_eq!(e.chat_prompt(&m), "<|begin_of_text|>User: Hi<|eot_id|>Assistant: ");
        let toks = e.chat_tokens(&m);
        assert_eq!(toks[0], 366);
        assert!(toks.contains(&370));
    }
}
