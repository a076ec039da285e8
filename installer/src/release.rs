//! Release bundles: the signed manifest, the `BitNet-Release.zip` layout, and
//! installing this platform's files under `<data>/binaries` without ever
//! leaving a broken install.
//!
//! A release is `manifest.json` (every file with its sha256 and the variants
//! it provides, the host archives, the catalog text), its minisign signature
//! `manifest.json.minisig`, the bundle zip (which carries the same two files
//! at its root, so a zip alone verifies), and one host archive per target.
//! Nothing is trusted before the signature checks out against the public
//! key compiled into the host.
//!
//! Installed bundles live in versioned folders, `<binaries>/<version>/`,
//! and the file `<binaries>/current` names the active one. A new bundle is
//! extracted and checked in a staging folder, renamed to its version, and
//! activated by replacing `current` (a rename, atomic). The previous version
//! stays until the next update, so `rollback` is one more rename. Without
//! `current`, `<binaries>/` itself is the (hand-placed) install.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.minisig";
pub const BUNDLE: &str = "BitNet-Release.zip";
/// The catalog file an installed bundle carries.
pub const VARIANTS: &str = "variants.toml";
const CURRENT: &str = "current";
pub const SCHEMA: u32 = 1;

/// The release signing key's public half (minisign format). RELEASING.md
/// says how to rotate it.
pub const RELEASE_PUBLIC_KEY: &str = include_str!("../release-key.pub");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub version: String,
    /// The bundle zip itself (absent in the copy inside the zip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Artifact>,
    /// Every server file inside the bundle.
    pub files: Vec<BundleFile>,
    /// Host archives, one per target triple.
    #[serde(default)]
    pub hosts: Vec<HostArchive>,
    /// The catalog (variants.toml text) describing `files`.
    pub variants: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// Path inside the bundle and under the install folder (`cpu/linux/...`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// std::env::consts::OS names.
    pub os: String,
    /// std::env::consts::ARCH names, or `any` (a file no variant names).
    pub arch: String,
    /// Catalog ids this file provides.
    #[serde(default)]
    pub variants: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostArchive {
    /// Rust target triple (`x86_64-unknown-linux-gnu`).
    pub target: String,
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the release public key is not usable: {0}")]
    Key(String),
    #[error("the release manifest's signature does not verify ({0}); nothing was changed")]
    Signature(String),
    #[error("the release manifest is not valid: {0}")]
    Manifest(String),
    #[error("{0} is not in the bundle")]
    Missing(String),
    #[error("{path}: sha256 {actual} does not match the signed manifest ({expected}); nothing was changed")]
    Checksum { path: String, expected: String, actual: String },
    #[error("the bundle is not a readable zip: {0}")]
    Zip(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the new servers failed their health check ({0}); the previous ones were restored")]
    RolledBack(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io { path: path.to_path_buf(), source }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(path))?;
    Ok(format!("{:x}", h.finalize()))
}

/// A public key as a minisign `.pub` file (two lines) or its bare base64 line.
fn public_key(text: &str) -> Result<minisign_verify::PublicKey, ReleaseError> {
    let text = text.trim();
    let parsed = if text.contains('\n') {
        minisign_verify::PublicKey::decode(text)
    } else {
        minisign_verify::PublicKey::from_base64(text)
    };
    parsed.map_err(|e| ReleaseError::Key(e.to_string()))
}

/// A relative path of plain components only: what may be written under an
/// install folder. Refuses `..`, absolute paths, drive prefixes, backslashes.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains(':')
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

impl Manifest {
    /// Check the signature over `bytes` with `key`, then parse and check
    /// the manifest's own consistency.
    pub fn verify(bytes: &[u8], signature: &str, key: &str) -> Result<Manifest, ReleaseError> {
        let key = public_key(key)?;
        let sig = minisign_verify::Signature::decode(signature).map_err(|e| ReleaseError::Signature(e.to_string()))?;
        key.verify(bytes, &sig, false).map_err(|e| ReleaseError::Signature(e.to_string()))?;
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ReleaseError::Manifest(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ReleaseError> {
        let bad = |s: String| Err(ReleaseError::Manifest(s));
        if self.schema != SCHEMA {
            return bad(format!("schema {} (this host reads {SCHEMA}); update the host first", self.schema));
        }
        if semver::Version::parse(&self.version).is_err() {
            return bad(format!("version `{}` is not semver", self.version));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !is_safe_relative(&f.path) || f.path == MANIFEST || f.path == SIGNATURE || f.path == VARIANTS {
                return bad(format!("file path `{}` is not allowed", f.path));
            }
            if !seen.insert(f.path.to_ascii_lowercase()) {
                return bad(format!("file `{}` is listed twice", f.path));
            }
            if !is_sha256(&f.sha256) {
                return bad(format!("file `{}` has no sha256", f.path));
            }
        }
        for h in &self.hosts {
            if !is_safe_relative(&h.name) || h.name.contains('/') || !is_sha256(&h.sha256) {
                return bad(format!("host archive `{}` is not valid", h.name));
            }
        }
        Ok(())
    }

    /// The files this platform installs.
    pub fn files_for<'a>(&'a self, os: &'a str, arch: &'a str) -> impl Iterator<Item = &'a BundleFile> + 'a {
        self.files.iter().filter(move |f| f.os == os && (f.arch == arch || f.arch == "any"))
    }

    pub fn host_for(&self, target: &str) -> Option<&HostArchive> {
        self.hosts.iter().find(|h| h.target == target)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serializes")
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The signed manifest inside a bundle zip, verified.
pub fn verify_zip(zip_path: &Path, key: &str) -> Result<(Manifest, Vec<u8>, String), ReleaseError> {
    let file = std::fs::File::open(zip_path).map_err(io_err(zip_path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| ReleaseError::Zip(e.to_string()))?;
    let manifest = read_entry(&mut zip, MANIFEST, 16 << 20)?;
    let sig = read_entry(&mut zip, SIGNATURE, 64 << 10)?;
    let sig = String::from_utf8(sig).map_err(|_| ReleaseError::Signature("not text".into()))?;
    let m = Manifest::verify(&manifest, &sig, key)?;
    Ok((m, manifest, sig))
}

fn read_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, ReleaseError> {
    let entry = zip.by_name(name).map_err(|_| ReleaseError::Missing(name.into()))?;
    let mut out = Vec::new();
    entry.take(limit).read_to_end(&mut out).map_err(|e| ReleaseError::Zip(e.to_string()))?;
    Ok(out)
}

/// Where bundles are installed and which one is active.
#[derive(Debug, Clone)]
pub struct BinariesDir {
    pub root: PathBuf,
}

/// What `install_bundle` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Installed {
    pub version: String,
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub previous: Option<String>,
}

impl BinariesDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The active bundle's version, if one was installed by an update.
    pub fn active_version(&self) -> Option<String> {
        let v = std::fs::read_to_string(self.root.join(CURRENT)).ok()?;
        let v = v.trim().to_string();
        (is_safe_relative(&v) && !v.contains('/') && self.root.join(&v).is_dir()).then_some(v)
    }

    /// The folder selection looks in.
    pub fn active_dir(&self) -> PathBuf {
        match self.active_version() {
            Some(v) => self.root.join(v),
            None => self.root.clone(),
        }
    }

    /// The active bundle's catalog, if it carries one.
    pub fn active_variants(&self) -> Option<String> {
        std::fs::read_to_string(self.active_dir().join(VARIANTS)).ok()
    }

    /// Versions installed, oldest first.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<(semver::Version, String)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((semver::Version::parse(&name).ok()?, name))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn staging(&self, version: &str) -> PathBuf {
        self.root.join(format!(".staging-{version}"))
    }

    /// Point `current` at `version` (atomic replace).
    pub fn activate(&self, version: Option<&str>) -> Result<(), ReleaseError> {
        let cur = self.root.join(CURRENT);
        match version {
            Some(v) => {
                let tmp = self.root.join(".current.tmp");
                std::fs::write(&tmp, format!("{v}\n")).map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &cur).map_err(io_err(&cur))
            }
            None => match std::fs::remove_file(&cur) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&cur)(e)),
                _ => Ok(()),
            },
        }
    }

    /// Extract this platform's files from a verified bundle into a staging
    /// folder, checking every sha256; then make it `<root>/<version>`.
    /// Nothing outside the staging folder changes until it is complete.
    /// `fail_after`: fault injection (a disk-full error after that many
    /// files) for tests.
    pub fn stage(
        &self,
        zip_path: &Path,
        manifest: &Manifest,
        signed: (&[u8], &str),
        platform: (&str, &str),
        fail_after: Option<usize>,
    ) -> Result<PathBuf, ReleaseError> {
        let staging = self.staging(&manifest.version);
        let _ = std::fs::remove_dir_all(&staging);
        let r = self.stage_into(&staging, zip_path, manifest, signed, platform, fail_after);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        r?;
        let dest = self.root.join(&manifest.version);
        if dest.exists() {
            if self.active_version().as_deref() == Some(manifest.version.as_str()) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(ReleaseError::Manifest(format!("version {} is already the active one", manifest.version)));
            }
            std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
        }
        std::fs::rename(&staging, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    }

    fn stage_into(
        &self,
        staging: &Path,
        zip_path: &Path,
        manifest: &Manifest,
        signed: (&[u8], &str),
        (os, arch): (&str, &str),
        fail_after: Option<usize>,
    ) -> Result<(), ReleaseError> {
        std::fs::create_dir_all(staging).map_err(io_err(staging))?;
        let file = std::fs::File::open(zip_path).map_err(io_err(zip_path))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| ReleaseError::Zip(e.to_string()))?;
        for (n, f) in manifest.files_for(os, arch).enumerate() {
            if fail_after == Some(n) {
                let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (injected)");
                return Err(io_err(staging)(e));
            }
            let dest = staging.join(&f.path);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(io_err(p))?;
            }
            let mut entry = zip.by_name(&f.path).map_err(|_| ReleaseError::Missing(f.path.clone()))?;
            let mut out = std::fs::File::create(&dest).map_err(io_err(&dest))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut written = 0u64;
            loop {
                let k = entry.read(&mut buf).map_err(|e| ReleaseError::Zip(format!("{}: {e}", f.path)))?;
                if k == 0 {
                    break;
                }
                written += k as u64;
                if written > f.size {
                    break;
                }
                h.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io_err(&dest))?;
            }
            out.sync_all().map_err(io_err(&dest))?;
            let actual = format!("{:x}", h.finalize());
            if actual != f.sha256 || written != f.size {
                return Err(ReleaseError::Checksum { path: f.path.clone(), expected: f.sha256.clone(), actual });
            }
            make_executable(&dest)?;
        }
        for (name, bytes) in
            [(MANIFEST, signed.0), (SIGNATURE, signed.1.as_bytes()), (VARIANTS, manifest.variants.as_bytes())]
        {
            let p = staging.join(name);
            std::fs::write(&p, bytes).map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// Stage, activate, run `health` on the new folder; on failure put the
    /// previous version back. Keeps the previous version, removes older ones.
    pub fn install(
        &self,
        zip_path: &Path,
        key: &str,
        platform: (&str, &str),
        fail_after: Option<usize>,
        health: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<Installed, ReleaseError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let (manifest, bytes, sig) = verify_zip(zip_path, key)?;
        let previous = self.active_version();
        let dir = self.stage(zip_path, &manifest, (&bytes, &sig), platform, fail_after)?;
        self.activate(Some(&manifest.version))?;
        if let Err(why) = health(&dir) {
            self.activate(previous.as_deref())?;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ReleaseError::RolledBack(why));
        }
        self.prune(&[Some(manifest.version.as_str()), previous.as_deref()]);
        let files = manifest.files_for(platform.0, platform.1).map(|f| f.path.clone()).collect();
        Ok(Installed { version: manifest.version, dir, files, previous })
    }

    /// Go back to the version before the active one.
    pub fn rollback(&self) -> Result<Option<String>, ReleaseError> {
        let active = self.active_version();
        let versions = self.versions();
        let prev = match &active {
            Some(a) => versions.iter().rev().find(|v| *v != a && semver_lt(v, a)).cloned(),
            None => None,
        };
        if active.is_none() {
            return Err(ReleaseError::Manifest("no updated bundle is active".into()));
        }
        self.activate(prev.as_deref())?;
        Ok(prev)
    }

    /// Remove version folders other than `keep`, and leftover staging.
    fn prune(&self, keep: &[Option<&str>]) {
        for e in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_version = semver::Version::parse(&name).is_ok() && e.path().is_dir();
            if (is_version && !keep.contains(&Some(name.as_str()))) || name.starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn semver_lt(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

#[cfg(unix)]
fn make_executable(p: &Path) -> Result<(), ReleaseError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(io_err(p))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<(), ReleaseError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        for ok in ["cpu/linux/llama-server", "a", "gpu/windows/x.exe"] {
            assert!(is_safe_relative(ok), "{ok}");
        }
        for bad in ["", "../x", "cpu/../../x", "/etc/passwd", "C:/x", "cpu\\x", "./x"] {
            assert!(!is_safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn the_compiled_in_key_parses() {
        public_key(RELEASE_PUBLIC_KEY).unwrap();
    }

    #[test]
    fn files_for_picks_the_platform_and_arch_neutral_files() {
        let f = |path: &str, os: &str, arch: &str| BundleFile {
            path: path.into(),
            sha256: "0".repeat(64),
            size: 1,
            os: os.into(),
            arch: arch.into(),
            variants: vec![],
        };
        let m = Manifest {
            schema: 1,
            version: "1.0.0".into(),
            bundle: None,
            files: vec![
                f("cpu/linux/a", "linux", "x86_64"),
                f("cpu/linux/b", "linux", "aarch64"),
                f("cpu/linux/lib.so", "linux", "any"),
                f("cpu/windows/a.exe", "windows", "x86_64"),
            ],
            hosts: vec![],
            variants: String::new(),
        };
        let got: Vec<&str> = m.files_for("linux", "x86_64").map(|f| f.path.as_str()).collect();
        assert_eq!(got, ["cpu/linux/a", "cpu/linux/lib.so"]);
    }
}
