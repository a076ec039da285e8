//! The model server behind this host: the config file, which candidates fit
//! this machine and model, and the supervisor job that runs one. One model is
//! loaded at a time; loading another stops the first once its requests are
//! done. Errors are [`BackendError`]; the handlers give them wire codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_installer::release::BinariesDir;
use bitnet_probe::HardwareReport;
use bitnet_supervisor::{Catalog, ConfigFile, Inputs, Job, JobSpec, Policy, Selection};
use bitnet_ternary::Gguf;

use crate::dirs::HostDirs;

/// What can go wrong with the model server, before the handlers turn it
/// into the wire's error codes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("`model` must be an absolute path to a .gguf file")]
    NotAbsolute,
    #[error("no model file at {}", .0.display())]
    NotFound(PathBuf),
    #[error("{} is not a usable model: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("{max} requests are already waiting for the model; try again later")]
    Busy { max: usize },
    #[error("nothing here can run a {format} model")]
    NothingCanRun { format: String, skipped: Vec<String> },
    #[error("{0}")]
    Internal(String),
}

/// What the host knows about a model file after validating it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub architecture: Option<String>,
    pub format: Option<String>,
    pub bytes: u64,
    pub tensors: usize,
}

#[derive(Debug)]
pub struct Backend {
    dirs: Option<HostDirs>,
    /// The config as loaded at start; a broken file is reported, and the
    /// defaults are used meanwhile.
    config: ConfigFile,
    config_error: Option<String>,
    policy: Policy,
    job: tokio::sync::Mutex<Option<(Job, ModelInfo)>>,
    /// Requests the server may run at once; FIFO, so waiting is fair.
    slots: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    pub proxy: bitnet_supervisor::Proxy,
    /// The last `load` that failed (its file and why), until one succeeds.
    last_failure: std::sync::Mutex<Option<(PathBuf, String)>>,
    /// Headers of the models folder's files, by path, read again only when
    /// a file's size or mtime changed.
    described: std::sync::Mutex<std::collections::HashMap<PathBuf, (Stamp, FoundModel)>>,
}

/// A request's turn at the server; dropping it frees the slot.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Decrements the waiting count however the wait ends (cancel included).
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn config_path(dirs: &HostDirs) -> PathBuf {
    dirs.config.join("config.toml")
}

pub fn binaries_dir(dirs: &HostDirs) -> PathBuf {
    dirs.data.join("binaries")
}

/// Pid files of running servers.
pub fn run_dir(dirs: &HostDirs) -> PathBuf {
    dirs.state.join("run")
}

/// Server output logs.
pub fn server_logs_dir(dirs: &HostDirs) -> PathBuf {
    dirs.logs().join("servers")
}

/// Read the config file: (config, the error that made us fall back to defaults).
pub fn load_config(dirs: Option<&HostDirs>) -> (ConfigFile, Option<String>) {
    match dirs.map(|d| ConfigFile::load(&config_path(d))) {
        None => (ConfigFile::default(), None),
        Some(Ok(c)) => (c, None),
        Some(Err(e)) => {
            tracing::error!("{e}; using defaults");
            (ConfigFile::default(), Some(e.to_string()))
        }
    }
}

/// Candidates for a model of `format` on this machine, with every skip.
/// Looks in the active installed bundle (its own catalog) when an update
/// installed one, else in `<data>/binaries` with the catalog built in.
/// The CPU candidates are ordered by this machine's calibration when it
/// has one, else by the catalog's figures for this CPU family.
pub fn selection(
    dirs: Option<&HostDirs>,
    config: &ConfigFile,
    report: &HardwareReport,
    format: Option<&str>,
) -> Selection {
    let bins = dirs.map(|d| BinariesDir::new(binaries_dir(d)));
    let catalog = bins.as_ref().and_then(installed_catalog).unwrap_or_else(Catalog::bundled);
    let dir = bins.as_ref().map(BinariesDir::active_dir);
    let path_server = which::which("llama-server").ok();
    let threads = config.settings(physical_cores()).threads as u32;
    let stamp_of = |c: &str| crate::calibration::stamp(c, &catalog, dir.as_deref(), path_server.as_deref());
    let calibrated = crate::calibration::current(dirs, report, threads, &stamp_of);
    selection_in(&catalog, dir.as_deref(), config, report, format, path_server.clone(), &calibrated)
}

