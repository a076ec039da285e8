//! One request's generation as a state machine (`Sequence`), and the
//! continuous batcher that advances every running sequence in one forward
//! pass per step (`Batcher`).
//!
//! Decoding is memory-bound: a step reads every weight once whether it
//! computes one token or eight, so the running requests share each step's
//! pass instead of each streaming all the weights on its own. Sequences
//! join and leave between steps; a new prompt enters in chunks of at most
//! `PREFILL_BATCH` tokens per step, so a long prompt holds the others'
//! next tokens back by one chunk at most.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{top_probs, Engine, EngineError, Finish, Generate, Outcome};
use crate::model::{KvCache, Segment, PREFILL_BATCH};
use crate::sampler::Sampler;
use crate::tokenizer::Utf8Stream;

/// A request's generation: its cache, where it is in its prompt, what it
/// has produced, and how it streams text (`on_text(piece, token)`, false to
/// cancel). Fed by `Engine::generate` alone or by the `Batcher` with others.
pub(crate) struct Sequence<'e, F: FnMut(&str, u32) -> bool> {
    engine: &'e Engine,
    req: Generate,
    on_text: F,
    pub(crate) cache: KvCache,
    cached_tokens: usize,
    /// Prompt tokens fed so far (cached ones included).
    fed: usize,
    sampler: Sampler,
    history: Vec<u32>,
    out: Vec<u32>,
    utf8: Utf8Stream,
    held: String,
    max_stop: usize,
    probs: Vec<Vec<(u32, f32)>>,
    started: Instant,
    prompt_ms: f64,
    /// The sampled token to feed next.
    next: Option<u32>,
    pub(crate) finish: Option<Finish>,
}

impl<'e, F: FnMut(&str, u32) -> bool> Sequence<'e, F> {
    pub(crate) fn start(engine: &'e Engine, req: Generate, on_text: F) -> Result<Self, EngineError> {
        let n_prompt = req.prompt.len();
        if n_prompt == 0 || n_prompt >= engine.n_ctx {
            return Err(EngineError::PromptTooLong(n_prompt, engine.n_ctx));
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= engine.model.hp.n_vocab) {
            return Err(EngineError::BadToken(bad));
        }
        let started = Instant::now();
        let kept = if req.cache_prompt { engine.prompt_cache.take(&req.prompt) } else { None };
        let (cache, cached_tokens) = kept.unwrap_or_else(|| (engine.model.new_cache(engine.n_ctx), 0));
        Ok(Sequence {
            engine,
            sampler: Sampler::new(req.sampler.clone()),
            history: req.prompt.clone(),
            max_stop: req.stop.iter().map(String::len).max().unwrap_or(0),
            req,
            on_text,
            cache,
            cached_tokens,
            fed: cached_tokens,
            out: Vec::new(),
            utf8: Utf8Stream::default(),
            held: String::new(),
            probs: Vec::new(),
            started,
            prompt_ms: 0.0,
            next: None,
            finish: None,
        })
    }

    /// The tokens to feed next: up to `budget` of the prompt while it
    /// lasts, then the last sampled token.
    pub(crate) fn pending(&self, budget: usize) -> &[u32] {
        let n = self.req.prompt.len();
        if self.fed < n {
            return &self.req.prompt[self.fed..(self.fed + budget.max(1)).min(n)];
        }
        match &self.next {
            Some(t) => std::slice::from_ref(t),
            None => &[],
        }
    }

    /// Whether the prompt is still being fed.
    pub(crate) fn in_prompt(&self) -> bool {
        self.fed < self.req.prompt.len()
    }

    /// After `n` pending tokens were fed: the logits of the last. Samples
    /// the next token once the prompt is in.
    pub(crate) fn advance(&mut self, n: usize, logits: &mut [f32]) {
        if self.in_prompt() {
            self.fed += n;
            if self.in_prompt() {
                return;
            }
            self.prompt_ms = self.started.elapsed().as_secs_f64() * 1e3;
        }
        self.next = None;
        self.finish = self.step(logits);
    }

