//! `bitnet-host update`: find the newest release for the channel (a GitHub
//! releases listing, through self_update), verify its signed manifest, then
//! install the server bundle (installer::release: staged, checked, swapped
//! by rename, health-checked with the current model, rolled back on
//! failure) and replace the host binary (self_replace, the old one kept in
//! `<data>/previous/`). A running daemon is told to move its backends to
//! the new servers once no request is using them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bitnet_installer::download::{fetch, DownloadError, Request};
use bitnet_installer::release::{BinariesDir, HostArchive, Manifest, ReleaseError, MANIFEST, SIGNATURE};
use bitnet_supervisor::{Catalog, ConfigFile, Job, JobSpec, Launch, Policy};
use serde::Serialize;

use crate::dirs::HostDirs;

pub const DEFAULT_API: &str = "https://api.github.com";
pub const DEFAULT_REPO: &str = "bitnet-host/bitnet-host";
/// How long the new server gets to become healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Releases only.
    Stable,
    /// Pre-releases (1.2.0-beta.1) too.
    Beta,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot list releases at {url}: {reason}")]
    Listing { url: String, reason: String },
    #[error("no {channel:?} release is published at {url}")]
    NoRelease { url: String, channel: Channel },
    #[error("release {version} lacks {asset}")]
    MissingAsset { version: String, asset: String },
    #[error("release {version} has no host build for {target}")]
    NoHostBuild { version: String, target: String },
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("the bundle's inner manifest is for {inner}, the release is {outer}; nothing was changed")]
    Mismatch { inner: String, outer: String },
    #[error("not enough disk space: {needed} bytes needed, {available} available; nothing was changed")]
    DiskFull { needed: u64, available: u64 },
    #[error("cannot read this machine's hardware: {0}")]
    Hardware(String),
    #[error("replacing the host binary failed: {0}")]
    Replace(String),
}

/// Where releases come from and which key they must be signed with.
#[derive(Debug, Clone)]
pub struct Source {
    pub api: String,
    pub owner: String,
    pub repo: String,
    /// minisign public key text.
    pub key: String,
}

impl Source {
    /// From config, overridden by BITNET_UPDATE_API / BITNET_UPDATE_REPO /
    /// BITNET_UPDATE_PUBLIC_KEY (mirrors, private forks and tests).
    pub fn from_config(config: &ConfigFile) -> Self {
        let u = &config.update;
        let api =
            std::env::var("BITNET_UPDATE_API").ok().or_else(|| u.api_url.clone()).unwrap_or_else(|| DEFAULT_API.into());
        let repo =
            std::env::var("BITNET_UPDATE_REPO").ok().or_else(|| u.repo.clone()).unwrap_or_else(|| DEFAULT_REPO.into());
        let (owner, repo) = repo.split_once('/').unwrap_or(("bitnet-host", "bitnet-host"));
        let key = std::env::var("BITNET_UPDATE_PUBLIC_KEY")
            .unwrap_or_else(|_| bitnet_installer::release::RELEASE_PUBLIC_KEY.to_string());
        Self { api: api.trim_end_matches('/').to_string(), owner: owner.into(), repo: repo.into(), key }
    }

    fn listing_url(&self) -> String {
        format!("{}/repos/{}/{}/releases", self.api, self.owner, self.repo)
    }
}

/// One published release: its version and assets (name, download URL).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub version: semver::Version,
    pub assets: Vec<(String, String)>,
}

/// The newest release the channel takes. Pure.
pub fn pick(list: &[Listed], channel: Channel) -> Option<&Listed> {
    list.iter()
        .filter(|r| channel == Channel::Beta || r.version.pre.is_empty())
        .max_by(|a, b| a.version.cmp(&b.version))
}

