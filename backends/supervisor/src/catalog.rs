//! The catalog of bundled server builds (binaries/variants.toml).

use serde::{Deserialize, Serialize};

/// The catalog compiled into the host; an installed bundle may bring its own.
pub const BUNDLED: &str = include_str!("../../../binaries/variants.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuApi {
    None,
    Cuda,
    Vulkan,
    Metal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub id: String,
    /// Path inside the bundle / the binaries dir.
    pub file: String,
    pub os: String,
    pub arch: String,
    #[serde(default)]
    pub cpu_features: Vec<String>,
    pub gpu: GpuApi,
    /// CUDA only: "major.minor".
    pub min_compute_capability: Option<String>,
    pub formats: Vec<String>,
    #[serde(default)]
    pub gpu_layers: bool,
    pub rank: i32,
    /// Argument template; None means the llama-server default
    /// ([`crate::job::DEFAULT_ARGS`]). Placeholders: {model} {port}
    /// {threads} {ctx_size} {gpu_layers} {parallel} {api_key}.
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
    /// Figures per CPU family that order the CPU candidates where this
    /// machine has no calibration of its own ([`crate::merit`]).
    #[serde(default)]
    pub measured: Vec<crate::merit::Measured>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("variants.toml is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("variants.toml lists id `{0}` twice")]
    DuplicateId(String),
    #[error("variant `{id}`: {problem}")]
    Invalid { id: String, problem: String },
}

/// "8.6" -> (8, 6).
pub fn parse_capability(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let c: Catalog = toml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for v in &c.variants {
            if !seen.insert(v.id.as_str()) {
                return Err(CatalogError::DuplicateId(v.id.clone()));
            }
            let invalid = |problem: &str| CatalogError::Invalid { id: v.id.clone(), problem: problem.into() };
            match (v.gpu, &v.min_compute_capability) {
                (GpuApi::Cuda, Some(cc)) if parse_capability(cc).is_none() => {
                    return Err(invalid("min_compute_capability must look like \"8.6\""))
                }
                (GpuApi::Cuda, None) => return Err(invalid("a cuda variant needs min_compute_capability")),
                (g, Some(_)) if g != GpuApi::Cuda => return Err(invalid("min_compute_capability is for cuda only")),
                _ => {}
            }
            if v.formats.is_empty() {
                return Err(invalid("lists no model format"));
            }
        }
        for m in &c.measured {
            let invalid = |problem: &str| CatalogError::Invalid { id: m.candidate.clone(), problem: problem.into() };
            if m.candidate != "builtin" && !seen.contains(m.candidate.as_str()) {
                return Err(invalid("[[measured]] names no variant of this catalog (nor `builtin`)"));
            }
            if let Some(problem) = m.problem() {
                return Err(invalid(problem));
            }
        }
        Ok(c)
    }

    pub fn bundled() -> Self {
        Self::parse(BUNDLED).expect("the bundled catalog is checked by tests")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_catalog_parses_and_every_file_is_in_the_release_layout() {
        let c = Catalog::bundled();
        assert!(c.variants.len() >= 8);
        for v in &c.variants {
            assert!(v.file.starts_with("cpu/") || v.file.starts_with("gpu/"), "{}", v.file);
            assert_eq!(v.file.ends_with(".exe"), v.os == "windows", "{}", v.id);
            // bitnet.cpp's I2_S kernels are AVX2 or NEON only.
            if v.formats.iter().any(|f| f == "i2_s") {
                let need = if v.arch == "x86_64" { "avx2" } else { "neon" };
                assert!(v.cpu_features.iter().any(|f| f == need), "{}", v.id);
            }
        }
    }

    #[test]
    fn bad_catalogs_are_typed_errors() {
        let base = r#"[[variant]]
id = "a"
file = "cpu/linux/x"
os = "linux"
arch = "x86_64"
gpu = "cuda"
formats = ["f16"]
rank = 1
"#;
        assert!(matches!(Catalog::parse(base), Err(CatalogError::Invalid { .. })));
        let ok = base.replace("gpu = \"cuda\"", "gpu = \"cuda\"\nmin_compute_capability = \"7.5\"");
        assert!(Catalog::parse(&ok).is_ok());
        let twice = format!("{ok}\n{ok}");
        assert!(matches!(Catalog::parse(&twice), Err(CatalogError::DuplicateId(_))));
        assert!(matches!(Catalog::parse("[[variant]]\nid = 3"), Err(CatalogError::Parse(_))));
        let bad_cc = ok.replace("7.5", "seven");
        assert!(matches!(Catalog::parse(&bad_cc), Err(CatalogError::Invalid { .. })));
    }
}
