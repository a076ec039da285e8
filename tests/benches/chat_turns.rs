#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The built-in engine serving chats, on a generated model with BitNet
//! b1.58 2B4T's shape (I2_S), at 1 thread and 2:
//! - a chat's second turn with the prompt cache and without: time to the
//!   first token of a turn that resends 1,000 tokens of history plus 20 new
//!   ones, beside a fresh 20-token prompt's (the goal: within 1.3x of it);
//! - concurrent streams through the continuous batcher: aggregate decode
//!   tokens/s with 1, 2, 4 and 8 at once (the goal: >= 3x one stream at 4),
//!   and the wall-time rate with their prompts;
//! - decoding at 512 and 4,000 tokens of context with an f16 and an f32
//!   KV cache (2 threads; the cache filled by a real prompt).
//!
//! cargo bench -p bitnet-host-tests --bench chat_turns -- --bench [cache] [streams] [context]
//! (BITNET_BENCH_KV=f32,f16,q8_0 picks the cache's KV types; default all;
//! BITNET_BENCH_THREADS=1,2 its thread counts; default 1 and up to 2)
//! (a quick run on a small shape without --bench; the 2B4T-shaped file is
//! generated once under target/bench-models/, shared with the engine bench;
//! naming parts runs only those)

use std::sync::Arc;
use std::time::Instant;

use bitnet_host_tests::bench::median;
use bitnet_ternary::batch::Batcher;
use bitnet_ternary::engine::{Engine, Generate};
use bitnet_ternary::sampler::SamplerConfig;
use bitnet_ternary::writer::{Shape, TernaryFormat};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let part = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    let (shape, stem, history, new) = if full {
        (Shape::b158_2b4t(), "b158-2b4t-shape", 1000, 20)
    } else {
        (Shape::default_model(), "b158-small", 200, 20)
    };
    let path = bitnet_host_tests::bench::model(stem, &shape, TernaryFormat::I2S);
    let mut engine = Engine::load(&path, history + new + 64).unwrap();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if part("cache") {
        cache(&mut engine, cores, history, new);
    }
    let engine = Arc::new(engine);
    if part("streams") {
        streams(&engine, cores, if full { 32 } else { 16 });
    }
    if part("context") {
        long_context(&path, cores.min(2), if full { &[512, 4000] } else { &[64, 200] });
    }
}

/// Runs of each short measurement (a fresh prompt, a cached turn): this
/// VM's timings move 10% between runs, so the figure is their median.
const ROUNDS: usize = 5;

/// Time to the first token of turn 2, with the prompt cache and without
/// (the median of `ROUNDS` runs; the uncached turn once).
fn cache(engine: &mut Engine, cores: usize, history: usize, new: usize) {
    use bitnet_ternary::model::KvType;
    let vocab = engine.model.hp.n_vocab as u32;
    // Fixed ids, as llama-bench's are; the history and the new message.
    let ids = |n: usize, salt: u32| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + salt) % vocab).collect() };
    let turn1 = ids(history, 1);
    let mut turn2 = turn1.clone();
    turn2.extend(ids(new, 2));
    let short = ids(new, 3);
    println!(
        "model: {} layers x {} hidden, I2_S; turn 2 = {history} tokens of history + {new} new; time to first token (prompt ms, median of {ROUNDS})",
        engine.model.hp.n_layer, engine.model.hp.n_embd
    );
    println!("threads  KV cache  fresh {new}-token prompt  turn 2 uncached  turn 2 cached  cached / fresh  uncached / cached");
    let kv_types: Vec<KvType> = match std::env::var("BITNET_BENCH_KV") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                KvType::parse(n.trim())
                    .unwrap_or_else(|| panic!("BITNET_BENCH_KV: unknown KV type {n} (f32, f16, q8_0)"))
            })
            .collect(),
        Err(_) => vec![KvType::F32, KvType::F16, KvType::Q8_0],
    };
    let thread_counts: Vec<usize> = match std::env::var("BITNET_BENCH_THREADS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("BITNET_BENCH_THREADS: not a count: {n}")))
            .collect(),
        Err(_) => vec![1, cores.min(2)],
    };
    for (threads, kv) in thread_counts.into_iter().flat_map(|t| kv_types.iter().map(move |&k| (t, k))) {
        engine.model.kv_type = kv;
        let engine = &*engine;
        let pool = bitnet_ternary::pool::Pool::new(threads);
        pool.install(|| {
            let run = |prompt: &[u32], cache: bool| {
                let req = Generate {
                    prompt: prompt.to_vec(),
                    max_tokens: 1,
                    sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
                    stop: vec![],
                    n_probs: 0,
                    cache_prompt: cache,
                };
                engine.generate(&req, |_, _| true).unwrap()
            };
            engine.prompt_cache.set_slots(0);
            engine.prompt_cache.set_slots(4);
            let fresh = median((0..ROUNDS).map(|_| run(&short, false).prompt_ms).collect());
            let uncached = run(&turn2, false).prompt_ms;
            // Turn 1 leaves its cache (again cut back to turn 1 in later
            // rounds); turn 2 starts from it.
            let cached = median(
                (0..ROUNDS)
                    .map(|_| {
                        run(&turn1, true);
                        let o = run(&turn2, true);
                        assert!(o.cached_tokens >= history, "the cache answered {} tokens", o.cached_tokens);
                        o.prompt_ms
                    })
                    .collect(),
            );
            println!(
                "{threads:>7} {:>9} {fresh:>23.0} {uncached:>16.0} {cached:>14.0} {:>14.2}x {:>17.1}x",
                kv.name(),
                cached / fresh,
                uncached / cached
            );
        });
    }
}

