//! What the benchmarks share: their generated models, which weight
//! formats a run measures (`BITNET_BENCH_FORMATS`), and the median.

use std::path::PathBuf;

use bitnet_ternary::writer::{random_model_with, write_atomic, OutputMatrix, Shape, TernaryFormat};

/// The ternary formats the benchmarks generate, by their GGUF names.
const FORMATS: [(&str, TernaryFormat); 3] =
    [("i2_s", TernaryFormat::I2S), ("tq2_0", TernaryFormat::TQ2_0), ("tq1_0", TernaryFormat::TQ1_0)];

/// The formats `BITNET_BENCH_FORMATS` names (comma-separated), else
/// `default`, in the order given. An unknown name stops the run with the
/// list of known ones.
pub fn formats(default: &[&str]) -> Vec<(&'static str, TernaryFormat)> {
    let asked = std::env::var("BITNET_BENCH_FORMATS").ok();
    let names: Vec<String> = match &asked {
        Some(list) => list.split(',').map(|s| s.trim().to_lowercase()).collect(),
        None => default.iter().map(|s| s.to_string()).collect(),
    };
    names
        .iter()
        .map(|n| {
            *FORMATS
                .iter()
                .find(|(name, _)| name == n)
                .unwrap_or_else(|| panic!("BITNET_BENCH_FORMATS: unknown format {n} (i2_s, tq2_0, tq1_0)"))
        })
        .collect()
}

/// `target/bench-models/<stem>-<format>.gguf` (I2_S as `i2s`), random
/// ternary weights from seed 42 in `shape`, written once (atomically) and
/// reused by every later run and every bench that asks for it.
pub fn model(stem: &str, shape: &Shape, format: TernaryFormat) -> PathBuf {
    model_with(stem, shape, format, OutputMatrix::Tied)
}

/// `model` with the output matrix `output`: `<stem>-<format>-q6k.gguf` for
/// a Q6_K one (llama.cpp's quantizer's choice for TQ1_0 / TQ2_0 files).
pub fn model_with(stem: &str, shape: &Shape, format: TernaryFormat, output: OutputMatrix) -> PathBuf {
    let tag = match format {
        TernaryFormat::I2S => "i2s",
        TernaryFormat::TQ2_0 => "tq2_0",
        TernaryFormat::TQ1_0 => "tq1_0",
        TernaryFormat::F16 => "f16",
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    let suffix = if output == OutputMatrix::Q6K { "-q6k" } else { "" };
    let path = dir.join(format!("{stem}-{tag}{suffix}.gguf"));
    if !path.exists() {
        eprintln!("generating {} ...", path.display());
        write_atomic(&path, &random_model_with(shape, 42, format, output)).expect("write the bench model");
    }
    path
}

/// The middle of the runs of a measurement (the upper middle of an even
/// count): this VM's timings move 10-20% between runs, so benches report
/// medians.
pub fn median(mut runs: Vec<f64>) -> f64 {
    assert!(!runs.is_empty(), "median of no runs");
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}
