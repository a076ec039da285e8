#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! A chat's second turn on the built-in engine, with the prompt cache and
//! without: time to the first token of a turn that resends 1,000 tokens of
//! history plus 20 new ones, beside a fresh 20-token prompt's (the goal:
//! the cached turn within 1.3x of it). On a generated model with BitNet
//! b1.58 2B4T's shape (I2_S), at 1 thread and 2.
//!
//! cargo bench -p bitnet-host-tests --bench chat_turns -- --bench
//! (a quick run on a small shape without --bench; the 2B4T-shaped file is
//! generated once under target/bench-models/, shared with the engine bench)

use std::path::PathBuf;

use bitnet_ternary::engine::{Engine, Generate};
use bitnet_ternary::sampler::SamplerConfig;
use bitnet_ternary::writer::{random_model_as, write_atomic, Shape, TernaryFormat};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (shape, stem, history, new) = if full {
        (Shape::b158_2b4t(), "b158-2b4t-shape", 1000, 20)
    } else {
        (Shape::default_model(), "b158-small", 200, 20)
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    let path = dir.join(format!("{stem}-i2s.gguf"));
    if !path.exists() {
        println!("generating {} ...", path.display());
        write_atomic(&path, &random_model_as(&shape, 42, TernaryFormat::I2S)).unwrap();
    }
    let engine = Engine::load(&path, history + new + 64).unwrap();
    let vocab = engine.model.hp.n_vocab as u32;
    // Fixed ids, as llama-bench's are; the history and the new message.
    let ids = |n: usize, salt: u32| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + salt) % vocab).collect() };
    let turn1 = ids(history, 1);
    let mut turn2 = turn1.clone();
    turn2.extend(ids(new, 2));
    let short = ids(new, 3);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "model: {} layers x {} hidden, I2_S; turn 2 = {history} tokens of history + {new} new; time to first token (prompt ms)",
        engine.model.hp.n_layer, engine.model.hp.n_embd
    );
    println!("threads  fresh {new}-token prompt  turn 2 uncached  turn 2 cached  cached / fresh  uncached / cached");
    for threads in [1, cores.min(2)] {
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
            let fresh = run(&short, false).prompt_ms;
            let uncached = run(&turn2, false).prompt_ms;
            // Turn 1 leaves its cache; turn 2 starts from it.
            run(&turn1, true);
            let o = run(&turn2, true);
            assert!(o.cached_tokens >= history, "the cache answered {} tokens", o.cached_tokens);
            println!(
                "{threads:>7} {fresh:>20.0} {uncached:>16.0} {:>14.0} {:>14.2}x {:>17.1}x",
                o.prompt_ms,
                o.prompt_ms / fresh,
                uncached / o.prompt_ms
            );
        });
    }
}