/// The release listing (blocking: self_update's client).
pub fn list_releases(src: &Source) -> Result<Vec<Listed>, UpdateError> {
    let err = |e: self_update::errors::Error| UpdateError::Listing { url: src.listing_url(), reason: e.to_string() };
    let releases = self_update::backends::github::ReleaseList::configure()
        .repo_owner(&src.owner)
        .repo_name(&src.repo)
        .api_base_url(&src.api)
        .build()
        .map_err(err)?
        .fetch()
        .map_err(err)?;
    Ok(releases
        .into_vec()
        .into_iter()
        .filter_map(|r| {
            let version = semver::Version::parse(r.version()).ok()?;
            let assets = r.assets().iter().map(|a| (a.name().to_string(), a.download_url().to_string())).collect();
            Some(Listed { version, assets })
        })
        .collect())
}

/// What a release would change here.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub version: String,
    pub host_current: String,
    /// The host archive to install, when the release is newer than this host.
    pub host: Option<HostArchive>,
    pub bundle_current: Option<String>,
    /// Whether the release's servers differ from the installed ones.
    pub bundle: bool,
    pub bundle_files: usize,
    #[serde(skip)]
    manifest: Manifest,
    #[serde(skip)]
    assets: Vec<(String, String)>,
}

impl Plan {
    pub fn up_to_date(&self) -> bool {
        self.host.is_none() && !self.bundle
    }
}

fn http() -> Result<reqwest::Client, UpdateError> {
    let mut headers = reqwest::header::HeaderMap::new();
    // GitHub API asset URLs serve the file (via a redirect) with this.
    headers.insert(reqwest::header::ACCEPT, reqwest::header::HeaderValue::from_static("application/octet-stream"));
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("bitnet-host/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .map_err(|e| UpdateError::Listing { url: String::new(), reason: e.to_string() })
}

async fn small_asset(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, UpdateError> {
    let net = |e: reqwest::Error| DownloadError::Network { url: url.into(), reason: e.to_string() };
    let r = client.get(url).send().await.map_err(net)?;
    if !r.status().is_success() {
        return Err(DownloadError::Http { url: url.into(), status: r.status().as_u16() }.into());
    }
    let bytes = r.bytes().await.map_err(net)?;
    Ok(bytes.to_vec())
}

fn asset<'a>(assets: &'a [(String, String)], version: &str, name: &str) -> Result<&'a str, UpdateError> {
    assets
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, u)| u.as_str())
        .ok_or_else(|| UpdateError::MissingAsset { version: version.into(), asset: name.into() })
}

/// The target triple this host was built for.
pub fn host_target() -> &'static str {
    self_update::get_target()
}

/// Find the release for `channel` and say what it would change.
pub async fn plan(dirs: &HostDirs, src: &Source, channel: Channel) -> Result<Plan, UpdateError> {
    let s = src.clone();
    let list = tokio::task::spawn_blocking(move || list_releases(&s))
        .await
        .map_err(|e| UpdateError::Listing { url: src.listing_url(), reason: e.to_string() })??;
    let chosen =
        pick(&list, channel).ok_or_else(|| UpdateError::NoRelease { url: src.listing_url(), channel })?.clone();
    let version = chosen.version.to_string();
    let client = http()?;
    let bytes = small_asset(&client, asset(&chosen.assets, &version, MANIFEST)?).await?;
    let sig = small_asset(&client, asset(&chosen.assets, &version, SIGNATURE)?).await?;
    let manifest = Manifest::verify(&bytes, &String::from_utf8_lossy(&sig), &src.key)?;
    if manifest.version != version {
        return Err(UpdateError::Mismatch { inner: manifest.version, outer: version });
    }
    let here = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is semver");
    let host = (chosen.version > here).then(|| manifest.host_for(host_target()).cloned()).flatten();
    let bins = BinariesDir::new(crate::backend::binaries_dir(dirs));
    let bundle_current = bins.active_version();
    let bundle_files = manifest.files_for(std::env::consts::OS, std::env::consts::ARCH).count();
    let newer_bundle = match &bundle_current {
        Some(v) => semver::Version::parse(v).map(|v| chosen.version > v).unwrap_or(true),
        None => true,
    };
    Ok(Plan {
        version,
        host_current: here.to_string(),
        host,
        bundle_current,
        bundle: newer_bundle && bundle_files > 0 && manifest.bundle.is_some(),
        bundle_files,
        manifest,
        assets: chosen.assets,
    })
}