    /// One token from `logits`: sample, stream its text (holding back what
    /// could become a stop string), and say whether the sequence is done.
    fn step(&mut self, logits: &mut [f32]) -> Option<Finish> {
        if self.out.len() >= self.req.max_tokens || self.cache.len >= self.cache.capacity() {
            return Some(Finish::Length);
        }
        if self.req.n_probs > 0 {
            self.probs.push(top_probs(logits, self.req.n_probs));
        }
        let t = self.sampler.sample(logits, &self.history);
        if self.engine.is_end(t) {
            return Some(Finish::Stop);
        }
        self.out.push(t);
        self.history.push(t);
        self.held.push_str(&self.utf8.push(&self.engine.tokenizer.piece(t, false)));
        let stop = &self.req.stop;
        if let Some(at) = stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            if !self.held.is_empty() && !(self.on_text)(&self.held, t) {
                return Some(Finish::Cancelled);
            }
            self.held.clear();
            return Some(Finish::Stop);
        }
        // Keep back what could still become a stop string.
        let held = &self.held;
        let keep = (1..=self.max_stop.min(held.len()))
            .rev()
            .find(|&k| {
                held.is_char_boundary(held.len() - k) && stop.iter().any(|s| s.starts_with(&held[held.len() - k..]))
            })
            .unwrap_or(0);
        let emit_to = self.held.len() - keep;
        if emit_to > 0 {
            let piece: String = self.held.drain(..emit_to).collect();
            if !(self.on_text)(&piece, t) {
                return Some(Finish::Cancelled);
            }
        }
        // The last token is not fed: its logits would go unused.
        if self.out.len() >= self.req.max_tokens {
            return Some(Finish::Length);
        }
        self.next = Some(t);
        None
    }

    /// The outcome; the cache goes back to the prompt cache.
    pub(crate) fn outcome(mut self) -> Outcome {
        let finish = self.finish.unwrap_or(Finish::Cancelled);
        if finish != Finish::Cancelled {
            self.held.push_str(&self.utf8.finish());
            if !self.held.is_empty() && finish == Finish::Length {
                (self.on_text)(&self.held, *self.out.last().unwrap_or(&0));
            }
        }
        self.probs.truncate(self.out.len());
        let decode_ms = self.started.elapsed().as_secs_f64() * 1e3 - self.prompt_ms;
        if self.req.cache_prompt {
            // The cache holds every token fed so far: the prompt and all the
            // generated ones but the last.
            self.history.truncate(self.cache.len);
            self.engine.prompt_cache.give_back(self.history, self.cache);
        }
        Outcome {
            finish,
            prompt_tokens: self.req.prompt.len(),
            tokens: self.out,
            probs: self.probs,
            cached_tokens: self.cached_tokens,
            prompt_ms: self.prompt_ms,
            decode_ms,
        }
    }
}

/// Streams a sequence's text; false cancels it.
pub type OnText = Box<dyn FnMut(&str, u32) -> bool + Send>;

struct Job {
    req: Generate,
    on_text: OnText,
    done: mpsc::SyncSender<Result<Outcome, EngineError>>,
}

/// The continuous batcher: one thread that owns the running sequences and
/// advances all of them with one `forward_segments` per step.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl Batcher {
    /// Starts the batching thread on the process-wide compute pool; it ends
    /// when every `Batcher` clone is dropped and its sequences are done.
    pub fn start(engine: Arc<Engine>) -> Batcher {
        Batcher::start_with(engine, None)
    }

    /// As `start`, on a pool of its own of `threads` (benchmarks compare
    /// thread counts in one process).
    pub fn start_with(engine: Arc<Engine>, threads: Option<usize>) -> Batcher {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bitnet-batcher".into())
            .spawn(move || match threads {
                Some(n) => crate::pool::Pool::new(n).install(|| run(&engine, &rx)),
                None => run(&engine, &rx),
            })
            .expect("spawning the batcher thread");
        Batcher { jobs }
    }

    /// Queue a generation; the receiver gets its outcome once it is done
    /// (an error at once when it cannot start).
    pub fn submit(&self, req: Generate, on_text: OnText) -> mpsc::Receiver<Result<Outcome, EngineError>> {
        let (done, rx) = mpsc::sync_channel(1);
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job { req, on_text, done }) {
            let _ = job.done.send(Err(EngineError::Closed));
        }
        rx
    }
}

type Running<'e> = (Sequence<'e, OnText>, mpsc::SyncSender<Result<Outcome, EngineError>>);

fn admit<'e>(engine: &'e Engine, job: Job, active: &mut Vec<Running<'e>>) {
    match Sequence::start(engine, job.req, job.on_text) {
        Ok(s) => active.push((s, job.done)),
        Err(e) => {
            let _ = job.done.send(Err(e));
        }
    }
}

