#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The engine's many-token kernels on their own, with the kernels this CPU
//! gets: how fast they compute with their inputs in cache, and how fast
//! they go through a matrix that is not, for 1, 2, 4, 8 and 16 tokens (the
//! sequences the batcher decodes together). The numbers say whether a
//! batched step is bound by memory (time flat in the tokens) or by
//! arithmetic (time growing with them), and how far each kernel is from
//! the other bound.
//!
//! - I2_S: `i2s_rows_tokens` over 16 rows of 2560 columns held in L1,
//!   multiply-adds per ns (one `vpdpbusd` is 64);
//! - F16 (the output matrix): `f16_rows_many` over 8 rows in L1, FMAs per
//!   ns; and over a 128256 x 2560 matrix (2B4T's output, 656 MB), ms per
//!   pass and GB/s of weights.
//!
//! - TQ2_0 and I2_S for one token (decoding), 32 rows in L1 and a 346 MB
//!   matrix from memory (held as weights are), GB/s of weights, beside
//!   the read bandwidth: how far each kernel is from the memory bound.
//!
//! - attention: a cached turn's call (20 tokens x 4 query heads on one kv
//!   head of 128, over 1,020 positions) with f32, f16 and q8_0 keys, ms
//!   per call and multiply-adds per ns (scores and values both counted).
//!
//! - decode: one token's attention in every layer over 4,000 positions
//!   held in memory, f32 and f16, ms per token and GB/s of the cache.
//!
//! - tokens: TQ2_0 and I2_S (regrouped) and Q6_K for 1, 2, 4, 8 and 16 tokens, in L1
//!   and from memory: what a batched decoding step's products cost.
//!
//! - cores: a decoding step's I2_S products on every core, one job per
//!   matrix, the matrices in buffers of their own and in one, against one
//!   job over as many bytes and the read bandwidth.
//!
//! cargo bench -p bitnet-host-tests --bench kernels -- --bench [i2s] [f16] [tq2] [tokens] [attention] [decode] [cores]
//! (one thread but for cores; a quick run with smaller matrices without
//! --bench; naming parts runs only those)

use std::time::Instant;

use bitnet_ternary::kernels::{self, Prepared};
use half::f16;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    println!("kernels: {} ({}), one thread", kernels::isa().key(), kernels::isa().describe());
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let part = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    let cols = 2560;
    if part("i2s") {
        i2s_in_cache(cols, if full { 50_000 } else { 2_000 });
    }
    if part("f16") {
        f16_in_cache(cols, if full { 32_000 } else { 1_000 });
        f16_from_memory(if full { 128_256 } else { 8_192 }, cols);
    }
    if part("tq2") {
        one_token_rows(cols, if full { 32_768 } else { 512 }, if full { 100_000 } else { 2_000 });
    }
    if part("tokens") {
        many_token_rows(cols, if full { 32_768 } else { 512 }, if full { 100_000 } else { 2_000 });
    }
    if part("attention") {
        attention(if full { 1000 } else { 200 }, 20, if full { 20 } else { 3 });
    }
    if part("decode") {
        decode_attention(if full { 4000 } else { 300 }, if full { 30 } else { 4 });
    }
    if part("cores") {
        products_on_cores(if full { 30 } else { 2 });
    }
}

