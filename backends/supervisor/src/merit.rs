//! Chosen on merit: the CPU candidates (bundled CPU builds, a llama-server
//! on PATH, the built-in engine) ordered by how fast they measurably run
//! this model format on this kind of CPU, instead of by catalog rank alone.
//!
//! Figures come from two places, the first that covers two or more of the
//! candidates wins:
//! 1. this machine's own calibration (`bitnet-host calibrate`: each
//!    candidate started on the user's model, timed by its own `timings`);
//! 2. the catalog's `[[measured]]` figures, shipped per CPU family (the
//!    architecture and the kernels the built-in engine picks there, which
//!    is what sets the engine's speed against a fixed AVX2/NEON build).
//!
//! Figures are compared only with figures of the same source, format and
//! family: tokens/s of one machine say nothing about another's, but which
//! build is faster on a family holds across its machines. GPU candidates
//! and a remote server keep their catalog places (they sit above the CPU
//! ones); candidates without figures follow the measured ones in catalog
//! order. Pure: the host reads the files and passes what holds here.

use serde::{Deserialize, Serialize};

use crate::catalog::GpuApi;
use crate::select::{Candidate, Launch};

/// The turn figures are compared on: a prompt the prompt cache did not
/// hold (a new conversation, or the new part of a long one) and an answer.
pub const TURN_PROMPT_TOKENS: f64 = 256.0;
pub const TURN_ANSWER_TOKENS: f64 = 128.0;

/// How fast one candidate ran one weight format on one CPU family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// A catalog variant id, `builtin` or `path`.
    pub candidate: String,
    /// `<arch>-<kernels>`, as [`family`] makes it: `x86_64-avx512vnni`.
    pub family: String,
    /// The model's weight format, lower case (`i2_s`).
    pub format: String,
    /// Prompt processing, tokens/s (the server's `prompt_per_second`).
    pub prompt_tok_s: f64,
    /// Decoding, tokens/s (the server's `predicted_per_second`).
    pub decode_tok_s: f64,
    /// Threads the server ran with.
    pub threads: u32,
    /// Where the figures come from: the benchmark and machine, or the
    /// calibration run (its date and model).
    pub source: String,
}

impl Measured {
    /// Seconds for the reference turn ([`TURN_PROMPT_TOKENS`] in,
    /// [`TURN_ANSWER_TOKENS`] out).
    pub fn turn_secs(&self) -> f64 {
        TURN_PROMPT_TOKENS / self.prompt_tok_s + TURN_ANSWER_TOKENS / self.decode_tok_s
    }

    /// Why the figures cannot be used, if they cannot.
    pub fn problem(&self) -> Option<&'static str> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !ok(self.prompt_tok_s) || !ok(self.decode_tok_s) {
            Some("prompt_tok_s and decode_tok_s must be positive numbers")
        } else if self.threads == 0 {
            Some("threads must be at least 1")
        } else {
            None
        }
    }
}

/// The CPU family figures are kept for: the architecture and the kernel
/// set the built-in engine runs there (`bitnet_ternary::kernels::Isa::key`).
pub fn family(arch: &str, kernels: &str) -> String {
    format!("{arch}-{kernels}")
}

/// What the CPU candidates' order rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Catalog rank: no figures cover two of them.
    Catalog,
    /// The catalog's figures for this CPU family.
    Shipped,
    /// This machine's calibration.
    Calibrated,
}

/// How the CPU candidates were ordered, for `select --explain` and its JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Merit {
    pub basis: Basis,
    pub family: Option<String>,
    /// The figures used, fastest first (empty for [`Basis::Catalog`]).
    pub figures: Vec<Measured>,
    /// One line on why, for people.
    pub why: String,
}

/// Whether a candidate competes on CPU speed: it computes on this
/// machine's CPU (no GPU, not a remote server).
pub fn on_cpu(c: &Candidate) -> bool {
    c.gpu == GpuApi::None && !matches!(c.launch, Launch::Remote { .. })
}