/// Download the release's bundle and install it (see `install_bundle`).
pub async fn apply_bundle(
    dirs: &HostDirs,
    src: &Source,
    plan: &Plan,
    model: Option<PathBuf>,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<bitnet_installer::release::Installed, UpdateError> {
    let Some(bundle) = plan.manifest.bundle.clone() else {
        return Err(UpdateError::MissingAsset { version: plan.version.clone(), asset: "the bundle".into() });
    };
    let url = asset(&plan.assets, &plan.version, &bundle.name)?.to_string();
    let downloads = crate::backend::binaries_dir(dirs).join(".downloads");
    let dest = downloads.join(format!("{}-{}", plan.version, bundle.name));
    let available = crate::pull::free_space(&crate::backend::binaries_dir(dirs));
    // Room for the zip and the files unpacked from it.
    let unpacked: u64 =
        plan.manifest.files_for(std::env::consts::OS, std::env::consts::ARCH).map(|f| f.size).sum::<u64>();
    if let Some(avail) = available {
        if bundle.size + unpacked > avail {
            return Err(UpdateError::DiskFull { needed: bundle.size + unpacked, available: avail });
        }
    }
    let req = Request { url, dest: dest.clone(), sha256: Some(bundle.sha256.clone()) };
    let client = http()?;
    fetch(&client, &req, available, &|_| Ok(()), progress).await?;
    let r = install_bundle(dirs, &dest, &src.key, Some(&plan.version), model).await;
    // The zip is not needed once installed, nor after a refusal (a corrupt
    // one must be fetched again); an interrupted download stays as .part.
    let _ = std::fs::remove_dir_all(&downloads);
    r
}

/// Fault injection for tests: a disk-full error after this many files.
fn fail_after() -> Option<usize> {
    std::env::var("BITNET_UPDATE_FAIL_AFTER").ok().and_then(|v| v.parse().ok())
}

/// Install a bundle zip (verified with `key`): staged, swapped in, checked
/// with `model` on the best server it provides for this machine, rolled
/// back when that fails.
pub async fn install_bundle(
    dirs: &HostDirs,
    zip: &Path,
    key: &str,
    expect_version: Option<&str>,
    model: Option<PathBuf>,
) -> Result<bitnet_installer::release::Installed, UpdateError> {
    let bins = BinariesDir::new(crate::backend::binaries_dir(dirs));
    let (config, _) = crate::backend::load_config(Some(dirs));
    let handle = tokio::runtime::Handle::current();
    let zip = zip.to_path_buf();
    let key = key.to_string();
    let expect = expect_version.map(String::from);
    let dirs = dirs.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(outer) = expect {
            let (inner, _, _) = bitnet_installer::release::verify_zip(&zip, &key)?;
            if inner.version != outer {
                return Err(UpdateError::Mismatch { inner: inner.version, outer });
            }
        }
        let report =
            crate::hardware::prober(Some(&dirs)).report(false).map_err(|e| UpdateError::Hardware(e.to_string()))?;
        let platform = (std::env::consts::OS, std::env::consts::ARCH);
        let health = |dir: &Path| handle.block_on(health_check(&dirs, &config, &report, dir, model.as_deref()));
        Ok(bins.install(&zip, &key, platform, fail_after(), health)?)
    })
    .await
    .map_err(|e| UpdateError::Replace(e.to_string()))?
}

