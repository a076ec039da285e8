#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The built-in engine on generated models with BitNet b1.58 2B4T's shape
//! (hidden 2560, 30 layers, 20/5 heads, FFN 6912, vocab 128256), I2_S
//! (bitnet.cpp's format), TQ2_0 and TQ1_0 (llama.cpp's), each with the F16
//! output matrix (tied to the embedding, as 2B4T's release) and with a
//! Q6_K one (as llama.cpp's quantizer writes TQ files), in one run: this
//! machine's read bandwidth, pp/tg tokens/s at 1 thread and at all cores,
//! bytes read per token, and the fraction of the bandwidth ceiling
//! decoding reaches.
//!
//! cargo bench -p bitnet-host-tests --bench engine -- --bench
//! (BITNET_BENCH_FORMATS=i2_s,tq2_0,tq1_0 picks formats; default all;
//! BITNET_BENCH_OUTPUTS=f16,q6k picks output matrices; default both)
//! (quick run on a small shape without --bench; the 2B4T-shaped file, about
//! 1.2 GB, is generated once under target/bench-models/)

use bitnet_host_tests::bench::median;
use bitnet_ternary::bench::{read_bandwidth, speed};
use bitnet_ternary::model::Model;
use bitnet_ternary::writer::{OutputMatrix, Shape};

/// Rounds per thread count: this VM's bandwidth moves 10-20% between
/// runs, so each decode run is paired with a bandwidth measurement taken
/// just before it and the fraction is the median over the rounds.
const ROUNDS: usize = 5;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (shape, stem, p, n) = if full {
        (Shape::b158_2b4t(), "b158-2b4t-shape", 128, 128)
    } else {
        (Shape::default_model(), "b158-small", 16, 16)
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bw_bytes = if full { 2 << 30 } else { 256 << 20 };
    let outputs: Vec<OutputMatrix> = std::env::var("BITNET_BENCH_OUTPUTS")
        .unwrap_or_else(|_| "f16,q6k".into())
        .split(',')
        .map(|o| match o.trim() {
            "f16" => OutputMatrix::Tied,
            "q6k" => OutputMatrix::Q6K,
            other => panic!("BITNET_BENCH_OUTPUTS: unknown output matrix {other} (f16, q6k)"),
        })
        .collect();
    for (_, format) in bitnet_host_tests::bench::formats(&["i2_s", "tq2_0", "tq1_0"]) {
        for &output in &outputs {
            let path = bitnet_host_tests::bench::model_with(stem, &shape, format, output);
            run(&path, p, n, [1, cores], bw_bytes);
        }
    }
}

/// The ceiling now: the faster of a plain sum and one that prefetches as
/// the kernels do (on this VM the plain sum reads slower than the
/// prefetching kernels, so it is not the limit), best of 3. (plain, ceiling).
fn bandwidth(bytes: usize, threads: usize) -> (f64, f64) {
    let plain = read_bandwidth(bytes, threads, 3, false);
    (plain, read_bandwidth(bytes, threads, 3, true).max(plain))
}

fn run(path: &std::path::Path, p: usize, n: usize, threads: [usize; 2], bw_bytes: usize) {
    let m = Model::load(path, None).unwrap();
    let bytes = m.bytes_per_token() as f64;
    // A TQ1_0 file held unpacked reads more than its own packing would:
    // its ceiling (and the fraction of it) is reckoned on the file's
    // bytes, the figure llama.cpp's packed TQ1_0 is measured against.
    let file_bytes = m.file_bytes_per_token() as f64;
    let held = match m.weights_format() {
        f if f == m.format => String::new(),
        f => format!(" held as {f} ({:.0} MB read per token)", bytes / 1e6),
    };
    println!(
        "model: {} layers x {} hidden, {} weights + {} output matrix: {:.0} MB per token in the file's format{held}; kernels {}",
        m.hp.n_layer,
        m.hp.n_embd,
        m.format,
        m.output_format(),
        file_bytes / 1e6,
        bitnet_ternary::kernels::in_use()
    );
    let bytes = file_bytes;
    println!(
        "threads  pp{p} tok/s  tg{n} tok/s  plain GB/s  ceiling GB/s  ceiling tok/s  of ceiling  (median of {ROUNDS}; each round: bandwidth, then decode)"
    );
    for t in threads {
        let (mut pp, mut tg, mut plain, mut ceil, mut frac) = (vec![], vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            let (pl, bw) = bandwidth(bw_bytes, t);
            // The prompt is timed in the first round only (one prompt token after).
            let s = speed(&m, 0, if round == 0 { p } else { 1 }, n, t);
            if round == 0 {
                pp.push(s.pp_tokens_per_s);
            }
            frac.push(s.tg_tokens_per_s * bytes / bw);
            plain.push(pl);
            ceil.push(bw);
            tg.push(s.tg_tokens_per_s);
        }
        println!(
            "{t:>7} {:>12.2} {:>12.2} {:>11.1} {:>13.1} {:>14.2} {:>10.0}%   rounds: {}",
            median(pp),
            median(tg.clone()),
            median(plain) / 1e9,
            median(ceil.clone()) / 1e9,
            median(ceil) / bytes,
            100.0 * median(frac.clone()),
            frac.iter().map(|f| format!("{:.0}%", 100.0 * f)).collect::<Vec<_>>().join(" ")
        );
    }
}