/// Figures in `pool` for the candidates at `slots`, one per candidate
/// (the first listed wins).
fn covering(pool: &[Measured], cands: &[Candidate], slots: &[usize], format: &str, family: &str) -> Vec<Measured> {
    let mut out: Vec<Measured> = Vec::new();
    for m in pool {
        let listed = slots.iter().any(|&i| cands[i].id == m.candidate);
        let fresh = !out.iter().any(|o| o.candidate == m.candidate);
        if listed && fresh && m.format == format && m.family == family && m.problem().is_none() {
            out.push(m.clone());
        }
    }
    out
}

/// Reorders the CPU candidates in `cands` (already in catalog order) by
/// their figures; the other candidates keep their places.
pub fn order(
    cands: &mut [Candidate],
    format: Option<&str>,
    family: Option<&str>,
    calibrated: &[Measured],
    shipped: &[Measured],
) -> Merit {
    let slots: Vec<usize> = (0..cands.len()).filter(|&i| on_cpu(&cands[i])).collect();
    let catalog = |why: String| Merit { basis: Basis::Catalog, family: family.map(String::from), figures: vec![], why };
    if slots.len() < 2 {
        return catalog("catalog order: fewer than two candidates run on the CPU".into());
    }
    let (Some(format), Some(family)) = (format, family) else {
        return catalog("catalog order: figures are per model format, and no model is named".into());
    };
    let here = covering(calibrated, cands, &slots, format, family);
    let (basis, mut figures) = if here.len() >= 2 {
        (Basis::Calibrated, here)
    } else {
        let ours = covering(shipped, cands, &slots, format, family);
        if ours.len() < 2 {
            return catalog(format!(
                "catalog order: no figures for {format} on {family} cover two of the CPU candidates \
                 (`bitnet-host calibrate` measures them here)"
            ));
        }
        (Basis::Shipped, ours)
    };
    figures.sort_by(|a, b| a.turn_secs().total_cmp(&b.turn_secs()));
    let mut reordered: Vec<Candidate> = Vec::with_capacity(slots.len());
    for m in &figures {
        if let Some(&i) = slots.iter().find(|&&i| cands[i].id == m.candidate) {
            reordered.push(cands[i].clone());
        }
    }
    for &i in &slots {
        if !figures.iter().any(|m| m.candidate == cands[i].id) {
            reordered.push(cands[i].clone());
        }
    }
    for (&i, c) in slots.iter().zip(reordered) {
        cands[i] = c;
    }
    let (best, next) = (&figures[0], &figures[1]);
    let whose = match basis {
        Basis::Calibrated => "measured on this machine",
        _ => "the catalog's figures for this CPU family",
    };
    let why = format!(
        "CPU candidates ordered by speed on {format}, {whose} ({family}): {} answers a {}+{}-token turn in \
         {:.1} s, {:.2}x faster than {} ({:.1} s)",
        best.candidate,
        TURN_PROMPT_TOKENS,
        TURN_ANSWER_TOKENS,
        best.turn_secs(),
        next.turn_secs() / best.turn_secs(),
        next.candidate,
        next.turn_secs()
    );
    Merit { basis, family: Some(family.to_string()), figures, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, gpu: GpuApi, launch: Launch) -> Candidate {
        Candidate { id: id.into(), launch, gpu, rank: 0, gpu_layers: false, args: None }
    }

    fn bundled(id: &str, gpu: GpuApi) -> Candidate {
        cand(id, gpu, Launch::Bundled { path: format!("/b/{id}").into() })
    }

    fn fig(id: &str, family: &str, pp: f64, tg: f64) -> Measured {
        Measured {
            candidate: id.into(),
            family: family.into(),
            format: "i2_s".into(),
            prompt_tok_s: pp,
            decode_tok_s: tg,
            threads: 2,
            source: "test".into(),
        }
    }

    fn ids(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.id.as_str()).collect()
    }

    const FAM: &str = "x86_64-avx512vnni";

    fn list() -> Vec<Candidate> {
        vec![
            bundled("vulkan", GpuApi::Vulkan),
            bundled("cpu", GpuApi::None),
            cand("path", GpuApi::None, Launch::Path { path: "/usr/bin/llama-server".into() }),
            cand("builtin", GpuApi::None, Launch::Builtin),
        ]
    }

    #[test]
    fn the_faster_cpu_candidate_moves_up_and_the_gpu_keeps_its_place() {
        let mut c = list();
        let shipped = [fig("cpu", FAM, 44.4, 18.3), fig("builtin", FAM, 57.5, 19.0)];
        let m = order(&mut c, Some("i2_s"), Some(FAM), &[], &shipped);
        assert_eq!(m.basis, Basis::Shipped);
        // Unmeasured `path` follows the measured ones.
        assert_eq!(ids(&c), ["vulkan", "builtin", "cpu", "path"]);
        assert_eq!(ids_of(&m.figures), ["builtin", "cpu"]);
        assert!(m.why.contains("builtin answers") && m.why.contains("faster than cpu"), "{}", m.why);
    }

    fn ids_of(f: &[Measured]) -> Vec<&str> {
        f.iter().map(|m| m.candidate.as_str()).collect()
    }

    #[test]
    fn a_slower_prompt_can_lose_despite_faster_decoding() {
        // 256/20 + 128/20 = 19.2 s against 256/60 + 128/18 = 11.4 s.
        let mut c = list();
        let shipped = [fig("cpu", FAM, 60.0, 18.0), fig("builtin", FAM, 20.0, 20.0)];
        order(&mut c, Some("i2_s"), Some(FAM), &[], &shipped);
        assert_eq!(ids(&c), ["vulkan", "cpu", "builtin", "path"]);
    }

    #[test]
    fn calibration_here_overrides_the_catalog_and_needs_two_candidates() {
        let shipped = [fig("cpu", FAM, 44.4, 18.3), fig("builtin", FAM, 57.5, 19.0)];
        // This machine measured the bundled build faster.
        let here = [fig("builtin", FAM, 30.0, 10.0), fig("cpu", FAM, 45.0, 18.0)];
        let mut c = list();
        let m = order(&mut c, Some("i2_s"), Some(FAM), &here, &shipped);
        assert_eq!((m.basis, ids(&c)), (Basis::Calibrated, vec!["vulkan", "cpu", "builtin", "path"]));
        // One candidate calibrated here is no comparison: the shipped figures decide.
        let mut c = list();
        let m = order(&mut c, Some("i2_s"), Some(FAM), &here[..1], &shipped);
        assert_eq!((m.basis, ids(&c)), (Basis::Shipped, vec!["vulkan", "builtin", "cpu", "path"]));
    }

    #[test]
    fn other_families_formats_and_bad_figures_do_not_count() {
        let mut c = list();
        let other = [fig("cpu", "x86_64-avx2", 60.0, 30.0), fig("builtin", "x86_64-avx2", 10.0, 5.0)];
        let m = order(&mut c, Some("i2_s"), Some(FAM), &[], &other);
        assert_eq!((m.basis, ids(&c)), (Basis::Catalog, vec!["vulkan", "cpu", "path", "builtin"]));
        assert!(m.why.contains("bitnet-host calibrate"), "{}", m.why);
        let m = order(&mut c, Some("tq2_0"), Some("x86_64-avx2"), &[], &other);
        assert_eq!(m.basis, Basis::Catalog);
        let bad = [fig("cpu", FAM, f64::NAN, 30.0), fig("builtin", FAM, 10.0, 5.0)];
        assert_eq!(order(&mut c, Some("i2_s"), Some(FAM), &[], &bad).basis, Basis::Catalog);
        let none = order(&mut c, None, Some(FAM), &[], &other);
        assert!(none.why.contains("no model is named"), "{}", none.why);
        assert_eq!(ids(&c), ["vulkan", "cpu", "path", "builtin"]);
    }

    #[test]
    fn a_single_cpu_candidate_is_left_alone() {
        let mut c = vec![bundled("vulkan", GpuApi::Vulkan), cand("builtin", GpuApi::None, Launch::Builtin)];
        let shipped = [fig("builtin", FAM, 1.0, 1.0), fig("vulkan", FAM, 100.0, 100.0)];
        let m = order(&mut c, Some("i2_s"), Some(FAM), &[], &shipped);
        assert_eq!((m.basis, ids(&c)), (Basis::Catalog, vec!["vulkan", "builtin"]));
    }
}
