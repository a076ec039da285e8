//! Installing: place the host binary, write one manifest per browser where
//! the table says, remember what was written. All or nothing: a failure
//! half-way puts back every file as it was. Installing again with the same
//! inputs changes nothing. Uninstalling removes exactly what the record lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::{detect, Presence, RealMachine};
use crate::locations::{target, Browser, Os, Roots, Scope, Target, ALL_BROWSERS};
use crate::{render, Family, InstallerError};

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub os: Os,
    /// Empty: every browser found on this machine.
    pub browsers: Vec<Browser>,
    pub scope: Scope,
    pub name: String,
    pub chromium_ids: Vec<String>,
    pub firefox_ids: Vec<String>,
    /// The binary to register (the running one).
    pub host_source: PathBuf,
    /// Register `host_source` where it is instead of copying it.
    pub in_place: bool,
    pub roots: Roots,
    /// Where a copied binary goes (`<data>/bin`).
    pub bin_dir: PathBuf,
    /// Where the record of what was written lives.
    pub record_path: PathBuf,
    pub dry_run: bool,
    /// Fault injection for tests: fail after this many writes.
    pub fail_after: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Configured {
    pub browser: Browser,
    pub target: Target,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub browser: Browser,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstallReport {
    pub host_path: PathBuf,
    pub configured: Vec<Configured>,
    pub skipped: Vec<Skipped>,
    pub dry_run: bool,
}

/// What install wrote, so uninstall can remove exactly that.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub files: Vec<PathBuf>,
    pub registry: Vec<(String, String)>,
    /// A binary we copied (not an in-place one).
    pub binary: Option<PathBuf>,
}