/// The best server the new bundle offers this machine must come up with
/// `model`. Nothing to check (no model, or no server for this machine in
/// the bundle) passes.
async fn health_check(
    dirs: &HostDirs,
    config: &ConfigFile,
    report: &bitnet_probe::HardwareReport,
    dir: &Path,
    model: Option<&Path>,
) -> Result<(), String> {
    let Some(model) = model else { return Ok(()) };
    let info = crate::backend::inspect_model(model).await.map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(dir.join(bitnet_installer::release::VARIANTS)).map_err(|e| e.to_string())?;
    let catalog = Catalog::parse(&text).map_err(|e| e.to_string())?;
    let sel = crate::backend::selection_in(&catalog, Some(dir), config, report, info.format.as_deref(), None, &[]);
    let Some(first) = sel.candidates.into_iter().find(|c| matches!(c.launch, Launch::Bundled { .. })) else {
        return Ok(());
    };
    tracing::info!(candidate = %first.id, model = %model.display(), "health check of the new servers");
    let settings = config.settings(1);
    let job = Job::start(JobSpec {
        model: model.to_path_buf(),
        candidates: vec![first],
        settings,
        policy: Policy::default(),
        builtin_exe: None,
        remote_api_key: None,
        log_dir: Some(crate::backend::server_logs_dir(dirs)),
        run_dir: Some(crate::backend::run_dir(dirs)),
    });
    let r = tokio::time::timeout(HEALTH_TIMEOUT, job.ready()).await;
    job.stop().await;
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not healthy within {} s", HEALTH_TIMEOUT.as_secs())),
    }
}

/// Download the host archive and check it against the signed manifest
/// (before anything is installed, so a bad one changes nothing).
pub async fn fetch_host(
    dirs: &HostDirs,
    plan: &Plan,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<PathBuf, UpdateError> {
    let Some(archive) = plan.host.clone() else {
        return Err(UpdateError::NoHostBuild { version: plan.version.clone(), target: host_target().into() });
    };
    let url = asset(&plan.assets, &plan.version, &archive.name)?.to_string();
    let dest = dirs.data.join("updates").join(&plan.version).join(&archive.name);
    let client = http()?;
    let req = Request { url, dest: dest.clone(), sha256: Some(archive.sha256.clone()) };
    Ok(fetch(&client, &req, crate::pull::free_space(&dirs.data), &|_| Ok(()), progress).await?)
}

/// Replace the running binary with the one in `archive` (from
/// `fetch_host`); the old one is kept as `<data>/previous/bitnet-host`.
pub async fn replace_host(dirs: &HostDirs, archive: PathBuf) -> Result<PathBuf, UpdateError> {
    let work = archive.parent().map(Path::to_path_buf).unwrap_or_else(|| dirs.data.join("updates"));
    let previous = dirs.data.join("previous");
    let r = tokio::task::spawn_blocking(move || replace_self(&archive, &work, &previous))
        .await
        .map_err(|e| UpdateError::Replace(e.to_string()))?;
    let _ = std::fs::remove_dir_all(dirs.data.join("updates"));
    r
}

fn replace_self(archive: &Path, work: &Path, previous: &Path) -> Result<PathBuf, UpdateError> {
    use self_update::{ArchiveKind, Compression, Extract};
    let fail = |e: &dyn std::fmt::Display| UpdateError::Replace(e.to_string());
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let kind = if name.ends_with(".zip") { ArchiveKind::Zip } else { ArchiveKind::Tar(Some(Compression::Gz)) };
    let exe_name = if cfg!(windows) { "bitnet-host.exe" } else { "bitnet-host" };
    Extract::from_source(archive).archive(kind).extract_file(work, exe_name).map_err(|e| fail(&e))?;
    let new_exe = work.join(exe_name);
    let current = std::env::current_exe().map_err(|e| fail(&e))?;
    std::fs::create_dir_all(previous).map_err(|e| fail(&e))?;
    std::fs::copy(&current, previous.join(exe_name)).map_err(|e| fail(&e))?;
    self_replace::self_replace(&new_exe).map_err(|e| fail(&e))?;
    Ok(current)
}

/// What the last availability check found (`<state>/update-check.json`,
/// shown by `status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CheckRecord {
    /// Unix seconds.
    pub checked_at: u64,
    /// The release found, when it would change something here.
    pub available: Option<String>,
    pub host: bool,
    pub servers: bool,
    /// Set when auto-apply installed the servers.
    pub applied: Option<String>,
    pub error: Option<String>,
}

