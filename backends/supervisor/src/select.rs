//! Selection: a pure function of (hardware report, catalog, installed files,
//! model format, preferences) -> ordered candidates, and every skipped
//! variant with the reason. No I/O: the caller says which files exist and
//! what `which llama-server` found.

use std::path::PathBuf;

use bitnet_probe::{HardwareReport, Section};
use serde::Serialize;

use crate::catalog::{parse_capability, Catalog, GpuApi, Variant};
use crate::merit::{Measured, Merit};

/// Formats the built-in engine loads.
pub const BUILTIN_FORMATS: &[&str] = &["f32", "f16", "bf16", "q8_0", "q6_k", "tq1_0", "tq2_0", "i2_s"];

/// Ranks of the candidates that are not in the catalog.
const RANK_REMOTE: i32 = 100;
const RANK_PATH: i32 = 50;
const RANK_BUILTIN: i32 = 0;

/// What the user configured that bears on the choice.
#[derive(Debug, Clone, Default)]
pub struct Preferences {
    /// Use only this candidate id.
    pub force: Option<String>,
    /// An OpenAI-compatible base URL to use first.
    pub remote_url: Option<String>,
    /// Whether a `llama-server` on PATH may be used.
    pub allow_path_server: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Launch {
    /// A bundled server build at this path.
    Bundled { path: PathBuf },
    /// `bitnet-host runner`, the host's own engine.
    Builtin,
    /// An OpenAI-compatible server somewhere else.
    Remote { url: String },
    /// A llama-server the user already has on PATH.
    Path { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub launch: Launch,
    pub gpu: GpuApi,
    pub rank: i32,
    /// Whether it takes --n-gpu-layers.
    pub gpu_layers: bool,
    /// Argument template (None: llama-server's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// Best first; the supervisor tries them in order.
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<Skipped>,
    /// What the CPU candidates' order rests on.
    pub merit: Merit,
}

/// What selection reads besides the report and catalog.
pub struct Inputs<'a> {
    pub report: &'a HardwareReport,
    pub catalog: &'a Catalog,
    /// Whether a catalog file is installed, and where.
    pub installed: &'a dyn Fn(&str) -> Option<PathBuf>,
    /// The model's weight format (lower case), when a model is named.
    pub model_format: Option<&'a str>,
    pub prefs: &'a Preferences,
    /// What `which llama-server` found.
    pub path_server: Option<PathBuf>,
    /// This CPU's family for the speed figures ([`crate::merit::family`]).
    pub cpu_family: Option<&'a str>,
    /// This machine's own calibration, entries that still hold (same
    /// machine, binaries and threads).
    pub calibrated: &'a [Measured],
}

/// Why variant `v` cannot run here, or None when it can. A variant the
/// config forces may use a software Vulkan device (lavapipe, SwiftShader):
/// slow, but the user asked for it; nothing else is waived.
fn unfit(v: &Variant, report: &HardwareReport, format: Option<&str>, forced: bool) -> Option<String> {
    if v.os != report.os.family || v.arch != report.cpu.arch {
        return Some(format!("built for {}/{}, this is {}/{}", v.os, v.arch, report.os.family, report.cpu.arch));
    }
    let missing: Vec<&str> = v.cpu_features.iter().filter(|f| !report.cpu.has(f)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Some(format!("needs CPU feature {} (it would die of SIGILL here)", missing.join(", ")));
    }
    if let Some(f) = format {
        if !v.formats.iter().any(|x| x == f) {
            return Some(format!("cannot load {f} models"));
        }
    }
    match v.gpu {
        GpuApi::None => None,
        GpuApi::Cuda => match &report.vendor.cuda {
            Section::Unavailable { reason } => Some(format!("needs an NVIDIA GPU: {reason}")),
            Section::Available(cuda) => {
                let need = v.min_compute_capability.as_deref().and_then(parse_capability).unwrap_or((0, 0));
                let best = cuda
                    .devices
                    .iter()
                    .filter_map(|d| d.compute_capability.as_deref().and_then(parse_capability))
                    .max();
                match best {
                    Some(b) if b >= need => None,
                    Some(b) => Some(format!(
                        "needs compute capability {}.{} or newer; the best GPU here has {}.{}",
                        need.0, need.1, b.0, b.1
                    )),
                    None => Some("no NVIDIA GPU reports its compute capability".into()),
                }
            }
        },
        GpuApi::Vulkan => match &report.vendor.vulkan {
            Section::Unavailable { reason } => Some(format!("needs a Vulkan GPU: {reason}")),
            Section::Available(vk) => {
                if vk.devices.iter().any(|d| d.counts_as_gpu) || (forced && !vk.devices.is_empty()) {
                    None
                } else {
                    let names: Vec<&str> = vk.devices.iter().map(|d| d.name.as_str()).collect();
                    Some(format!("needs a Vulkan GPU; only software devices here ({})", names.join(", ")))
                }
            }
        },
        GpuApi::Metal => report.vendor.metal.reason().map(|r| format!("needs Metal: {r}")),
    }
}

pub fn select(inp: &Inputs) -> Selection {
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    let mut consider = |c: Candidate, skipped: &mut Vec<Skipped>| match &inp.prefs.force {
        Some(f) if *f != c.id => skipped.push(Skipped { id: c.id, reason: format!("the config forces `{f}`") }),
        _ => candidates.push(c),
    };

    match &inp.prefs.remote_url {
        Some(url) => consider(
            Candidate {
                id: "remote".into(),
                launch: Launch::Remote { url: url.clone() },
                gpu: GpuApi::None,
                rank: RANK_REMOTE,
                gpu_layers: false,
                args: None,
            },
            &mut skipped,
        ),
        None => skipped.push(Skipped { id: "remote".into(), reason: "no remote URL configured".into() }),
    }

    for v in &inp.catalog.variants {
        let forced = inp.prefs.force.as_deref() == Some(v.id.as_str());
        if let Some(reason) = unfit(v, inp.report, inp.model_format, forced) {
            skipped.push(Skipped { id: v.id.clone(), reason });
            continue;
        }
        match (inp.installed)(&v.file) {
            Some(path) => consider(
                Candidate {
                    id: v.id.clone(),
                    launch: Launch::Bundled { path },
                    gpu: v.gpu,
                    rank: v.rank,
                    gpu_layers: v.gpu_layers,
                    args: v.args.clone(),
                },
                &mut skipped,
            ),
            None => {
                skipped.push(Skipped { id: v.id.clone(), reason: format!("fits, but {} is not installed", v.file) })
            }
        }
    }

    match (&inp.path_server, inp.prefs.allow_path_server) {
        (Some(path), true) => consider(
            Candidate {
                id: "path".into(),
                launch: Launch::Path { path: path.clone() },
                gpu: GpuApi::None,
                rank: RANK_PATH,
                gpu_layers: true,
                args: None,
            },
            &mut skipped,
        ),
        (Some(path), false) => skipped.push(Skipped {
            id: "path".into(),
            reason: format!("{} is on PATH but not allowed (allow_path_server = false)", path.display()),
        }),
        (None, _) => skipped.push(Skipped { id: "path".into(), reason: "no llama-server on PATH".into() }),
    }

    let builtin_fits = inp.model_format.is_none_or(|f| BUILTIN_FORMATS.contains(&f));
    if builtin_fits {
        consider(
            Candidate {
                id: "builtin".into(),
                launch: Launch::Builtin,
                gpu: GpuApi::None,
                rank: RANK_BUILTIN,
                gpu_layers: false,
                args: None,
            },
            &mut skipped,
        );
    } else {
        skipped.push(Skipped {
            id: "builtin".into(),
            reason: format!("cannot load {} models", inp.model_format.unwrap_or("?")),
        });
    }

    // Stable: equal ranks keep catalog order.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.rank));
    let merit =
        crate::merit::order(&mut candidates, inp.model_format, inp.cpu_family, inp.calibrated, &inp.catalog.measured);
    Selection { candidates, skipped, merit }
}