fn run(engine: &Engine, jobs: &mpsc::Receiver<Job>) {
    let mut active: Vec<Running> = Vec::new();
    loop {
        if active.is_empty() {
            match jobs.recv() {
                Ok(job) => admit(engine, job, &mut active),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            admit(engine, job, &mut active);
        }
        if active.is_empty() {
            continue;
        }
        // This step's tokens: every decoding sequence's next one, and the
        // prompts' chunks within one batch's budget (at least one token
        // each, so none waits forever).
        let mut budget = PREFILL_BATCH;
        let tokens: Vec<Vec<u32>> = active
            .iter()
            .map(|(s, _)| {
                let t = s.pending(budget).to_vec();
                if s.in_prompt() {
                    budget = budget.saturating_sub(t.len()).max(1);
                }
                t
            })
            .collect();
        let mut segs: Vec<Segment> = active
            .iter_mut()
            .zip(&tokens)
            .filter(|(_, t)| !t.is_empty())
            .map(|((s, _), t)| Segment { tokens: t, cache: &mut s.cache })
            .collect();
        let mut logits = if segs.is_empty() { None } else { Some(engine.model.forward_segments(&mut segs)) };
        drop(segs);
        let mut logits = logits.iter_mut().flat_map(|l| l.rows_mut());
        for ((s, _), t) in active.iter_mut().zip(&tokens) {
            if t.is_empty() {
                // Nothing to feed and not finished: cannot happen, but never spin.
                s.finish.get_or_insert(Finish::Cancelled);
                continue;
            }
            if let Some(l) = logits.next() {
                s.advance(t.len(), l);
            }
        }
        let mut i = 0;
        while i < active.len() {
            if active[i].0.finish.is_some() {
                let (s, done) = active.swap_remove(i);
                let _ = done.send(Ok(s.outcome()));
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::fixture;
    use crate::sampler::SamplerConfig;

    fn greedy(prompt: Vec<u32>, max: usize) -> Generate {
        Generate {
            prompt,
            max_tokens: max,
            sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
            stop: vec![],
            n_probs: 0,
            cache_prompt: false,
        }
    }

    /// Texts streamed per request, collected for comparison.
    fn collect() -> (OnText, Arc<std::sync::Mutex<String>>) {
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let t = text.clone();
        let on_text: OnText = Box::new(move |piece, _| {
            t.lock().unwrap().push_str(piece);
            true
        });
        (on_text, text)
    }

    #[test]
    fn batched_sequences_give_the_tokens_each_gives_alone() {
        for name in ["bitnet-b1.58-i2_s.gguf", "bitnet-tq2_0.gguf", "bitnet-tq1_0.gguf"] {
            let engine = Arc::new(Engine::load(&fixture(name), 256).unwrap());
            let prompts: Vec<Vec<u32>> = ["Hello, world!", "The quick brown fox jumps", "Once upon a time there"]
                .iter()
                .map(|p| engine.tokenizer.encode(p, true, false))
                .collect();
            let alone: Vec<Outcome> =
                prompts.iter().map(|p| engine.generate(&greedy(p.clone(), 8), |_, _| true).unwrap()).collect();
            let batcher = Batcher::start(engine.clone());
            let waiting: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let (on_text, text) = collect();
                    (batcher.submit(greedy(p.clone(), 8), on_text), text)
                })
                .collect();
            for ((rx, text), want) in waiting.into_iter().zip(&alone) {
                let got = rx.recv().unwrap().unwrap();
                assert_eq!(got.tokens, want.tokens, "{name}");
                assert_eq!(got.finish, want.finish, "{name}");
                assert_eq!(*text.lock().unwrap(), engine.tokenizer.decode(&got.tokens, false), "{name}");
            }
        }
    }

    #[test]
    fn a_cancelled_sequence_leaves_the_others_unchanged_and_bad_requests_fail_alone() {
        let engine = Arc::new(Engine::load(&fixture("bitnet-b1.58-i2_s.gguf"), 256).unwrap());
        let p = |s: &str| engine.tokenizer.encode(s, true, false);
        let want = engine.generate(&greedy(p("The quick brown fox jumps"), 10), |_, _| true).unwrap();
        let batcher = Batcher::start(engine.clone());
        let mut pieces = 0;
        let cancelled = batcher.submit(
            greedy(p("Hello, world!"), 10),
            Box::new(move |_, _| {
                pieces += 1;
                pieces < 2
            }),
        );
        let too_long = batcher.submit(greedy(vec![1; 300], 4), Box::new(|_, _| true));
        let (on_text, _) = collect();
        let kept = batcher.submit(greedy(p("The quick brown fox jumps"), 10), on_text);
        assert!(matches!(too_long.recv().unwrap(), Err(EngineError::PromptTooLong(300, 256))));
        let c = cancelled.recv().unwrap().unwrap();
        assert_eq!(c.finish, Finish::Cancelled);
        // Stopped at its second piece of text (a token can be part of a
        // character, so tokens may be a few more than pieces).
        assert!(c.tokens.len() < 10, "{:?}", c.tokens);
        assert_eq!(kept.recv().unwrap().unwrap().tokens, want.tokens);
    }
}