pub fn check_record_path(dirs: &HostDirs) -> PathBuf {
    dirs.state.join("update-check.json")
}

pub fn last_check(dirs: &HostDirs) -> Option<CheckRecord> {
    serde_json::from_slice(&std::fs::read(check_record_path(dirs)).ok()?).ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How often the daemon checks: daily; BITNET_UPDATE_CHECK_INTERVAL_MS for tests.
fn check_interval() -> Duration {
    std::env::var("BITNET_UPDATE_CHECK_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(24 * 3600))
}

/// The daemon's background check: at most once per interval (the record's
/// time survives restarts), reports availability in the record; applies a
/// new server bundle only with `[update] auto_apply = true`, then moves the
/// loaded model to it at a safe point. Off with `[update] check = false`.
pub async fn background_checks(app: std::sync::Arc<crate::App>, dirs: HostDirs) {
    let config = app.backend.config().clone();
    let env_off = std::env::var("BITNET_UPDATE_CHECK").is_ok_and(|v| v == "0" || v == "off");
    if config.update.check == Some(false) || env_off {
        tracing::info!("update checks are off");
        return;
    }
    let interval = check_interval();
    // Not in the first minutes of a daemon's life (short-lived daemons
    // never ask), then when the last check (kept across restarts) is due.
    let mut wait = interval.min(Duration::from_secs(600));
    loop {
        let since = last_check(&dirs).map(|r| now_secs().saturating_sub(r.checked_at)).unwrap_or(u64::MAX);
        wait = wait.max(interval.saturating_sub(Duration::from_secs(since)));
        tokio::time::sleep(wait).await;
        let record = check_once(&app, &dirs, &config).await;
        if let Ok(bytes) = serde_json::to_vec_pretty(&record) {
            let _ = std::fs::create_dir_all(&dirs.state);
            let tmp = check_record_path(&dirs).with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, check_record_path(&dirs));
            }
        }
        wait = interval;
    }
}

async fn check_once(app: &crate::App, dirs: &HostDirs, config: &ConfigFile) -> CheckRecord {
    let src = Source::from_config(config);
    let channel = if config.update.channel.as_deref() == Some("beta") { Channel::Beta } else { Channel::Stable };
    let mut record = CheckRecord { checked_at: now_secs(), ..Default::default() };
    let plan = match plan(dirs, &src, channel).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("update check: {e}");
            record.error = Some(e.to_string());
            return record;
        }
    };
    record.host = plan.host.is_some();
    record.servers = plan.bundle;
    if !plan.up_to_date() {
        record.available = Some(plan.version.clone());
        tracing::info!(version = %plan.version, "an update is available");
    }
    if plan.bundle && config.update.auto_apply {
        let model = app.backend.current().await.map(|(_, info)| info.path);
        match apply_bundle(dirs, &src, &plan, model, &mut |_, _| {}).await {
            Ok(inst) => {
                record.applied = Some(inst.version.clone());
                if let Ok(report) = app.hardware().await {
                    if let Err(e) = app.backend.reload_binaries(&report).await {
                        tracing::warn!("moving to the new servers: {e}");
                    }
                }
            }
            Err(e) => record.error = Some(e.to_string()),
        }
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(v: &str) -> Listed {
        Listed { version: semver::Version::parse(v).unwrap(), assets: vec![] }
    }

    #[test]
    fn stable_takes_the_newest_release_and_beta_takes_pre_releases_too() {
        let list = [listed("0.2.0"), listed("0.3.0-beta.1"), listed("0.1.9"), listed("0.2.1-rc.1")];
        assert_eq!(pick(&list, Channel::Stable).unwrap().version.to_string(), "0.2.0");
        assert_eq!(pick(&list, Channel::Beta).unwrap().version.to_string(), "0.3.0-beta.1");
        assert!(pick(&[listed("1.0.0-beta.2")], Channel::Stable).is_none());
        assert!(pick(&[], Channel::Beta).is_none());
    }
}