/// A decoding step's ternary products on every core: 2B4T's seven
/// matrices per layer (I2_S regrouped) for `layers` layers, one job per
/// matrix as decoding runs them, with each matrix in a buffer of its own
/// (most are under a 2 MB page) and with all in one buffer (as the model
/// holds them, `weights::Arena`); then the same bytes as one matrix in
/// one job; beside the read bandwidth on as many threads. GB/s of
/// weights: what the buffers' pages and the jobs' starts and ends cost,
/// apart from the model's other work.
fn products_on_cores(layers: usize) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let shapes =
        [(2560usize, 2560usize), (640, 2560), (640, 2560), (2560, 2560), (6912, 2560), (6912, 2560), (2560, 6912)];
    let mut next = xorshift();
    let (mut own, mut all, mut at) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..layers {
        for &(rows, cols) in &shapes {
            let m = random_matrix("I2_S regrouped", rows, cols / 256, &mut next);
            at.push((all.len(), m.len(), rows, cols / 256));
            all.extend_from_slice(&m);
            own.push(bitnet_ternary::bench::held_like_weights(&m).expect("memory for the matrix"));
        }
    }
    let one_buffer = bitnet_ternary::bench::held_like_weights(&all).expect("memory for the matrices");
    drop(all);
    let bytes: usize = own.iter().map(|m| m.len()).sum();
    let big_rows = bytes / 640 / 16 * 16;
    let big = random_matrix("I2_S regrouped", big_rows, 10, &mut next);
    let big = bitnet_ternary::bench::held_like_weights(&big).expect("memory for the matrix");
    let (q2560, q6912): (Vec<i8>, Vec<i8>) = (
        (0..2560).map(|i| ((i * 31) % 200) as i8 - 100).collect(),
        (0..6912).map(|i| ((i * 31) % 200) as i8 - 100).collect(),
    );
    let (a2560, a6912) = (Prepared::new(&q2560), Prepared::new(&q6912));
    // One product on the pool, in whole groups as the model runs it.
    let run = |m: &[u8], rows: usize, blocks: usize| {
        let a = if blocks == 10 { &a2560 } else { &a6912 };
        let mut out = vec![0i32; rows];
        let parts = bitnet_ternary::pool::guided_parts(rows, blocks * 64, 1, 16);
        let shared = bitnet_ternary::pool::SharedMut::new(&mut out);
        bitnet_ternary::pool::with_current(|p| {
            p.run(parts.len(), &|i| {
                let r = parts[i].clone();
                // SAFETY: guided_parts are disjoint, so part i's rows are this task's alone.
                kernels::i2s_grouped_rows(m, blocks, r.start, a, unsafe { shared.slice(r.start, r.end) })
            })
        });
        std::hint::black_box(&out);
    };
    let pool = bitnet_ternary::pool::Pool::new(threads);
    let (separate, together, one_job) = pool.install(|| {
        let separate = best(|| own.iter().zip(&at).for_each(|(m, &(_, _, rows, blocks))| run(m, rows, blocks)));
        let together = best(|| at.iter().for_each(|&(s, l, rows, blocks)| run(&one_buffer[s..s + l], rows, blocks)));
        (separate, together, best(|| run(&big, big_rows, 10)))
    });
    let bw = bitnet_ternary::bench::read_bandwidth(bytes, threads, 3, true);
    let gbs = |s: f64| bytes as f64 / s / 1e9;
    println!("I2_S products of {layers} layers ({:.0} MB) on {threads} threads, GB/s of weights:", bytes as f64 / 1e6);
    println!("  {} jobs, one per matrix, each matrix in a buffer of its own: {:.1}", at.len(), gbs(separate));
    println!("  {} jobs, one per matrix, all in one buffer (as the model): {:.1}", at.len(), gbs(together));
    println!("  one job over as many bytes: {:.1}", big.len() as f64 / one_job / 1e9);
    println!("  read bandwidth: {:.1}", bw / 1e9);
}

