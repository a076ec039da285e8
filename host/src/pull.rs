//! `pull`: download a model into `<data>/models/` (verified, resumable, GGUF
//! checked), for the CLI and protocol v1 alike.

use std::path::{Path, PathBuf};

use bitnet_installer::download::{fetch, resolve, DownloadError, Request};

use crate::dirs::HostDirs;

/// Hugging Face style base URL; BITNET_MODELS_BASE points it elsewhere
/// (a mirror, or a test server).
pub fn base_url() -> String {
    std::env::var("BITNET_MODELS_BASE").unwrap_or_else(|_| "https://huggingface.co".into())
}

pub(crate) fn free_space(dir: &Path) -> Option<u64> {
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

/// The GGUF check a downloaded model must pass.
fn validate(p: &Path) -> Result<(), String> {
    let g = bitnet_ternary::Gguf::open(p).map_err(|e| e.to_string())?;
    match g.weight_format() {
        Some(_) => Ok(()),
        None => Err("a GGUF file without model weights".into()),
    }
}

pub async fn pull(
    dirs: &HostDirs,
    source: &str,
    file: Option<&str>,
    sha256: Option<&str>,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<PathBuf, PullError> {
    let models = dirs.data.join("models");
    // A catalog name (`bitnet-2b`) goes to its own folder and is checked
    // against the catalog's sha256 when it has one.
    let catalog = crate::catalog::find(source).filter(|_| file.is_none());
    let (url, dest) = match catalog {
        Some(m) => (m.url(&base_url()), m.path(&models)),
        None => {
            let (url, name) = resolve(source, file, &base_url()).map_err(|e| {
                let names: Vec<&str> = crate::catalog::CATALOG.iter().map(|m| m.name).collect();
                PullError::Source(format!("{e} (or a catalog name: {})", names.join(", ")))
            })?;
            (url, models.join(name))
        }
    };
    let sha256 = sha256.or(catalog.and_then(|m| m.sha256));
    let Some(dir) = dest.parent().map(Path::to_path_buf) else {
        return Err(PullError::Source(format!("no folder for {}", dest.display())));
    };
    match std::fs::symlink_metadata(&dest) {
        Ok(m) if m.file_type().is_file() => return Ok(dest),
        Ok(_) => return Err(PullError::Source(format!("{} exists and is not a model file", dest.display()))),
        Err(_) => {}
    }
    let _ = std::fs::create_dir_all(&dir);
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| PullError::Source(e.to_string()))?;
    let req = Request { url, dest, sha256: sha256.map(String::from) };
    Ok(fetch(&client, &req, free_space(&dir), &validate, progress).await?)
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Download(#[from] DownloadError),
}