impl Record {
    pub fn load(path: &Path) -> Record {
        bitnet_safefs::read(path, 1 << 20).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Manifest(#[from] InstallerError),
    #[error("cannot write {path}: {source} (nothing was changed)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no browser to configure: {0}")]
    Nothing(String),
    #[error("registry keys can only be written on Windows")]
    NotWindows,
}

/// One write of the plan, and what was there before.
struct Done {
    path: PathBuf,
    before: Option<Vec<u8>>,
}

/// A registry key install set, and its default value before (None: the
/// key did not exist or held no string).
struct KeyDone {
    hive: String,
    key: String,
    before: Option<String>,
}

struct Tx {
    done: Vec<Done>,
    keys: Vec<KeyDone>,
    writes: usize,
    fail_after: Option<usize>,
}

impl Tx {
    /// Write `bytes` to `path` (temp file + rename), remembering what was there.
    fn write(&mut self, path: &Path, bytes: &[u8], executable: bool) -> Result<Change, InstallError> {
        // What is there now, to put back on failure (bounded: a manifest,
        // or our own binary).
        let before = bitnet_safefs::read(path, 1 << 30).ok();
        if before.as_deref() == Some(bytes) {
            return Ok(Change::Unchanged);
        }
        if self.fail_after.is_some_and(|n| self.writes >= n) {
            return Err(InstallError::Write { path: path.into(), source: std::io::Error::other("injected failure") });
        }
        let err = |source| InstallError::Write { path: path.into(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("bitnet-tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(err)?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        std::fs::rename(&tmp, path).map_err(err)?;
        self.writes += 1;
        let change = if before.is_some() { Change::Updated } else { Change::Created };
        self.done.push(Done { path: path.into(), before });
        Ok(change)
    }

    /// Point `hive\key` at `manifest`, remembering what it held.
    fn set_key(&mut self, hive: &str, key: &str, manifest: &Path) -> Result<(), InstallError> {
        let before = crate::registry::get_default(hive, key);
        if before.as_deref() == manifest.to_str() {
            return Ok(());
        }
        crate::registry::set_default(hive, key, manifest)?;
        self.keys.push(KeyDone { hive: hive.into(), key: key.into(), before });
        Ok(())
    }

    /// Put everything back as it was.
    fn rollback(self) {
        for k in self.keys.iter().rev() {
            let _ = match &k.before {
                Some(v) => crate::registry::set_default(&k.hive, &k.key, Path::new(v)).map_err(|_| ()),
                None => crate::registry::delete(&k.hive, &k.key).map_err(|_| ()),
            };
        }
        for d in self.done.into_iter().rev() {
            match d.before {
                Some(b) => {
                    let _ = std::fs::write(&d.path, b);
                }
                None => {
                    let _ = std::fs::remove_file(&d.path);
                }
            }
        }
    }
}

/// Which browsers to configure, and why the others are skipped.
fn choose(opts: &InstallOptions) -> (Vec<Browser>, Vec<Skipped>) {
    let explicit = !opts.browsers.is_empty();
    let wanted: Vec<Browser> = if explicit { opts.browsers.clone() } else { ALL_BROWSERS.to_vec() };
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for b in wanted {
        let ids_missing = match b.family() {
            Family::Chromium => opts.chromium_ids.is_empty(),
            Family::Firefox => opts.firefox_ids.is_empty(),
        };
        if ids_missing {
            let what = if b.family() == Family::Chromium { "Chromium extension id" } else { "Firefox add-on id" };
            skipped.push(Skipped { browser: b, reason: format!("no {what} given (--extension-id)") });
            continue;
        }
        if opts.scope == Scope::User && opts.os == Os::current() {
            match detect(opts.os, b, &opts.roots, &RealMachine) {
                Presence::Sandboxed { evidence, advice } => {
                    skipped.push(Skipped { browser: b, reason: format!("{evidence}: {advice}") });
                    continue;
                }
                Presence::Absent if !explicit => {
                    skipped.push(Skipped { browser: b, reason: "not found on this machine".into() });
                    continue;
                }
                _ => {}
            }
        }
        chosen.push(b);
    }
    (chosen, skipped)
}

pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    let (browsers, skipped) = choose(opts);
    if browsers.is_empty() {
        let why: Vec<String> = skipped.iter().map(|s| format!("{}: {}", s.browser.name(), s.reason)).collect();
        return Err(InstallError::Nothing(why.join("; ")));
    }
    let host_path = if opts.in_place {
        opts.host_source.clone()
    } else {
        opts.bin_dir.join(opts.host_source.file_name().unwrap_or_else(|| "bitnet-host".as_ref()))
    };
    let chromium: Vec<&str> = opts.chromium_ids.iter().map(String::as_str).collect();
    let firefox: Vec<&str> = opts.firefox_ids.iter().map(String::as_str).collect();
    let mut plan = Vec::new();
    for b in &browsers {
        let Some(t) = target(opts.os, *b, opts.scope, &opts.roots, &opts.name) else { continue };
        let ids = if b.family() == Family::Chromium { &chromium } else { &firefox };
        let text = render(opts.os, b.family(), &opts.name, &host_path, ids)?;
        plan.push((*b, t, text));
    }
    if opts.dry_run {
        let configured = plan
            .into_iter()
            .map(|(browser, target, text)| {
                let path = match &target {
                    Target::File { path } | Target::Registry { manifest: path, .. } => path,
                };
                let change = match bitnet_safefs::read(path, 1 << 20) {
                    Ok(b) if b == text.as_bytes() => Change::Unchanged,
                    Ok(_) => Change::Updated,
                    Err(_) => Change::Created,
                };
                Configured { browser, target, change }
            })
            .collect();
        return Ok(InstallReport { host_path, configured, skipped, dry_run: true });
    }
    let mut tx = Tx { done: Vec::new(), keys: Vec::new(), writes: 0, fail_after: opts.fail_after };
    let result = (|| -> Result<(Vec<Configured>, Record), InstallError> {
        let mut record = Record::load(&opts.record_path);
        if !opts.in_place && host_path != opts.host_source {
            let bytes = std::fs::read(&opts.host_source)
                .map_err(|source| InstallError::Write { path: opts.host_source.clone(), source })?;
            tx.write(&host_path, &bytes, true)?;
            record.binary = Some(host_path.clone());
        }
        let mut configured = Vec::new();
        for (browser, t, text) in plan {
            let change = match &t {
                Target::File { path } => {
                    let c = tx.write(path, text.as_bytes(), false)?;
                    if !record.files.contains(path) {
                        record.files.push(path.clone());
                    }
                    c
                }
                Target::Registry { hive, key, manifest } => {
                    let c = tx.write(manifest, text.as_bytes(), false)?;
                    tx.set_key(hive, key, manifest)?;
                    if !record.files.contains(manifest) {
                        record.files.push(manifest.clone());
                    }
                    let entry = (hive.clone(), key.clone());
                    if !record.registry.contains(&entry) {
                        record.registry.push(entry);
                    }
                    c
                }
            };
            configured.push(Configured { browser, target: t, change });
        }
        let rec = serde_json::to_vec_pretty(&record)
            .map_err(|e| InstallError::Write { path: opts.record_path.clone(), source: std::io::Error::other(e) })?;
        tx.write(&opts.record_path, &rec, false)?;
        Ok((configured, record))
    })();
    match result {
        Ok((configured, _)) => Ok(InstallReport { host_path, configured, skipped, dry_run: false }),
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// Copy the host binary `source` into `bin_dir` (unless it already runs
/// from there or the copy is the same), recorded so `uninstall` removes it:
/// what `service install` points the login service at, so the service never
/// runs a build tree's binary. Returns the placed path.
pub fn place_binary(source: &Path, bin_dir: &Path, record_path: &Path) -> Result<PathBuf, InstallError> {
    let placed = bin_dir.join(source.file_name().unwrap_or_else(|| "bitnet-host".as_ref()));
    if placed == source {
        return Ok(placed);
    }
    let mut tx = Tx { done: Vec::new(), keys: Vec::new(), writes: 0, fail_after: None };
    let result = (|| -> Result<(), InstallError> {
        let bytes = std::fs::read(source).map_err(|e| InstallError::Write { path: source.into(), source: e })?;
        tx.write(&placed, &bytes, true)?;
        let mut record = Record::load(record_path);
        if record.binary.as_ref() != Some(&placed) {
            record.binary = Some(placed.clone());
            let rec = serde_json::to_vec_pretty(&record)
                .map_err(|e| InstallError::Write { path: record_path.into(), source: std::io::Error::other(e) })?;
            tx.write(record_path, &rec, false)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(placed),
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UninstallReport {
    pub removed: Vec<PathBuf>,
    pub registry_removed: Vec<String>,
    /// Paths in the record that are not what install writes (left alone).
    pub refused: Vec<PathBuf>,
}

/// Remove what the record lists, then the record.
pub fn uninstall(record_path: &Path, bin_dir: &Path) -> UninstallReport {
    let record = Record::load(record_path);
    let mut removed = Vec::new();
    let mut refused = Vec::new();
    // A record is a file anyone with our uid may have edited: delete only
    // what install itself writes, as it wrote it.
    let hosts: Vec<PathBuf> = record.binary.iter().cloned().chain(std::env::current_exe().ok()).collect();
    let files = record.files.iter().map(|f| (f, is_our_manifest(f, &hosts)));
    let binary = record.binary.iter().map(|b| (b, is_our_binary(b, bin_dir)));
    for (f, ours) in files.chain(binary) {
        if !ours {
            refused.push(f.clone());
        } else if std::fs::remove_file(f).is_ok() {
            removed.push(f.clone());
        }
    }
    let mut registry_removed = Vec::new();
    for (hive, key) in &record.registry {
        // Only the browsers' native-messaging keys install creates.
        let ours =
            ["HKCU", "HKLM"].contains(&hive.as_str()) && key.to_ascii_lowercase().contains("\\nativemessaginghosts\\");
        if !ours {
            refused.push(PathBuf::from(format!(r"{hive}\{key}")));
        } else if crate::registry::delete(hive, key).is_ok() {
            registry_removed.push(format!(r"{hive}\{key}"));
        }
    }
    let _ = std::fs::remove_file(record_path);
    UninstallReport { removed, registry_removed, refused }
}

/// A regular file (not a link to one) that is a native-messaging manifest
/// naming one of `hosts` (the binary install copied, or this program when
/// it was installed in place): what install writes into browsers' folders.
fn is_our_manifest(path: &Path, hosts: &[PathBuf]) -> bool {
    let plain = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if !plain || path.extension().is_none_or(|e| e != "json") {
        return false;
    }
    let Ok(bytes) = bitnet_safefs::read(path, 1 << 20) else { return false };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    v["type"] == "stdio" && v["path"].as_str().is_some_and(|p| hosts.iter().any(|h| h == Path::new(p)))
}

/// The host binary install copied: a regular file directly in our `bin_dir`.
fn is_our_binary(path: &Path, bin_dir: &Path) -> bool {
    let plain = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    plain && path.parent() == Some(bin_dir)
}

/// Install and uninstall against the real registry: Windows only (under
/// Wine in scripts/cross-test). Each run uses its own host name, so keys
/// of other runs or a real install are never touched.
#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;
    use crate::locations::{Os, Roots, Scope, ALL_BROWSERS};
    use crate::registry;

    fn options(dir: &Path, name: &str) -> InstallOptions {
        let host_source = dir.join("bitnet-host.exe");
        std::fs::write(&host_source, b"MZ not really").unwrap();
        InstallOptions {
            os: Os::Windows,
            browsers: ALL_BROWSERS.to_vec(),
            scope: Scope::User,
            name: name.into(),
            chromium_ids: vec!["abcdefghijklmnopabcdefghijklmnop".into()],
            firefox_ids: vec!["tabagent@example.org".into()],
            host_source,
            in_place: false,
            roots: Roots { home: dir.into(), config_home: dir.join("config"), manifest_dir: dir.join("manifests") },
            bin_dir: dir.join("bin"),
            record_path: dir.join("install-record.json"),
            dry_run: false,
            fail_after: None,
        }
    }

    fn keys(name: &str) -> Vec<String> {
        ALL_BROWSERS
            .iter()
            .filter_map(|b| match crate::locations::target(Os::Windows, *b, Scope::User, &roots_any(), name) {
                Some(Target::Registry { key, .. }) => Some(key),
                _ => None,
            })
            .collect()
    }

    fn roots_any() -> Roots {
        Roots { home: "C:\\".into(), config_home: "C:\\".into(), manifest_dir: "C:\\".into() }
    }

    #[test]
    fn install_points_hkcu_keys_at_manifests_for_every_browser_and_uninstall_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("com.bitnet.test{}", std::process::id());
        let opts = options(dir.path(), &name);
        let report = install(&opts).unwrap();
        assert_eq!(report.configured.len(), ALL_BROWSERS.len(), "{report:?}");
        for c in &report.configured {
            let Target::Registry { hive, key, manifest } = &c.target else { panic!("{c:?}") };
            assert_eq!(hive, "HKCU");
            // Read back from the registry: the default value is the manifest's path.
            assert_eq!(registry::get_default(hive, key).as_deref(), manifest.to_str(), "{key}");
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
            assert_eq!(m["name"], name.as_str());
            assert_eq!(m["path"], report.host_path.to_str().unwrap());
        }
        assert!(report.host_path.exists());
        // Again: nothing changes.
        let again = install(&opts).unwrap();
        assert!(again.configured.iter().all(|c| c.change == Change::Unchanged), "{again:?}");

        let removed = uninstall(&opts.record_path, &opts.bin_dir);
        // Opera shares Chrome's key: eight distinct keys.
        assert_eq!(removed.registry_removed.len(), 8, "{removed:?}");
        for key in keys(&name) {
            assert_eq!(registry::get_default("HKCU", &key), None, "{key} is still there");
        }
        for c in &report.configured {
            let Target::Registry { manifest, .. } = &c.target else { unreachable!() };
            assert!(!manifest.exists(), "{}", manifest.display());
        }
        assert!(!report.host_path.exists());
        assert!(!opts.record_path.exists());
    }

    #[test]
    fn a_failed_install_puts_every_key_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("com.bitnet.rollback{}", std::process::id());
        let chrome = format!(r"Software\Google\Chrome\NativeMessagingHosts\{name}");
        registry::set_default("HKCU", &chrome, Path::new(r"C:\old\manifest.json")).unwrap();
        let mut opts = options(dir.path(), &name);
        // The binary and the Chromium-family manifest are written and every
        // Chromium-family key set; then the Firefox manifest's write fails.
        opts.fail_after = Some(2);
        assert!(install(&opts).is_err());
        assert_eq!(registry::get_default("HKCU", &chrome).as_deref(), Some(r"C:\old\manifest.json"));
        for key in keys(&name).into_iter().filter(|k| *k != chrome) {
            assert_eq!(registry::get_default("HKCU", &key), None, "{key} was left behind");
        }
        registry::delete("HKCU", &chrome).unwrap();
    }
}
