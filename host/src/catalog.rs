//! Known BitNet GGUF models by short name, so `pull bitnet-2b` works without
//! knowing a Hugging Face repository. A catalog model lands in
//! `<models>/<name>/<file>`, so two repositories' `ggml-model-i2_s.gguf`
//! never collide, and the short name alone then names it everywhere a model
//! is taken (`backend::resolve_model_name`).

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CatalogModel {
    /// What users type: `pull bitnet-2b`, `chat -m bitnet-2b`.
    pub name: &'static str,
    pub title: &'static str,
    /// Hugging Face owner/repo and the file in it.
    pub repo: &'static str,
    pub file: &'static str,
    pub format: &'static str,
    /// The download's size, roughly, where we know it (for the offer); the
    /// server's Content-Length is what the download checks.
    pub approx_bytes: Option<u64>,
    /// The file's sha256 where its publisher gives one we recorded; None:
    /// the server's (Hugging Face sends X-Linked-Etag) is checked.
    pub sha256: Option<&'static str>,
    /// What we know of it on this engine.
    pub note: &'static str,
}

/// The first entry is the default: what `chat` offers to download.
pub const CATALOG: &[CatalogModel] = &[
    CatalogModel {
        name: "bitnet-2b",
        title: "BitNet b1.58 2B4T (Microsoft), instruction-tuned, I2_S",
        repo: "microsoft/bitnet-b1.58-2B-4T-gguf",
        file: "ggml-model-i2_s.gguf",
        format: "i2_s",
        approx_bytes: Some(1_190_000_000),
        sha256: None,
        note: "the model the engine and bitnet.cpp's servers are built for",
    },
    CatalogModel {
        name: "falcon-e-3b",
        title: "Falcon-E 3B Instruct (TII), 1.58-bit, I2_S",
        repo: "tiiuae/Falcon-E-3B-Instruct-GGUF",
        file: "ggml-model-i2_s.gguf",
        format: "i2_s",
        approx_bytes: None,
        sha256: None,
        note: "published for bitnet.cpp; not yet run on the built-in engine",
    },
];

pub fn find(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

impl CatalogModel {
    /// Where the model lives once pulled.
    pub fn path(&self, models: &Path) -> PathBuf {
        models.join(self.name).join(self.file)
    }

    pub fn url(&self, base: &str) -> String {
        format!("{}/{}/resolve/main/{}", base.trim_end_matches('/'), self.repo, self.file)
    }
}

/// The catalog models already in the models folder, catalog order.
pub fn pulled(models: &Path) -> Vec<(&'static CatalogModel, PathBuf)> {
    CATALOG.iter().map(|m| (m, m.path(models))).filter(|(_, p)| p.is_file()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_plain_and_found_in_any_case() {
        for (i, m) in CATALOG.iter().enumerate() {
            assert!(m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", m.name);
            assert!(CATALOG[..i].iter().all(|o| o.name != m.name), "{} twice", m.name);
            assert!(m.file.ends_with(".gguf") && m.repo.split('/').count() == 2);
        }
        assert_eq!(find("BitNet-2B").map(|m| m.repo), Some("microsoft/bitnet-b1.58-2B-4T-gguf"));
        assert!(find("bitnet").is_none());
    }

    #[test]
    fn a_catalog_model_has_its_own_folder_and_a_hugging_face_url() {
        let m = find("bitnet-2b").unwrap();
        assert_eq!(m.path(Path::new("/m")), Path::new("/m/bitnet-2b/ggml-model-i2_s.gguf"));
        assert_eq!(
            m.url("http://127.0.0.1:9/"),
            "http://127.0.0.1:9/microsoft/bitnet-b1.58-2B-4T-gguf/resolve/main/ggml-model-i2_s.gguf"
        );
    }
}