/// Decode tokens/s after `contexts` tokens of prompt, f16 and q8_0 keys
/// (f16 values) against f32 KV.
fn long_context(path: &std::path::Path, threads: usize, contexts: &[usize]) {
    use bitnet_ternary::model::{KvType, Model};
    let mut m = Model::load(path, None).unwrap();
    let vocab = m.hp.n_vocab as u32;
    println!("decode after a long prompt, {threads} threads, 16 tokens: tokens/s and KV cache MB");
    println!("context  f32 tok/s  f32 KV MB  f16 tok/s  f16 KV MB  f16 / f32  q8_0 tok/s  q8_0 KV MB  q8_0 / f32");
    let pool = bitnet_ternary::pool::Pool::new(threads);
    for &ctx in contexts {
        let mut row = Vec::new();
        for ty in [KvType::F32, KvType::F16, KvType::Q8_0] {
            m.kv_type = ty;
            let (rate, mb) = pool.install(|| {
                let mut cache = m.new_cache(ctx + 17);
                let prompt: Vec<u32> = (0..ctx as u32).map(|i| (i * 7919 + 11) % vocab).collect();
                for chunk in prompt.chunks(bitnet_ternary::model::PREFILL_BATCH) {
                    m.forward_batch(chunk, &mut cache);
                }
                let t = Instant::now();
                let mut tok = 1;
                for _ in 0..16 {
                    let logits = m.forward(tok, &mut cache);
                    tok = bitnet_ternary::sampler::argmax(&logits) as u32;
                }
                (16.0 / t.elapsed().as_secs_f64(), cache.bytes() as f64 / 1e6)
            });
            row.push((rate, mb));
        }
        println!(
            "{ctx:>7} {:>10.2} {:>10.0} {:>10.2} {:>10.0} {:>9.2}x {:>11.2} {:>11.0} {:>10.2}x",
            row[0].0,
            row[0].1,
            row[1].0,
            row[1].1,
            row[1].0 / row[0].0,
            row[2].0,
            row[2].1,
            row[2].0 / row[0].0
        );
    }
}

/// Aggregate decode speed with 1, 2, 4 and 8 streams in the batcher.
fn streams(engine: &Arc<Engine>, cores: usize, tokens: usize) {
    let vocab = engine.model.hp.n_vocab as u32;
    println!("streams: {tokens} tokens each after an 8-token prompt, greedy, submitted together");
    println!("  decode tok/s: tokens after each stream's first / the time from its prompt's end to its last token");
    println!("  (llama-batched-bench's S_TG); wall tok/s: all tokens / the wall time, prompts included");
    println!("threads  streams  tokens  seconds  decode tok/s  vs 1 stream  wall tok/s");
    for threads in [1, cores.min(2)] {
        let batcher = Batcher::start_with(engine.clone(), Some(threads));
        let mut single = 0.0;
        for n in [1usize, 2, 4, 8] {
            let t = Instant::now();
            let waiting: Vec<_> = (0..n as u32)
                .map(|s| {
                    let prompt: Vec<u32> = (0..8).map(|i| (i * 7919 + s * 104_729 + 5) % vocab).collect();
                    let req = Generate {
                        prompt,
                        max_tokens: tokens,
                        sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
                        stop: vec![],
                        n_probs: 0,
                        cache_prompt: false,
                    };
                    batcher.submit(req, Box::new(|_, _| true))
                })
                .collect();
            let outcomes: Vec<_> = waiting.into_iter().map(|rx| rx.recv().unwrap().unwrap()).collect();
            let secs = t.elapsed().as_secs_f64();
            let made: usize = outcomes.iter().map(|o| o.tokens.len()).sum();
            // The first token of each comes with its prompt's pass.
            let decoded: usize = outcomes.iter().map(|o| o.tokens.len().saturating_sub(1)).sum();
            let decode_s = outcomes.iter().map(|o| o.decode_ms).fold(0.0, f64::max) / 1e3;
            let rate = decoded as f64 / decode_s;
            if n == 1 {
                single = rate;
            }
            println!(
                "{threads:>7} {n:>8} {made:>7} {secs:>8.2} {rate:>13.2} {:>11.2}x {:>11.2}",
                rate / single,
                made as f64 / secs
            );
        }
    }
}