/// One decoding token's attention over `context` positions in every
/// layer: 2B4T's 5 kv heads of 128 (4 query heads each) per layer, each
/// kv head's positions in one run as the engine's cache keeps them, each
/// layer in its own memory (f32: 614 MB at 4,000 positions and 30 layers,
/// more than any cache holds); ms per token and GB/s of keys and values
/// read (compare the engine bench's ceiling, which is for 2 threads).
fn decode_attention(context: usize, layers: usize) {
    use kernels::{KvHead, Queries};
    let (hd, heads, kv_heads) = (128usize, 4usize, 5usize);
    let val = |i: usize| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0;
    // [layer][kv head]: context x hd values.
    let cache = |salt: usize| -> Vec<Vec<Vec<f32>>> {
        (0..layers)
            .map(|l| (0..kv_heads).map(|h| (0..context * hd).map(|i| val(i + l * 5 + h + salt)).collect()).collect())
            .collect()
    };
    let (k, v) = (cache(0), cache(17));
    let half = |x: &Vec<Vec<Vec<f32>>>| -> Vec<Vec<Vec<u16>>> {
        x.iter().map(|l| l.iter().map(|h| h.iter().map(|x| f16::from_f32(*x).to_bits()).collect()).collect()).collect()
    };
    let (k16, v16) = (half(&k), half(&v));
    let q: Vec<f32> = (0..heads * hd).map(|i| val(i + 5) * 0.3).collect();
    let visible = [context];
    let queries = Queries { q: &q, heads, visible: &visible };
    let (mut scores, mut out) = (Vec::new(), vec![0f32; q.len()]);
    println!("attention, decoding 1 token x {heads} heads x {kv_heads} kv heads x {layers} layers after {context}: keys  ms per token  GB/s");
    let row = |name: &str, s: f64, bytes: usize| {
        let total = (layers * kv_heads * context * hd * 2 * bytes) as f64;
        println!("{name:>58} {:>13.2} {:>6.1}", s * 1e3, total / s / 1e9)
    };
    let s = best(|| {
        for (kl, vl) in k.iter().zip(&v) {
            for (kh, vh) in kl.iter().zip(vl) {
                let kv = KvHead { k: &kh[..], v: &vh[..], stride: hd, offset: 0, len: hd };
                kernels::attend(queries, kv, 0.088, &mut scores, &mut out);
            }
        }
    });
    row("f32", s, 4);
    let s = best(|| {
        for (kl, vl) in k16.iter().zip(&v16) {
            for (kh, vh) in kl.iter().zip(vl) {
                let kv = KvHead { k: &kh[..], v: &vh[..], stride: hd, offset: 0, len: hd };
                kernels::attend(queries, kv, 0.088, &mut scores, &mut out);
            }
        }
    });
    row("f16", s, 2);
}

/// `new` tokens after `history` cached ones, as a cached turn's attention
/// calls them: one call per kv head (4 query heads each), 2B4T's head of
/// 128 in a position vector of 5 kv heads.
fn attention(history: usize, new: usize, reps: usize) {
    use kernels::{KvHead, Q8KeyCache, Queries};
    let (hd, heads, kv_heads) = (128usize, 4usize, 5usize);
    let stride = hd * kv_heads;
    let n = history + new;
    let val = |i: usize| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0;
    let k: Vec<f32> = (0..n * stride).map(val).collect();
    let v: Vec<f32> = (0..n * stride).map(|i| val(i + 17)).collect();
    let (k16, v16): (Vec<u16>, Vec<u16>) = (
        k.iter().map(|x| f16::from_f32(*x).to_bits()).collect(),
        v.iter().map(|x| f16::from_f32(*x).to_bits()).collect(),
    );
    let mut k8 = Q8KeyCache::new(stride, n);
    k8.extend(&k);
    let q: Vec<f32> = (0..new * heads * hd).map(|i| val(i + 5) * 0.3).collect();
    let visible: Vec<usize> = (history + 1..=n).collect();
    let queries = Queries { q: &q, heads, visible: &visible };
    // Scores and weighted values: 2 x rows x visible positions x hd.
    let macs = 2.0 * (heads * hd) as f64 * visible.iter().sum::<usize>() as f64;
    let (mut scores, mut out) = (Vec::new(), vec![0f32; q.len()]);
    println!("attention, {new} tokens x {heads} heads after {history} cached, head {hd}: keys  ms per call  multiply-adds/ns");
    let row = |name: &str, s: f64| {
        println!("{name:>58} {:>12.3} {:>17.1}", s * 1e3 / reps as f64, macs * reps as f64 / s / 1e9)
    };
    let head = 2;
    let s = best(|| {
        for _ in 0..reps {
            let kv = KvHead { k: &k[..], v: &v[..], stride, offset: head * hd, len: hd };
            kernels::attend(queries, kv, 0.088, &mut scores, &mut out);
        }
    });
    row("f32", s);
    let s = best(|| {
        for _ in 0..reps {
            let kv = KvHead { k: &k16[..], v: &v16[..], stride, offset: head * hd, len: hd };
            kernels::attend(queries, kv, 0.088, &mut scores, &mut out);
        }
    });
    row("f16", s);
    let s = best(|| {
        for _ in 0..reps {
            let values = KvHead { k: &[][..], v: &v16[..], stride, offset: head * hd, len: hd };
            kernels::attend_q8(queries, k8.head(head, hd), values, 0.088, &mut scores, &mut out);
        }
    });
    row("q8_0 (f16 values)", s);
}