/// The active bundle's catalog; a bad one is logged and ignored.
fn installed_catalog(bins: &BinariesDir) -> Option<Catalog> {
    let text = bins.active_variants()?;
    Catalog::parse(&text).map_err(|e| tracing::error!("installed catalog: {e}; using the built-in one")).ok()
}

/// Selection over `catalog` with its files looked up in `dir`, and
/// `calibrated` this machine's figures that still hold.
pub fn selection_in(
    catalog: &Catalog,
    dir: Option<&Path>,
    config: &ConfigFile,
    report: &HardwareReport,
    format: Option<&str>,
    path_server: Option<PathBuf>,
    calibrated: &[bitnet_supervisor::Measured],
) -> Selection {
    let installed = |file: &str| dir.map(|b| b.join(file)).filter(|p| p.is_file());
    let prefs = config.preferences();
    let family = crate::calibration::family(report);
    bitnet_supervisor::select(&Inputs {
        report,
        catalog,
        installed: &installed,
        model_format: format,
        prefs: &prefs,
        path_server,
        cpu_family: Some(&family),
        calibrated,
    })
}

/// Validate a model file as GGUF (off the async threads: it reads the whole
/// header, which holds the vocabulary).
pub async fn inspect_model(path: &Path) -> Result<ModelInfo, BackendError> {
    if !path.is_absolute() {
        return Err(BackendError::NotAbsolute);
    }
    let p = path.to_path_buf();
    let parsed =
        tokio::task::spawn_blocking(move || Gguf::open(&p)).await.map_err(|e| BackendError::Internal(e.to_string()))?;
    match parsed {
        Ok(g) => Ok(ModelInfo {
            path: path.to_path_buf(),
            architecture: g.architecture().map(String::from),
            format: g.weight_format(),
            bytes: g.file_len,
            tensors: g.tensors.len(),
        }),
        Err(bitnet_ternary::GgufError::File(e)) if e.is_not_found() => Err(BackendError::NotFound(path.to_path_buf())),
        Err(e) => Err(BackendError::Unusable { path: path.to_path_buf(), reason: e.to_string() }),
    }
}

