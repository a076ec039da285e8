#![allow(clippy::print_stdout)] // a benchmark prints its figures
//! The built-in engine on generated models with BitNet b1.58 2B4T's shape
//! (hidden 2560, 30 layers, 20/5 heads, FFN 6912, vocab 128256, F16 output
//! matrix), I2_S (bitnet.cpp's format) and TQ2_0 (llama.cpp's), in one run: this machine's read bandwidth,
//! pp/tg tokens/s at 1 thread and at all cores, bytes read per token, and
//! the fraction of the bandwidth ceiling decoding reaches.
//!
//! cargo bench -p bitnet-host-tests --bench engine -- --bench
//! (quick run on a small shape without --bench; the 2B4T-shaped file, about
//! 1.2 GB, is generated once under target/bench-models/)

use std::path::PathBuf;

use bitnet_ternary::bench::{read_bandwidth, speed};
use bitnet_ternary::model::Model;
use bitnet_ternary::writer::{random_model_as, write_atomic, Shape, TernaryFormat};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (shape, stem, p, n) = if full {
        (Shape::b158_2b4t(), "b158-2b4t-shape", 128, 128)
    } else {
        (Shape::default_model(), "b158-small", 16, 16)
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bw_bytes = if full { 2 << 30 } else { 256 << 20 };
    let plain = (read_bandwidth(bw_bytes, 1, 3, false), read_bandwidth(bw_bytes, cores, 3, false));
    let bw1 = read_bandwidth(bw_bytes, 1, 3, true).max(plain.0);
    let bwn = read_bandwidth(bw_bytes, cores, 3, true).max(plain.1);
    println!("read bandwidth (plain sum): {:.1} GB/s on 1 thread, {:.1} GB/s on {cores}", plain.0 / 1e9, plain.1 / 1e9);
    println!(
        "read bandwidth (prefetching sum, the ceiling): {:.1} GB/s on 1 thread, {:.1} GB/s on {cores}",
        bw1 / 1e9,
        bwn / 1e9
    );
    for (format, suffix) in [(TernaryFormat::I2S, "i2s"), (TernaryFormat::TQ2_0, "tq2_0")] {
        let path = dir.join(format!("{stem}-{suffix}.gguf"));
        if !path.exists() {
            println!("generating {} ...", path.display());
            write_atomic(&path, &random_model_as(&shape, 42, format)).unwrap();
        }
        run(&path, p, n, cores, (bw1, bwn));
    }
}

fn run(path: &std::path::Path, p: usize, n: usize, cores: usize, (bw1, bwn): (f64, f64)) {
    let m = Model::load(path, None).unwrap();
    let bytes = m.bytes_per_token() as f64;
    println!(
        "model: {} layers x {} hidden, {} weights + F16 output matrix: {:.0} MB read per token; kernels {:?}",
        m.hp.n_layer,
        m.hp.n_embd,
        m.format,
        bytes / 1e6,
        bitnet_ternary::kernels::isa()
    );
    println!("threads  pp{p} tok/s  tg{n} tok/s  ceiling tok/s  of ceiling");
    for (t, bw) in [(1, bw1), (cores, bwn)] {
        let s = speed(&m, p, n, t);
        let ceiling = bw / bytes;
        println!(
            "{t:>7} {:>12.2} {:>12.2} {:>14.2} {:>10.0}%",
            s.pp_tokens_per_s,
            s.tg_tokens_per_s,
            ceiling,
            100.0 * s.tg_tokens_per_s / ceiling
        );
    }
}
