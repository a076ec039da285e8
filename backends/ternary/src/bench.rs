//! Engine speed, measured the way llama-bench does (prompt tokens/s over
//! `p` tokens, generated tokens/s over `n`), with the machine's read
//! bandwidth and the bytes a decoded token reads, so a run can say how
//! close decoding gets to the memory-bandwidth ceiling.

use std::time::Instant;

use crate::model::Model;

#[derive(Debug, Clone, PartialEq)]
pub struct Speed {
    pub threads: usize,
    pub pp_tokens_per_s: f64,
    pub tg_tokens_per_s: f64,
}

/// Prompt then generation speed with `threads` threads (a pool of that
/// size, made for the run), after `depth` tokens already in the context
/// (llama-bench's -d; not timed). Tokens are fixed ids, as llama-bench's
/// are.
pub fn speed(model: &Model, depth: usize, p: usize, n: usize, threads: usize) -> Speed {
    let pool = crate::pool::Pool::new(threads);
    pool.install(|| {
        let mut cache = model.new_cache(depth + p + n + 1);
        let vocab = model.hp.n_vocab as u32;
        let context: Vec<u32> = (0..depth).map(|i| (i as u32 * 7919 + 13) % vocab).collect();
        for chunk in context.chunks(crate::model::PREFILL_BATCH) {
            model.forward_batch(chunk, &mut cache);
        }
        let t = Instant::now();
        let prompt: Vec<u32> = (0..p).map(|i| (i as u32 * 7919) % vocab).collect();
        for chunk in prompt.chunks(crate::model::PREFILL_BATCH) {
            model.forward_batch(chunk, &mut cache);
        }
        let pp = p as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut tok = 1;
        for _ in 0..n {
            let logits = model.forward(tok, &mut cache);
            tok = crate::sampler::argmax(&logits) as u32;
        }
        let tg = n as f64 / t.elapsed().as_secs_f64();
        Speed { threads, pp_tokens_per_s: pp, tg_tokens_per_s: tg }
    })
}

/// Aggregate decode tokens/s of `streams` sequences advanced together, one
/// token each per forward pass (what the continuous batcher does once
/// their prompts are in), each with its own cache after a `p`-token
/// prompt; `n` steps. llama-batched-bench's S_TG, without the batcher's
/// sampling and streaming.
pub fn batched_decode(model: &Model, streams: usize, p: usize, n: usize, threads: usize) -> f64 {
    let pool = crate::pool::Pool::new(threads);
    pool.install(|| {
        let vocab = model.hp.n_vocab as u32;
        let mut caches: Vec<_> = (0..streams).map(|_| model.new_cache(p + n + 1)).collect();
        for (s, cache) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = (0..p as u32).map(|i| (i * 7919 + s as u32 * 104_729) % vocab).collect();
            for chunk in prompt.chunks(crate::model::PREFILL_BATCH) {
                model.forward_batch(chunk, cache);
            }
        }
        let mut next: Vec<u32> = (0..streams as u32).map(|s| 1 + s).collect();
        let t = Instant::now();
        for _ in 0..n {
            let mut segs: Vec<_> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, t)| crate::model::Segment { tokens: std::slice::from_ref(t), cache })
                .collect();
            let logits = model.forward_segments(&mut segs);
            for (t, l) in next.iter_mut().zip(logits.rows()) {
                *t = crate::sampler::argmax(l) as u32;
            }
        }
        (streams * n) as f64 / t.elapsed().as_secs_f64()
    })
}

/// `bytes` copied into memory held as the engine holds weights (huge
/// pages where the kernel gives them), for kernels timed from memory as
/// decoding reads them: from a `Vec` (4 KiB pages) the one-token kernels
/// read slower here, TQ2_0 by about 15% and I2_S by about 30%.
pub fn held_like_weights(bytes: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let mut m = crate::weights::huge_page_buffer(bytes.len())?;
    m[..bytes.len()].copy_from_slice(bytes);
    m.make_read_only()
}

/// Read bandwidth in bytes/s: a sum over `bytes` of memory (larger than
/// the caches) split over `threads`, best of `reps`; with `prefetch` the
/// sum asks for lines ahead as the kernels do (on this VM a plain sum
/// reads slower than the prefetching kernels, so the ceiling to compare
/// against is the prefetching sum).
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize, prefetch: bool) -> f64 {
    let pool = crate::pool::Pool::new(threads);
    // Held as the weights are (huge pages): over 4 KiB pages the same sum
    // read 3-7% slower here, below what the I2_S kernel reads weights at.
    let mut held = crate::weights::huge_page_buffer(bytes / 8 * 8).expect("memory for the bandwidth sum");
    for (i, w) in held.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).to_le_bytes());
    }
    let held = held.make_read_only().expect("a read-only bandwidth buffer");
    // SAFETY: the mapping is page-aligned and bytes / 8 * 8 long.
    let buf: &[u64] = unsafe { std::slice::from_raw_parts(held.as_ptr().cast(), bytes / 8) };
    let part = buf.len().div_ceil(threads);
    let mut best = 0f64;
    let prefetch = prefetch.then(|| crate::kernels::prefetch_distance().unwrap_or(6144));
    {
        for _ in 0..reps {
            let sums: Vec<std::sync::atomic::AtomicU64> = (0..threads).map(|_| Default::default()).collect();
            let t = Instant::now();
            pool.run(threads, &|i| {
                let s = sum(&buf[(i * part).min(buf.len())..((i + 1) * part).min(buf.len())], prefetch);
                sums[i].store(s, std::sync::atomic::Ordering::Relaxed);
            });
            std::hint::black_box(&sums);
            best = best.max(bytes as f64 / t.elapsed().as_secs_f64());
        }
    }
    best
}

/// Wrapping sum of `v`, a cache line (8 values) at a time.
fn sum(v: &[u64], prefetch: Option<usize>) -> u64 {
    let mut acc = [0u64; 8];
    let lines = v.chunks_exact(8);
    let tail = lines.remainder().iter().fold(0u64, |a, &x| a.wrapping_add(x));
    for line in lines {
        crate::kernels::prefetch(line.as_ptr().cast(), prefetch);
        for (a, x) in acc.iter_mut().zip(line) {
            *a = a.wrapping_add(*x);
        }
    }
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}
