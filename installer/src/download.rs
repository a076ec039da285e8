//! Verified, resumable downloads: to `<dest>.part`, resumed with an HTTP
//! Range request after an interruption, sha256-checked when the source gives
//! one, validated by the caller (a GGUF header check for models), and only
//! then renamed into place. A failure never leaves a file at `dest`; a bad
//! checksum or an invalid file also removes the partial one.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot reach {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("the download stopped after {received} bytes ({reason}); run it again to resume")]
    Interrupted { received: u64, reason: String },
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}; the file was discarded")]
    Checksum { expected: String, actual: String },
    #[error("the downloaded file is not usable: {0}; it was discarded")]
    Invalid(String),
    #[error("not enough disk space: {needed} bytes needed, {available} available")]
    DiskFull { needed: u64, available: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What to fetch and where.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub dest: PathBuf,
    /// Expected sha256 (hex); when None, one given by the server (a
    /// Hugging Face `X-Linked-Etag`) is used.
    pub sha256: Option<String>,
}

pub fn part_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A sha256 the server states for the whole file, if any.
fn server_sha(h: &reqwest::header::HeaderMap) -> Option<String> {
    ["x-linked-etag", "x-sha256", "etag"].iter().find_map(|k| {
        let v = h.get(*k)?.to_str().ok()?.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase();
        is_sha256(&v).then_some(v)
    })
}

/// Fetch `req`. `available` is the free space where `dest` lives (checked
/// before starting), `validate` judges the finished file, `progress` gets
/// (bytes so far, total when known).
pub async fn fetch(
    client: &reqwest::Client,
    req: &Request,
    available: Option<u64>,
    validate: &(dyn Fn(&Path) -> Result<(), String> + Sync),
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<PathBuf, DownloadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path: path.clone(), source }
    };
    if let Some(dir) = req.dest.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let part = part_path(&req.dest);
    // The partial download is ours to resume only as a plain file: a
    // symlink (or FIFO) put in its place must not lead the writes (or a
    // blocking read) elsewhere; it is removed, not followed.
    let have = match std::fs::symlink_metadata(&part) {
        Ok(m) if m.file_type().is_file() => m.len(),
        Ok(m) if m.is_dir() => {
            return Err(DownloadError::Io {
                path: part.clone(),
                source: std::io::Error::other("a folder is in the way"),
            })
        }
        Ok(_) => {
            std::fs::remove_file(&part).map_err(io(&part))?;
            0
        }
        Err(_) => 0,
    };
    let mut r = client.get(&req.url);
    if have > 0 {
        r = r.header("range", format!("bytes={have}-"));
    }
    let resp = r.send().await.map_err(|e| DownloadError::Network { url: req.url.clone(), reason: e.to_string() })?;
    let status = resp.status().as_u16();
    let resumed = match status {
        206 => true,
        200 => false,
        // The part already holds everything.
        416 if have > 0 => true,
        s => return Err(DownloadError::Http { url: req.url.clone(), status: s }),
    };
    let expected = req.sha256.clone().map(|s| s.to_ascii_lowercase()).or_else(|| server_sha(resp.headers()));
    let remaining = if status == 416 { Some(0) } else { resp.content_length() };
    let total = remaining.map(|n| if resumed { n + have } else { n });
    if let (Some(need), Some(avail)) = (remaining, available) {
        if need > avail {
            return Err(DownloadError::DiskFull { needed: need, available: avail });
        }
    }
    // Hash what is already there, then append.
    let mut hasher = Sha256::new();
    let mut file = if resumed {
        // Hashed in pieces: a partial model may be gigabytes.
        let mut f = std::fs::OpenOptions::new().read(true).append(true).open(&part).map_err(io(&part))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).map_err(io(&part))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        f
    } else {
        std::fs::File::create(&part).map_err(io(&part))?
    };
    let mut received = if resumed { have } else { 0 };
    progress(received, total);
    let mut resp = resp;
    if status != 416 {
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    file.write_all(&bytes).map_err(io(&part))?;
                    hasher.update(&bytes);
                    received += bytes.len() as u64;
                    progress(received, total);
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = file.flush();
                    return Err(DownloadError::Interrupted { received, reason: e.to_string() });
                }
            }
        }
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    if let Some(t) = total {
        if received < t {
            return Err(DownloadError::Interrupted { received, reason: format!("expected {t} bytes") });
        }
    }
    let actual = format!("{:x}", hasher.finalize());
    if let Some(e) = expected {
        if e != actual {
            let _ = std::fs::remove_file(&part);
            return Err(DownloadError::Checksum { expected: e, actual });
        }
    }
    if let Err(why) = validate(&part) {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::Invalid(why));
    }
    std::fs::rename(&part, &req.dest).map_err(io(&req.dest))?;
    Ok(req.dest.clone())
}

/// A model source: a URL as is, or `owner/repo` + file on a Hugging Face
/// style server at `base`.
pub fn resolve(source: &str, file: Option<&str>, base: &str) -> Result<(String, String), String> {
    // A name the file gets in the models folder: letters, digits, `-_.`,
    // and not a dot-only name (`.` and `..` are folders).
    let ok = |s: &str| {
        !s.is_empty()
            && !s.contains("..")
            && !s.chars().all(|c| c == '.')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if source.starts_with("http://") || source.starts_with("https://") {
        let path = source.split(['?', '#']).next().unwrap_or("");
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        if !ok(&name) {
            return Err(format!("cannot tell a file name from {source}: name the file with --file"));
        }
        return Ok((source.to_string(), name));
    }
    let Some((owner, repo)) = source.split_once('/').filter(|(o, r)| ok(o) && ok(r)) else {
        return Err(format!("`{source}` is neither a URL nor owner/repo"));
    };
    let Some(file) = file.filter(|f| ok(f)) else {
        return Err("name the file in the repository: --file <name>.gguf".into());
    };
    Ok((format!("{}/{owner}/{repo}/resolve/main/{file}", base.trim_end_matches('/')), file.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_resolve_to_urls_and_names_and_bad_ones_are_refused() {
        let (u, n) =
            resolve("microsoft/bitnet-b1.58-2B-4T-gguf", Some("ggml-model-i2_s.gguf"), "https://huggingface.co/")
                .unwrap();
        assert_eq!(u, "https://huggingface.co/microsoft/bitnet-b1.58-2B-4T-gguf/resolve/main/ggml-model-i2_s.gguf");
        assert_eq!(n, "ggml-model-i2_s.gguf");
        assert_eq!(resolve("http://127.0.0.1:9/m/x.gguf?dl=1", None, "").unwrap().1, "x.gguf");
        assert!(resolve("a/b", None, "https://h").is_err());
        assert!(resolve("a/b", Some("../../etc/passwd"), "https://h").is_err());
        assert!(resolve("../x", Some("f.gguf"), "https://h").is_err());
        assert!(resolve("http://h/", None, "").is_err());
        // Names that are folders, not files.
        for bad in ["http://h/m/.", "http://h/m/..", "http://h/m/..?x=1", "http://h/a%2F..%2Fb"] {
            assert!(resolve(bad, None, "").is_err(), "{bad}");
        }
        for bad in [".", "..", "..."] {
            assert!(resolve("a/b", Some(bad), "https://h").is_err(), "{bad}");
        }
    }

    #[test]
    fn part_files_sit_beside_the_destination() {
        assert_eq!(part_path(Path::new("/m/x.gguf")), PathBuf::from("/m/x.gguf.part"));
    }
}