/// The GGUF files under `root` (two folder levels; symlinks and anything
/// that is not a regular file are left out).
pub fn scan_models(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 2 {
                dirs.push((p, depth + 1));
            } else if ft.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The model a request or command names: an absolute path as it is, else a
/// name as `models` lists it (`sub/file.gguf`, relative to the models
/// folder, plain components only: no `..`, no root). None when neither
/// names a file.
pub fn resolve_model_name(models: &Path, name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    // A catalog name once pulled: `bitnet-2b`.
    if let Some(path) = crate::catalog::find(name).map(|m| m.path(models)).filter(|p| p.is_file()) {
        return Some(path);
    }
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    let candidate = models.join(p);
    (plain && candidate.is_file()).then_some(candidate)
}

/// The model used when none is named: a pulled catalog model (catalog
/// order), else the first usable model file in the folder, else the
/// generated random-weight default when it exists.
pub fn default_model(models: &Path) -> Option<PathBuf> {
    if let Some((_, p)) = crate::catalog::pulled(models).into_iter().next() {
        return Some(p);
    }
    let generated = models.join(GENERATED_DEFAULT);
    let usable = |p: &PathBuf| bitnet_ternary::Gguf::open(p).ok().and_then(|g| g.weight_format()).is_some();
    scan_models(models)
        .into_iter()
        .filter(|p| *p != generated)
        .find(usable)
        .or(generated.is_file().then_some(generated))
}

/// Where the generated default model lives, inside the models folder.
pub const GENERATED_DEFAULT: &str = "default/bitnet-b1.58-random-tiny.gguf";

/// How `models` names a file: its path inside the models folder with `/`
/// between parts (what `resolve_model_name` takes back), else the whole
/// path for a file outside it.
pub fn model_name(models: &Path, path: &Path) -> String {
    match path.strip_prefix(models) {
        Ok(rel) if !rel.as_os_str().is_empty() => {
            rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
        }
        _ => path.display().to_string(),
    }
}

/// A GGUF file found in the models folder, as `models` lists it.
#[derive(Debug, Clone)]
pub struct FoundModel {
    pub path: PathBuf,
    pub bytes: u64,
    pub format: Option<String>,
    pub architecture: Option<String>,
    /// Why the file cannot be used, when it cannot.
    pub error: Option<String>,
}

/// A file's identity for the header cache: its size and mtime.
type Stamp = (u64, Option<std::time::SystemTime>);

/// The number of physical cores, the default thread count.
pub fn physical_cores() -> usize {
    sysinfo::System::physical_core_count()
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

impl Backend {
    pub fn new(dirs: Option<HostDirs>) -> Self {
        let (config, config_error) = load_config(dirs.as_ref());
        if let Some(d) = &dirs {
            // Servers a dead owner left behind.
            let r = bitnet_supervisor::sweep::sweep_system(&run_dir(d));
            if !r.killed.is_empty() {
                tracing::warn!(pids = ?r.killed, "stopped servers left by a host that died");
            }
        }
        let settings = config.settings(1);
        Self {
            dirs,
            config,
            config_error,
            policy: Policy::default(),
            job: tokio::sync::Mutex::new(None),
            slots: Arc::new(tokio::sync::Semaphore::new(settings.parallel as usize)),
            waiting: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            proxy: bitnet_supervisor::Proxy::new(),
            described: Default::default(),
            last_failure: Default::default(),
        }
    }

    /// Every model file under `root`, described from its header (cached by
    /// size and mtime). Blocking: call it off the async threads.
    pub fn found_models(&self, root: &Path) -> Vec<FoundModel> {
        let paths = scan_models(root);
        let mut cache = self.described.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|p, _| paths.contains(p));
        paths
            .into_iter()
            .map(|path| {
                let stamp = std::fs::metadata(&path).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
                if let Some((s, found)) = cache.get(&path) {
                    if *s == stamp {
                        return found.clone();
                    }
                }
                let (format, architecture, error) = match Gguf::open(&path) {
                    Ok(g) => (g.weight_format(), g.architecture().map(String::from), None),
                    Err(e) => (None, None, Some(e.to_string())),
                };
                let found = FoundModel { path: path.clone(), bytes: stamp.0, format, architecture, error };
                cache.insert(path, (stamp, found.clone()));
                found
            })
            .collect()
    }

    /// Settings with the thread default resolved.
    pub fn settings(&self) -> bitnet_supervisor::Settings {
        // Counting cores reads /proc; once per process is enough.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        self.config.settings(*CORES.get_or_init(physical_cores))
    }

    /// Wait for a slot at the server, in arrival order; `busy` when
    /// `max_queue` requests already wait.
    pub async fn slot(&self) -> Result<Slot, BackendError> {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        let max = self.settings().max_queue;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(BackendError::Busy { max });
        }
        let _w = Waiting(self.waiting.clone());
        let p = self.slots.clone().acquire_owned().await.map_err(|_| BackendError::Internal("slots closed".into()))?;
        Ok(Slot { _permit: p })
    }

    /// Every slot: returns once the requests using the server have finished;
    /// requests that come later queue behind (the semaphore is fair) until
    /// the returned permit is dropped. For switching what serves them
    /// without cutting anyone.
    pub async fn drain(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BackendError> {
        let all = self.settings().parallel.max(1);
        self.slots.acquire_many(all).await.map_err(|_| BackendError::Internal("slots closed".into()))
    }

    /// Requests using the server now (holding a slot).
    pub fn running(&self) -> usize {
        (self.settings().parallel.max(1) as usize).saturating_sub(self.slots.available_permits())
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn config_error(&self) -> Option<&str> {
        self.config_error.as_deref()
    }

    pub fn config(&self) -> &ConfigFile {
        &self.config
    }

    /// The job serving `model`, started if needed. Another model's server
    /// is stopped once the requests it serves have finished (new ones queue
    /// behind the switch): a load never cuts a stream.
    pub async fn load(&self, report: &HardwareReport, info: ModelInfo) -> Result<Job, BackendError> {
        if let Some((job, current)) = self.job.lock().await.as_ref() {
            if current.path == info.path {
                return Ok(job.clone());
            }
        }
        let _drained = self.drain().await?;
        let mut slot = self.job.lock().await;
        if let Some((job, current)) = slot.as_ref() {
            if current.path == info.path {
                return Ok(job.clone());
            }
        }
        if let Some((old, _)) = slot.take() {
            old.stop().await;
        }
        let job = self.start_job(report, &info)?;
        *slot = Some((job.clone(), info));
        Ok(job)
    }

    /// A load of `path` failed for good (every candidate gave up): its job is
    /// stopped and forgotten, so the next request says no model is loaded
    /// and why, instead of retrying the same failure.
    pub async fn forget_failed(&self, path: &Path, why: &str) {
        let taken = {
            let mut slot = self.job.lock().await;
            match slot.as_ref() {
                Some((_, info)) if info.path == path => slot.take(),
                _ => None,
            }
        };
        if let Some((job, _)) = taken {
            job.stop().await;
        }
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), why.to_string()));
    }

    /// The last load that failed, if none succeeded since.
    pub fn last_failure(&self) -> Option<(PathBuf, String)> {
        self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A load succeeded: the last failure is history.
    pub fn clear_failure(&self) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether loading `path` means switching from another loaded model.
    pub async fn is_switch(&self, path: &Path) -> bool {
        self.job.lock().await.as_ref().is_some_and(|(_, current)| current.path != path)
    }

    fn start_job(&self, report: &HardwareReport, info: &ModelInfo) -> Result<Job, BackendError> {
        let sel = selection(self.dirs.as_ref(), &self.config, report, info.format.as_deref());
        if sel.candidates.is_empty() {
            let reasons: Vec<String> = sel.skipped.iter().map(|s| format!("{}: {}", s.id, s.reason)).collect();
            let format = info.format.clone().unwrap_or_else(|| "?".into());
            return Err(BackendError::NothingCanRun { format, skipped: reasons });
        }
        let remote_api_key = self.config.remote.as_ref().and_then(|r| r.api_key.clone());
        let spec = JobSpec {
            model: info.path.clone(),
            candidates: sel.candidates,
            settings: self.settings(),
            policy: self.policy.clone(),
            builtin_exe: std::env::current_exe().ok(),
            remote_api_key,
            log_dir: self.dirs.as_ref().map(server_logs_dir),
            run_dir: self.dirs.as_ref().map(run_dir),
        };
        Ok(Job::start(spec))
    }

    /// Restart the loaded model on the binaries installed now (after an
    /// update), at a point where no request uses it: take every slot, so
    /// requests in flight finish and new ones queue behind (none is cut),
    /// swap the server, give the slots back. Whether a model was loaded.
    pub async fn reload_binaries(&self, report: &HardwareReport) -> Result<bool, BackendError> {
        let _drained = self.drain().await?;
        let mut slot = self.job.lock().await;
        let Some((old, info)) = slot.take() else { return Ok(false) };
        old.stop().await;
        let job = self.start_job(report, &info)?;
        *slot = Some((job, info));
        Ok(true)
    }

    pub async fn current(&self) -> Option<(Job, ModelInfo)> {
        self.job.lock().await.clone()
    }

    /// Stop and forget the loaded model. Whether there was one.
    pub async fn unload(&self) -> Option<ModelInfo> {
        let taken = self.job.lock().await.take();
        match taken {
            Some((job, info)) => {
                job.stop().await;
                Some(info)
            }
            None => None,
        }
    }
}

/// Shared by every connection.
pub type SharedBackend = Arc<Backend>;

/// The last `n` lines of a text file, reading only its end.
pub fn tail_file(path: &Path, n: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    // Lines are at most 4 KiB (the drain cuts longer ones), plus a tag.
    let want = ((n as u64 + 1) * 4200).min(len);
    f.seek(SeekFrom::Start(len - want))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    // The first line may be cut by the seek, unless we read from the start.
    let skip_first = want < len;
    let usable = if skip_first && !lines.is_empty() { &lines[1..] } else { &lines[..] };
    let from = usable.len().saturating_sub(n);
    let mut out = usable[from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_file_returns_whole_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail_file(&p, 2).unwrap(), "line 4998\nline 4999\n");
        assert_eq!(tail_file(&p, 10_000).unwrap().lines().count(), 5000);
        std::fs::write(&p, "only\n").unwrap();
        assert_eq!(tail_file(&p, 3).unwrap(), "only\n");
    }
}