/// Best of 3 timings of `f`, in seconds.
fn best(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn i2s_in_cache(cols: usize, reps: usize) {
    let row_bytes = cols / 4;
    // Codes 0..=2 only, as real files hold.
    let rows: Vec<u8> = (0..16 * row_bytes).map(|i| [0b0001_1000u8, 0b1001_0010, 0b0100_0110][i % 3]).collect();
    let acts: Vec<Vec<i8>> = (0..8).map(|t| (0..cols).map(|i| ((i * 31 + t * 7) % 200) as i8).collect()).collect();
    let prepared: Vec<Prepared> = acts.iter().map(|q| Prepared::new(q)).collect();
    println!("I2_S, 16 rows x {cols} in L1: tokens  multiply-adds/ns  ms per 2.08 G weights (2B4T's layers)");
    for n in [1usize, 2, 4, 8] {
        let a: Vec<&Prepared> = prepared[..n].iter().collect();
        let mut out = vec![0i32; 16 * n];
        let s = best(|| {
            for _ in 0..reps {
                kernels::i2s_rows_tokens(&rows, row_bytes, &a, &mut out);
                std::hint::black_box(&out);
            }
        });
        let per_ns = (reps * 16 * cols * n) as f64 / s / 1e9;
        println!("{n:>34} {per_ns:>17.1} {:>22.1}", 2.08e9 * n as f64 / per_ns / 1e6);
    }
}

/// TQ2_0 (`tq2_rows`), I2_S (`i2s_rows_prepared`) and Q6_K (`q6k_rows`,
/// the output matrix llama.cpp's quantizer writes) against one token: 2
/// groups of 16 rows in L1 (`reps` times), then `groups` x 16 rows from
/// memory, GB/s of weights; and the read bandwidth (one thread).
/// A xorshift stream: the benchmarks' weights and activations.
fn xorshift() -> impl FnMut() -> u64 {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// `rows` x `blocks` blocks of random weights in `format` ("TQ2_0",
/// "TQ2_0 regrouped", "I2_S", "Q6_K", "Q6_K permuted") as the model holds them. Any bit
/// pattern is a valid code except TQ2_0's 3 (codes 0..=2 as files hold)
/// and the f16 scales, set to small normals.
fn random_matrix(format: &str, rows: usize, blocks: usize, next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let row_bytes = match format {
        "I2_S" | "I2_S regrouped" => blocks * 64,
        "Q6_K" | "Q6_K permuted" => blocks * 210,
        _ => blocks * 66,
    };
    let mut m: Vec<u8> = (0..rows * row_bytes).map(|_| next() as u8).collect();
    let scale = |next: &mut dyn FnMut() -> u64| f16::from_f32((next() % 64) as f32 / 256.0 + 0.01).to_le_bytes();
    if format.starts_with("TQ2_0") {
        for block in m.chunks_exact_mut(66) {
            for b in &mut block[..64] {
                *b = (0..4).fold(0u8, |v, k| v | (((next() % 3) as u8) << (2 * k)));
            }
            block[64..].copy_from_slice(&scale(next));
        }
    }
    if format.starts_with("Q6_K") {
        for block in m.chunks_exact_mut(210) {
            block[208..].copy_from_slice(&scale(next));
        }
    }
    if format == "Q6_K permuted" {
        let mut p = vec![0u8; m.len()];
        kernels::permute_q6k(&m, &mut p);
        m = p;
    }
    if format == "TQ2_0 regrouped" {
        // As a model regroups its matrices at load (whole groups of 16
        // rows: no padding when `rows` is a multiple of 16).
        let mut g = vec![0u8; kernels::grouped_len(rows, blocks)];
        kernels::group_tq2(&m, blocks, &mut g);
        m = g;
    }
    if format == "I2_S regrouped" {
        let mut g = vec![0u8; kernels::i2s_grouped_len(rows, blocks)];
        kernels::group_i2s(&m, blocks, &mut g);
        m = g;
    }
    m
}

fn one_token_rows(cols: usize, groups: usize, reps: usize) {
    let blocks = cols / 256;
    let mut next = xorshift();
    let rows = 16 * groups;
    let q: Vec<i8> = (0..cols).map(|_| next() as i8).collect();
    let prepared = Prepared::new(&q);
    let bsums: Vec<i32> = q.chunks(256).map(|b| b.iter().map(|&x| i32::from(x)).sum()).collect();
    let q6k_sums = kernels::q6k_sums(&q);
    let d: Vec<f32> = (0..blocks).map(|_| (next() % 100) as f32 / 1e4 + 1e-3).collect();
    // Row bytes of each format, and how a matrix of `n` rows of it is timed.
    type Pass<'a> = Box<dyn FnMut(&[u8], usize) + 'a>;
    // The rows of the format with the fewest bytes a row (I2_S) in as
    // many bytes as TQ2_0's `rows` (see below).
    let most_rows = rows * 66 / 64;
    let (prepared, bsums, q6k_sums, d, q) = (&prepared, &bsums, &q6k_sums, &d, &q);
    let formats: Vec<(&str, usize, Pass)> = vec![
        ("TQ2_0", blocks * 66, {
            let mut out = vec![0f32; most_rows];
            Box::new(move |m: &[u8], n| {
                kernels::tq2_rows(m, blocks * 66, prepared, bsums, d, &mut out[..n]);
                std::hint::black_box(&out);
            })
        }),
        ("TQ2_0 regrouped", blocks * 66, {
            let mut out = vec![0f32; most_rows];
            Box::new(move |m: &[u8], n| {
                kernels::tq2_grouped_rows(m, blocks, 0, prepared, bsums, d, &mut out[..n]);
                std::hint::black_box(&out);
            })
        }),
        ("I2_S", cols / 4, {
            let mut out = vec![0i32; most_rows];
            Box::new(move |m: &[u8], n| {
                kernels::i2s_rows_prepared(m, cols / 4, prepared, &mut out[..n]);
                std::hint::black_box(&out);
            })
        }),
        ("Q6_K", blocks * 210, {
            let mut out = vec![0f32; most_rows];
            Box::new(move |m: &[u8], n| {
                kernels::q6k_rows(m, blocks * 210, q, q6k_sums, d, &mut out[..n]);
                std::hint::black_box(&out);
            })
        }),
        ("Q6_K permuted", blocks * 210, {
            let mut out = vec![0f32; most_rows];
            let q = kernels::permute_q6k_acts(q);
            Box::new(move |m: &[u8], n| {
                kernels::q6k_permuted_rows(m, blocks * 210, &q, q6k_sums, d, &mut out[..n]);
                std::hint::black_box(&out);
            })
        }),
    ];
    // Every format's matrix about as many bytes as the bandwidth is read
    // over: this VM's 480 MB L3 held part of a 336 MB matrix and none of a
    // 1,101 MB one, which made the smaller look 15% faster from memory.
    let bw_bytes = rows * blocks * 66;
    println!(
        "one token, {cols} columns, weights GB/s: format  32 rows in L1  {:.0} MB from memory  of the read bandwidth",
        bw_bytes as f64 / 1e6
    );
    let bw = bitnet_ternary::bench::read_bandwidth(bw_bytes, 1, 3, true) / 1e9;
    for (name, row_bytes, mut pass) in formats.into_iter().filter(|(name, ..)| held_here(name, cols)) {
        let rows = bw_bytes / row_bytes / 16 * 16;
        let m = random_matrix(name, rows, blocks, &mut next);
        // At 2560 columns the first 32 rows are the first 32 x row_bytes
        // bytes in every layout.
        let l1 = &m[..32 * row_bytes];
        let s_l1 = best(|| (0..reps).for_each(|_| pass(l1, 32)));
        let held = bitnet_ternary::bench::held_like_weights(&m).expect("memory for the matrix");
        drop(m);
        let s_mem = best(|| pass(&held, rows));
        let (in_l1, from_mem) = ((reps * 32 * row_bytes) as f64 / s_l1 / 1e9, held.len() as f64 / s_mem / 1e9);
        println!(
            "{name:>46} {in_l1:>14.1} {:>20} {:>20.0}%",
            format!("{from_mem:.1} ({:.0} MB)", held.len() as f64 / 1e6),
            100.0 * from_mem / bw
        );
    }
    println!("{:>46} {:>14} {:>20.1}", "read bandwidth", "", bw);
}

/// Whether the model holds matrices of `cols` columns in layout `name` on
/// this CPU: the regrouped and permuted layouts are the AVX-512 kernels'
/// (elsewhere their products run through a fallback that undoes the
/// layout, figures that describe nothing a model runs).
fn held_here(name: &str, cols: usize) -> bool {
    match name {
        "TQ2_0 regrouped" => kernels::tq2_grouping(),
        "I2_S regrouped" => kernels::i2s_grouping(cols),
        "Q6_K permuted" => kernels::q6k_permuting(),
        _ => true,
    }
}

/// The many-token products of the batched decode (TQ2_0 regrouped, and
/// Q6_K as output matrices are) for 1, 2, 4, 8 and 16 tokens: multiply-adds
/// per ns with 32 rows in L1, and ms per pass over a matrix from memory
/// with its GB/s of weights. Time flat in the tokens from memory means
/// the step is bound by the reads; growing, by the arithmetic.
fn many_token_rows(cols: usize, groups: usize, reps: usize) {
    let blocks = cols / 256;
    let mut next = xorshift();
    let rows = 16 * groups;
    let qs: Vec<Vec<i8>> = (0..16).map(|_| (0..cols).map(|_| next() as i8).collect()).collect();
    let prepared: Vec<Prepared> = qs.iter().map(|q| Prepared::new(q)).collect();
    let bsums: Vec<Vec<i32>> =
        qs.iter().map(|q| q.chunks(256).map(|b| b.iter().map(|&x| i32::from(x)).sum()).collect()).collect();
    let sums: Vec<Vec<i16>> = qs.iter().map(|q| kernels::q6k_sums(q)).collect();
    let ds: Vec<Vec<f32>> =
        (0..16).map(|_| (0..blocks).map(|_| (next() % 100) as f32 / 1e4 + 1e-3).collect()).collect();
    println!("{cols} columns, tokens at once: format  tokens  32 rows in L1 multiply-adds/ns  {rows} rows from memory: ms  GB/s");
    let formats = [
        ("TQ2_0 regrouped", blocks * 66),
        ("I2_S regrouped", blocks * 64),
        ("Q6_K", blocks * 210),
        ("Q6_K permuted", blocks * 210),
    ];
    let permuted_qs: Vec<Vec<i8>> = qs.iter().map(|q| kernels::permute_q6k_acts(q)).collect();
    for (name, row_bytes) in formats.into_iter().filter(|(name, _)| held_here(name, cols)) {
        let m = random_matrix(name, rows, blocks, &mut next);
        let held = bitnet_ternary::bench::held_like_weights(&m[..rows * row_bytes]).expect("memory for the matrix");
        let l1 = &m[..32 * row_bytes];
        for n in [1usize, 2, 4, 8, 16] {
            let mut out = vec![0f32; rows * n];
            let mut pass = |m: &[u8], k: usize| {
                let out = &mut out[..k * n];
                if name.starts_with("Q6_K") {
                    let s: Vec<&[i16]> = sums[..n].iter().map(|s| &s[..]).collect();
                    let d: Vec<&[f32]> = ds[..n].iter().map(|d| &d[..]).collect();
                    if name == "Q6_K" {
                        let q: Vec<&[i8]> = qs[..n].iter().map(|q| &q[..]).collect();
                        kernels::q6k_rows_tokens(m, row_bytes, &q, &s, &d, out);
                    } else {
                        let q: Vec<&[i8]> = permuted_qs[..n].iter().map(|q| &q[..]).collect();
                        kernels::q6k_permuted_rows_tokens(m, row_bytes, &q, &s, &d, out);
                    }
                } else if name == "I2_S regrouped" {
                    let a: Vec<&Prepared> = prepared[..n].iter().collect();
                    let mut dots = vec![0i32; out.len()];
                    kernels::i2s_grouped_rows_tokens(m, blocks, 0, &a, &kernels::Staging::default(), &mut dots);
                    std::hint::black_box(&dots);
                } else {
                    let a: Vec<&Prepared> = prepared[..n].iter().collect();
                    let b: Vec<&[i32]> = bsums[..n].iter().map(|b| &b[..]).collect();
                    let d: Vec<&[f32]> = ds[..n].iter().map(|d| &d[..]).collect();
                    kernels::tq2_grouped_rows_tokens(m, blocks, 0, &a, &b, &d, &kernels::Staging::default(), out);
                }
                std::hint::black_box(&out);
            };
            let s_l1 = best(|| (0..reps / n).for_each(|_| pass(l1, 32)));
            let s_mem = best(|| pass(&held, rows));
            let macs = ((reps / n) * 32 * cols * n) as f64 / s_l1 / 1e9;
            println!("{name:>46} {n:>7} {macs:>33.1} {:>26.1} {:>5.1}", s_mem * 1e3, held.len() as f64 / s_mem / 1e9);
        }
    }
}

fn f16_rows(rows: usize, cols: usize) -> Vec<f16> {
    (0..rows * cols).map(|i| f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5)).collect()
}

fn vectors(cols: usize) -> Vec<Vec<f32>> {
    (0..8).map(|j| (0..cols).map(|i| ((i * 31 + j) % 100) as f32 / 100.0).collect()).collect()
}

fn f16_in_cache(cols: usize, reps: usize) {
    let w = f16_rows(8, cols);
    let xs = vectors(cols);
    println!("F16, 8 rows x {cols} in L1: vectors  FMAs/ns");
    for n in [1usize, 2, 4, 8] {
        let vs: Vec<&[f32]> = xs[..n].iter().map(|x| &x[..]).collect();
        let mut out = vec![0f32; 8 * n];
        let s = best(|| {
            for _ in 0..reps {
                kernels::f16_rows_many(&w, cols, &vs, &mut out);
                std::hint::black_box(&out);
            }
        });
        println!("{n:>34} {:>8.1}", (reps * 8 * cols * n) as f64 / s / 1e9);
    }
}

fn f16_from_memory(rows: usize, cols: usize) {
    let w = f16_rows(rows, cols);
    let xs = vectors(cols);
    let block = 256;
    println!(
        "F16, {rows} x {cols} ({:.0} MB) from memory: vectors  ms per pass  weights GB/s",
        (rows * cols * 2) as f64 / 1e6
    );
    for n in [1usize, 2, 4, 8] {
        let vs: Vec<&[f32]> = xs[..n].iter().map(|x| &x[..]).collect();
        let mut out = vec![0f32; block * n];
        let s = best(|| {
            for r in (0..rows).step_by(block) {
                let m = block.min(rows - r);
                kernels::f16_rows_many(&w[r * cols..(r + m) * cols], cols, &vs, &mut out[..m * n]);
                std::hint::black_box(&out);
            }
        });
        println!("{n:>45} {:>12.1} {:>12.1}", s * 1e3, (rows * cols * 2) as f64 / s / 1e9);
    }
}
