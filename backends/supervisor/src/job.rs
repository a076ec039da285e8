//! A supervisor job: one model served by the best candidate that works.
//!
//! The job is a task that owns the server process; callers hold a [`Job`]
//! handle (commands in over a channel, state out on a watch channel). Its
//! life, per candidate in order:
//!
//! ```text
//!            spawn            /health 200
//! stopped ─► starting ─► loading ─────────► ready ──idle──► stopped(idle)
//!               ▲           │ exit/deadline   │ exit
//!               │           ▼                 ▼
//!               └──backoff─ failed ◄──────────┘
//!                           │ SIGILL, OOM, GPU error, deadline, crash loop
//!                           ▼
//!                    next candidate ... none left: gave_up
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::classify::{classify_exit, Exit, Failure, Step};
use crate::config::{Policy, Settings};
pub use crate::endpoint::Endpoint;
use crate::output::{drain, Ring, Stream};
use crate::select::{Candidate, Launch};
use crate::sweep::PidRecord;
use crate::{health, port};

/// Lines of output a failure report carries.
const TAIL_LINES: usize = 30;

/// Everything a job needs to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub model: PathBuf,
    /// Best first (from [`crate::select`]).
    pub candidates: Vec<Candidate>,
    pub settings: Settings,
    pub policy: Policy,
    /// The host's own executable, for [`Launch::Builtin`] (`<exe> runner ...`).
    pub builtin_exe: Option<PathBuf>,
    /// The bearer key for [`Launch::Remote`].
    pub remote_api_key: Option<String>,
    /// Where the server's output log goes (`<dir>/server.log`).
    pub log_dir: Option<PathBuf>,
    /// Where pid files go, for the sweep after a crash of the owner.
    pub run_dir: Option<PathBuf>,
}

/// One failed launch, kept for the final report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub candidate: String,
    pub failure: Failure,
}

/// Failures kept for `status` (and tests: a watch channel only holds the
/// latest state).
const HISTORY: usize = 32;

/// What the job is doing, published on a watch channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    Stopped {
        reason: String,
    },
    Starting {
        candidate: String,
        attempt: u32,
    },
    Loading {
        candidate: String,
        pid: u32,
        port: u16,
        elapsed_ms: u64,
        log_lines: u64,
        last_line: Option<String>,
    },
    Ready {
        candidate: String,
        pid: Option<u32>,
        url: String,
        load_ms: u64,
    },
    Failed {
        candidate: String,
        failure: Failure,
        /// What happens next, in words.
        next: String,
    },
    GaveUp {
        error: String,
        attempts: Vec<Attempt>,
        tail: Vec<String>,
    },
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Stopped { .. } => "stopped",
            JobState::Starting { .. } => "starting",
            JobState::Loading { .. } => "loading",
            JobState::Ready { .. } => "ready",
            JobState::Failed { .. } => "failed",
            JobState::GaveUp { .. } => "gave_up",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("no candidate could serve the model: {error}")]
    GaveUp { error: String, attempts: Vec<Attempt>, tail: Vec<String> },
    #[error("the server was stopped")]
    Stopped,
}

type Waiter = oneshot::Sender<Result<Endpoint, JobError>>;

enum Cmd {
    /// Reply once ready (start or reload it if needed).
    Ensure(Waiter),
    Stop(oneshot::Sender<()>),
}

/// The handle. Dropping every clone stops the server.
#[derive(Debug, Clone)]
pub struct Job {
    cmds: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<JobState>,
    ring: Ring,
    last_used: Arc<Mutex<Instant>>,
    model: PathBuf,
    stats: Arc<Mutex<crate::stats::Sampler>>,
    failures: Arc<Mutex<VecDeque<Attempt>>>,
    keep_alive: Option<Duration>,
    /// Requests using the server now (`lease`): never idle while any runs.
    in_use: Arc<std::sync::atomic::AtomicUsize>,
}

/// A request's use of the server: while any lease lives the keep-alive does
/// not stop it (a long answer can outlast the keep-alive); dropping the last
/// one starts the keep-alive from then.
#[derive(Debug)]
pub struct Lease {
    in_use: Arc<std::sync::atomic::AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.in_use.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Job {
    /// Start supervising `spec`; the first candidate is launched at once.
    pub fn start(spec: JobSpec) -> Job {
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(JobState::Stopped { reason: "not started".into() });
        let ring = Ring::new(spec.policy.ring_bytes, spec.log_dir.as_ref().map(|d| d.join("server.log")));
        let last_used = Arc::new(Mutex::new(Instant::now()));
        let model = spec.model.clone();
        let failures = Arc::new(Mutex::new(VecDeque::new()));
        let keep_alive = spec.settings.keep_alive;
        let in_use = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runner = Runner {
            in_use: in_use.clone(),
            failures: failures.clone(),
            spec,
            state: state_tx,
            ring: ring.clone(),
            cmds: cmd_rx,
            waiters: Vec::new(),
            last_used: last_used.clone(),
            attempts: Vec::new(),
            http: health::client(),
        };
        tokio::spawn(runner.run());
        Job {
            cmds,
            state,
            ring,
            last_used,
            model,
            stats: Arc::new(Mutex::new(crate::stats::Sampler::new())),
            failures,
            keep_alive,
            in_use,
        }
    }

    pub fn model(&self) -> &PathBuf {
        &self.model
    }

    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.clone()
    }

    /// Wait until a server is ready, starting or reloading one if needed.
    /// Also counts as use for the idle timer.
    pub async fn ready(&self) -> Result<Endpoint, JobError> {
        self.touch();
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Ensure(tx)).map_err(|_| JobError::Stopped)?;
        let r = rx.await.unwrap_or(Err(JobError::Stopped));
        self.touch();
        r
    }

    /// Mark the server as in use (resets the keep-alive timer).
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Mark the server in use until the lease is dropped (hold it for a
    /// whole request, its stream included).
    pub fn lease(&self) -> Lease {
        self.in_use.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Lease { in_use: self.in_use.clone(), last_used: self.last_used.clone() }
    }

    /// How long until a ready server that stays unused is stopped (its
    /// keep-alive less the time since it was last used); None when it is
    /// kept loaded for good.
    pub fn unload_in(&self) -> Option<Duration> {
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        self.keep_alive.map(|k| k.saturating_sub(last.elapsed()))
    }

    /// Stop the server (SIGTERM, then SIGKILL after the grace period) and
    /// wait for it. The job stays usable: `ready()` starts it again.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Recent failures, oldest first (every launch that failed, including
    /// those that were restarted).
    pub fn failures(&self) -> Vec<Attempt> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// The last `n` lines the servers wrote.
    pub fn logs(&self, n: usize) -> Vec<String> {
        self.ring.tail(n)
    }

    pub fn logs_tagged(&self, n: usize) -> Vec<(Stream, String)> {
        self.ring.tail_tagged(n)
    }

    pub fn log_path(&self) -> Option<PathBuf> {
        self.ring.log_path()
    }

    /// RSS and CPU use of the running server, when there is one.
    pub fn stats(&self) -> Option<crate::stats::ProcStats> {
        let pid = match &*self.state.borrow() {
            JobState::Loading { pid, .. } | JobState::Ready { pid: Some(pid), .. } => *pid,
            _ => return None,
        };
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).sample(pid)
    }
}

/// How a candidate's run ended.
enum End {
    /// Give up on this candidate.
    Failed(Failure),
    /// Stopped on request; reply when done.
    Stopped(oneshot::Sender<()>),
    /// Unloaded after keep-alive.
    Idle,
    /// Every handle was dropped.
    Closed,
}

/// What happened while waiting on a process.
enum Event {
    Ready(Duration),
    Exited(Exit),
    Deadline(Duration),
    Stop(oneshot::Sender<()>),
    Idle,
    Closed,
}

struct Runner {
    spec: JobSpec,
    state: watch::Sender<JobState>,
    ring: Ring,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    waiters: Vec<Waiter>,
    last_used: Arc<Mutex<Instant>>,
    in_use: Arc<std::sync::atomic::AtomicUsize>,
    attempts: Vec<Attempt>,
    failures: Arc<Mutex<VecDeque<Attempt>>>,
    http: reqwest::Client,
}

/// A launched server.
struct Running {
    child: Child,
    pid: u32,
    port: u16,
    api_key: String,
    /// Where the server reads its key; removed once it is ready.
    key_file: Option<crate::secret::KeyFile>,
    pid_file: Option<PathBuf>,
    drains: Vec<tokio::task::JoinHandle<()>>,
    /// The ring's line count at launch: what this process wrote comes after.
    first_line: u64,
}

impl Runner {
    fn publish(&self, s: JobState) {
        tracing::debug!(state = s.name(), "server job");
        if let JobState::Failed { candidate, failure, .. } = &s {
            let mut h = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(Attempt { candidate: candidate.clone(), failure: failure.clone() });
        }
        self.state.send_replace(s);
    }

    fn resolve(&mut self, r: Result<Endpoint, JobError>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(r.clone());
        }
    }

    async fn run(mut self) {
        // Some(i): (re)start from candidate i. None: wait for a command.
        let mut start_at = Some(0);
        let mut resume = 0;
        loop {
            let Some(first) = start_at else {
                match self.cmds.recv().await {
                    None => return,
                    Some(Cmd::Ensure(w)) => {
                        self.waiters.push(w);
                        start_at = Some(resume);
                    }
                    Some(Cmd::Stop(done)) => {
                        let _ = done.send(());
                    }
                }
                continue;
            };
            self.attempts.clear();
            let mut ended = None;
            for i in first..self.spec.candidates.len() {
                match self.run_candidate(i).await {
                    End::Failed(failure) => {
                        let id = self.spec.candidates[i].id.clone();
                        let next = match self.spec.candidates.get(i + 1) {
                            Some(c) => format!("trying {}", c.id),
                            None => "no candidates left".into(),
                        };
                        self.ring.push(Stream::Supervisor, format!("giving up on {id}: {failure}; {next}"));
                        tracing::warn!(candidate = %id, %failure, "{next}");
                        self.publish(JobState::Failed { candidate: id.clone(), failure: failure.clone(), next });
                        self.attempts.push(Attempt { candidate: id, failure });
                    }
                    other => {
                        ended = Some((i, other));
                        break;
                    }
                }
            }
            start_at = None;
            match ended {
                None => {
                    let error = match self.attempts.last() {
                        Some(a) => {
                            format!("{} candidates failed; last: {}: {}", self.attempts.len(), a.candidate, a.failure)
                        }
                        None => "there is no candidate to run".into(),
                    };
                    let tail = self.ring.tail(TAIL_LINES);
                    let attempts = self.attempts.clone();
                    self.publish(JobState::GaveUp {
                        error: error.clone(),
                        attempts: attempts.clone(),
                        tail: tail.clone(),
                    });
                    self.resolve(Err(JobError::GaveUp { error, attempts, tail }));
                    resume = 0;
                }
                Some((_, End::Stopped(done))) => {
                    self.publish(JobState::Stopped { reason: "stopped on request".into() });
                    self.resolve(Err(JobError::Stopped));
                    let _ = done.send(());
                    resume = 0;
                }
                Some((i, End::Idle)) => {
                    self.publish(JobState::Stopped { reason: "unloaded after keep-alive".into() });
                    resume = i;
                }
                Some((_, End::Closed)) => return,
                Some((_, End::Failed(_))) => unreachable!("failures continue the loop"),
            }
        }
    }

    /// Run candidate `i` until it is given up, stopped or idle, restarting it
    /// after crashes.
    async fn run_candidate(&mut self, i: usize) -> End {
        let cand = self.spec.candidates[i].clone();
        if let Launch::Remote { url } = &cand.launch {
            return self.run_remote(&cand.id, url).await;
        }
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut port_retries = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.publish(JobState::Starting { candidate: cand.id.clone(), attempt });
            let mut run = match self.launch(&cand).await {
                Ok(r) => r,
                Err(f) => return End::Failed(f),
            };
            let started = Instant::now();
            let exit = match self.watch_loading(&cand.id, &mut run, started).await {
                Event::Ready(load) => {
                    // It has read its key.
                    run.key_file = None;
                    let ep = Endpoint {
                        candidate: cand.id.clone(),
                        url: format!("http://127.0.0.1:{}", run.port),
                        api_key: Some(run.api_key.clone()),
                        pid: Some(run.pid),
                    };
                    self.ring.push(
                        Stream::Supervisor,
                        format!("{} ready on port {} after {} ms", cand.id, run.port, load.as_millis()),
                    );
                    self.publish(JobState::Ready {
                        candidate: cand.id.clone(),
                        pid: Some(run.pid),
                        url: ep.url.clone(),
                        load_ms: load.as_millis() as u64,
                    });
                    self.resolve(Ok(ep.clone()));
                    match self.watch_ready(&mut run, &ep).await {
                        Event::Exited(e) => e,
                        other => return self.finish(run, other).await,
                    }
                }
                Event::Exited(e) => e,
                Event::Deadline(waited) => {
                    self.shutdown(run).await;
                    return End::Failed(Failure::LoadTimeout { waited_ms: waited.as_millis() as u64 });
                }
                other => return self.finish(run, other).await,
            };
            // Let the drains catch the last lines before classifying.
            for d in run.drains.drain(..) {
                let _ = tokio::time::timeout(Duration::from_millis(500), d).await;
            }
            remove_pid_file(&run.pid_file);
            let failure = classify_exit(exit, &self.ring.tail_since(run.first_line, TAIL_LINES));
            self.ring.push(Stream::Supervisor, format!("{} (pid {}) ended: {failure}", cand.id, run.pid));
            let delay = match failure.step() {
                Step::NextCandidate => return End::Failed(failure),
                Step::RetryOtherPort if port_retries < self.spec.policy.port_retries => {
                    port_retries += 1;
                    Duration::ZERO
                }
                Step::RetryOtherPort | Step::Restart => {
                    let now = Instant::now();
                    crashes.push_back(now);
                    while crashes.front().is_some_and(|t| now.duration_since(*t) > self.spec.policy.crash_window) {
                        crashes.pop_front();
                    }
                    if crashes.len() >= self.spec.policy.max_crashes {
                        return End::Failed(failure);
                    }
                    self.spec.policy.backoff(crashes.len(), random_unit())
                }
            };
            self.publish(JobState::Failed {
                candidate: cand.id.clone(),
                failure,
                next: format!("restarting in {} ms", delay.as_millis()),
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                ev = self.next_command() => match ev {
                    Some(e) => return self.end_without_process(e),
                    None => return End::Closed,
                },
            }
        }
    }

    /// Wait for a Stop or the channel closing while nothing runs; Ensure
    /// requests just join the waiters.
    async fn next_command(&mut self) -> Option<Event> {
        loop {
            match self.cmds.recv().await {
                None => return None,
                Some(Cmd::Ensure(w)) => self.waiters.push(w),
                Some(Cmd::Stop(done)) => return Some(Event::Stop(done)),
            }
        }
    }

    fn end_without_process(&self, e: Event) -> End {
        match e {
            Event::Stop(done) => End::Stopped(done),
            _ => End::Closed,
        }
    }

    async fn launch(&mut self, cand: &Candidate) -> Result<Running, Failure> {
        let port = port::pick().map_err(|e| Failure::SpawnFailed { error: format!("no free port: {e}") })?;
        let api_key = random_key();
        let key_dir = self.spec.run_dir.clone().unwrap_or_else(std::env::temp_dir);
        let key_file = crate::secret::KeyFile::create(&key_dir, &api_key).map_err(|e| Failure::SpawnFailed {
            error: format!("cannot write the key file in {}: {e}", key_dir.display()),
        })?;
        let (program, args) = command_line(cand, &self.spec, port, &api_key, key_file.path())?;
        let shown: Vec<String> =
            args.iter().map(|a| if *a == api_key { "<api-key>".to_string() } else { a.clone() }).collect();
        self.ring.push(Stream::Supervisor, format!("starting {}: {} {}", cand.id, program.display(), shown.join(" ")));
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = crate::process::spawn(cmd)
            .await
            .map_err(|e| Failure::SpawnFailed { error: format!("{}: {e}", program.display()) })?;
        let pid = child.id().unwrap_or(0);
        let first_line = self.ring.total_lines();
        let mut drains = Vec::new();
        if let Some(out) = child.stdout.take() {
            drains.push(tokio::spawn(drain(out, Stream::Stdout, self.ring.clone())));
        }
        if let Some(err) = child.stderr.take() {
            drains.push(tokio::spawn(drain(err, Stream::Stderr, self.ring.clone())));
        }
        let pid_file = self.spec.run_dir.as_ref().and_then(|dir| {
            let rec = PidRecord { pid, owner_pid: std::process::id(), program: program.clone(), port };
            rec.write(dir).map_err(|e| tracing::warn!("cannot write pid file: {e}")).ok()
        });
        tracing::info!(candidate = %cand.id, pid, port, "server started");
        Ok(Running { child, pid, port, api_key, key_file: Some(key_file), pid_file, drains, first_line })
    }

    /// Poll /health until ready, the process exits, or the load deadline
    /// (which moves while the log does) passes.
    async fn watch_loading(&mut self, id: &str, run: &mut Running, started: Instant) -> Event {
        let policy = self.spec.policy.clone();
        // Poll soon after spawn and back off to the policy's interval: a
        // small model is up in milliseconds, a big one takes seconds.
        let mut delay = Duration::from_millis(2).min(policy.health_interval);
        let mut seen_lines = u64::MAX;
        loop {
            let tick = tokio::time::sleep(delay);
            delay = (delay * 2).min(policy.health_interval);
            tokio::select! {
                st = run.child.wait() => return Event::Exited(exit_of(st)),
                cmd = self.cmds.recv() => match cmd {
                    None => return Event::Closed,
                    Some(Cmd::Ensure(w)) => self.waiters.push(w),
                    Some(Cmd::Stop(done)) => return Event::Stop(done),
                },
                _ = tick => {
                    if let health::Health::Ok = health::check(&self.http, run.port).await {
                        return Event::Ready(started.elapsed());
                    }
                    let quiet = self.ring.last_activity().max(started).elapsed();
                    if quiet > policy.load_stall || started.elapsed() > policy.load_max {
                        return Event::Deadline(started.elapsed());
                    }
                    let lines = self.ring.total_lines();
                    if lines != seen_lines {
                        seen_lines = lines;
                        self.publish(JobState::Loading {
                            candidate: id.to_string(),
                            pid: run.pid,
                            port: run.port,
                            elapsed_ms: started.elapsed().as_millis() as u64,
                            log_lines: lines,
                            last_line: self.ring.tail(1).pop(),
                        });
                    }
                }
            }
        }
    }

    /// Serve until the process exits, a stop, or the keep-alive runs out.
    async fn watch_ready(&mut self, run: &mut Running, ep: &Endpoint) -> Event {
        loop {
            let idle_at =
                self.spec.settings.keep_alive.map(|k| *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) + k);
            let idle = async {
                match idle_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                st = run.child.wait() => return Event::Exited(exit_of(st)),
                cmd = self.cmds.recv() => match cmd {
                    None => return Event::Closed,
                    Some(Cmd::Ensure(w)) => { let _ = w.send(Ok(ep.clone())); }
                    Some(Cmd::Stop(done)) => return Event::Stop(done),
                },
                _ = idle => {
                    // A request still running keeps it: look again a
                    // keep-alive later (the lease's drop restarts the count).
                    if self.in_use.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                        continue;
                    }
                    let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
                    if self.spec.settings.keep_alive.is_some_and(|k| last.elapsed() >= k) {
                        return Event::Idle;
                    }
                }
            }
        }
    }

    /// Stop the process for a non-failure reason and say how the run ended.
    async fn finish(&mut self, run: Running, ev: Event) -> End {
        self.shutdown(run).await;
        match ev {
            Event::Stop(done) => End::Stopped(done),
            Event::Idle => End::Idle,
            _ => End::Closed,
        }
    }

    async fn shutdown(&mut self, mut run: Running) {
        let st = crate::process::stop(&mut run.child, self.spec.policy.stop_grace).await;
        remove_pid_file(&run.pid_file);
        for d in run.drains.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(500), d).await;
        }
        let how = st.map(|s| Exit::from_status(s).to_string()).unwrap_or_else(|| "unknown status".into());
        self.ring.push(Stream::Supervisor, format!("stopped pid {} ({how})", run.pid));
    }

    /// A remote server: check it answers, then hold it as ready.
    async fn run_remote(&mut self, id: &str, url: &str) -> End {
        self.publish(JobState::Starting { candidate: id.to_string(), attempt: 1 });
        let key = self.spec.remote_api_key.clone();
        if let Err((error, status)) = health::check_remote(&self.http, url, key.as_deref()).await {
            let error = match status {
                Some(401 | 403) => format!("remote {url} refused the API key: {error}"),
                _ => format!("remote {url} does not answer: {error}"),
            };
            return End::Failed(Failure::Remote { error, status });
        }
        let ep = Endpoint { candidate: id.to_string(), url: url.to_string(), api_key: key, pid: None };
        self.publish(JobState::Ready { candidate: id.to_string(), pid: None, url: url.to_string(), load_ms: 0 });
        self.resolve(Ok(ep.clone()));
        loop {
            match self.cmds.recv().await {
                None => return End::Closed,
                Some(Cmd::Ensure(w)) => {
                    let _ = w.send(Ok(ep.clone()));
                }
                Some(Cmd::Stop(done)) => return End::Stopped(done),
            }
        }
    }
}

fn exit_of(st: std::io::Result<std::process::ExitStatus>) -> Exit {
    match st {
        Ok(s) => Exit::from_status(s),
        Err(_) => Exit { code: None, signal: None },
    }
}

fn remove_pid_file(p: &Option<PathBuf>) {
    if let Some(p) = p {
        let _ = std::fs::remove_file(p);
    }
}

/// The default llama-server argument template.
pub const DEFAULT_ARGS: &[&str] = &[
    "--model",
    "{model}",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--threads",
    "{threads}",
    "--ctx-size",
    "{ctx_size}",
    "--parallel",
    "{parallel}",
    "--api-key-file",
    "{api_key_file}",
];

/// Whether `cand`'s launch puts the API key itself on the command line (a
/// catalog entry whose args use `{api_key}`): visible to every local user.
pub fn key_on_command_line(cand: &Candidate) -> bool {
    cand.args.as_ref().is_some_and(|a| a.iter().any(|x| x.contains("{api_key}")))
}

/// The program and arguments that start `cand`. Pure apart from reading the
/// spec.
pub fn command_line(
    cand: &Candidate,
    spec: &JobSpec,
    port: u16,
    api_key: &str,
    api_key_file: &Path,
) -> Result<(PathBuf, Vec<String>), Failure> {
    let (program, mut args) = match &cand.launch {
        Launch::Bundled { path } | Launch::Path { path } => (path.clone(), Vec::new()),
        Launch::Builtin => match &spec.builtin_exe {
            Some(exe) => (exe.clone(), vec!["runner".to_string()]),
            None => return Err(Failure::SpawnFailed { error: "the host's own executable is unknown".into() }),
        },
        Launch::Remote { .. } => return Err(Failure::SpawnFailed { error: "a remote server is not spawned".into() }),
    };
    let template: Vec<String> = match &cand.args {
        Some(t) => t.clone(),
        None => DEFAULT_ARGS.iter().map(|s| s.to_string()).collect(),
    };
    let s = &spec.settings;
    for a in template {
        args.push(
            a.replace("{model}", &spec.model.to_string_lossy())
                .replace("{port}", &port.to_string())
                .replace("{threads}", &s.threads.to_string())
                .replace("{ctx_size}", &s.ctx_size.to_string())
                .replace("{gpu_layers}", &s.gpu_layers.to_string())
                .replace("{parallel}", &s.parallel.to_string())
                .replace("{api_key_file}", &api_key_file.to_string_lossy())
                .replace("{api_key}", api_key),
        );
    }
    if cand.gpu_layers && !args.iter().any(|a| a == "--n-gpu-layers" || a == "-ngl") {
        args.push("--n-gpu-layers".into());
        args.push(s.gpu_layers.to_string());
    }
    // After the template, so a catalog entry's own arguments come first and
    // the config's choice last (llama-server takes the last of a repeated flag).
    if let Some((k, v)) = &s.cache_types {
        args.extend(["--cache-type-k".into(), k.clone(), "--cache-type-v".into(), v.clone()]);
    }
    Ok((program, args))
}

/// A per-launch API key: 32 random bytes, hex.
fn random_key() -> String {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness is a broken system; still never reuse a key.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_unit() -> f64 {
    getrandom::u32().map(|x| f64::from(x) / (f64::from(u32::MAX) + 1.0)).unwrap_or(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GpuApi;

    fn spec(cands: Vec<Candidate>) -> JobSpec {
        JobSpec {
            model: "/m/model.gguf".into(),
            candidates: cands,
            settings: Settings {
                threads: 6,
                ctx_size: 2048,
                gpu_layers: 33,
                ..crate::ConfigFile::default().settings(6)
            },
            policy: Policy::default(),
            builtin_exe: Some("/opt/bitnet-host".into()),
            remote_api_key: None,
            log_dir: None,
            run_dir: None,
        }
    }

    fn cand(id: &str, launch: Launch, gpu_layers: bool, args: Option<Vec<String>>) -> Candidate {
        Candidate { id: id.into(), launch, gpu: GpuApi::None, rank: 1, gpu_layers, args }
    }

    #[test]
    fn command_lines_follow_the_template_and_add_gpu_layers_for_gpu_builds() {
        let c = cand("v", Launch::Bundled { path: "/b/llama-server-vulkan".into() }, true, None);
        let (p, a) = command_line(&c, &spec(vec![]), 31234, "k3y", Path::new("/run/k")).unwrap();
        assert_eq!(p, PathBuf::from("/b/llama-server-vulkan"));
        assert_eq!(
            a.join(" "),
            "--model /m/model.gguf --host 127.0.0.1 --port 31234 --threads 6 --ctx-size 2048 --parallel 4 --api-key-file /run/k --n-gpu-layers 33"
        );
        let b = cand("builtin", Launch::Builtin, false, None);
        let (p, a) = command_line(&b, &spec(vec![]), 1, "k", Path::new("/run/k")).unwrap();
        assert_eq!(p, PathBuf::from("/opt/bitnet-host"));
        assert_eq!(a[0], "runner");
        assert!(!a.contains(&"--n-gpu-layers".to_string()));
        assert!(!a.contains(&"--cache-type-k".to_string()), "no cache type unless the config sets one");
        // The config's KV cache types go to every server, after the template.
        let mut q8 = spec(vec![]);
        q8.settings.cache_types = Some(("q8_0".into(), "f16".into()));
        for c in [&c, &b] {
            let (_, a) = command_line(c, &q8, 1, "k", Path::new("/run/k")).unwrap();
            assert_eq!(a[a.len() - 4..].join(" "), "--cache-type-k q8_0 --cache-type-v f16", "{}", c.id);
        }
        let t = cand(
            "t",
            Launch::Path { path: "/x".into() },
            true,
            Some(vec!["-m".into(), "{model}".into(), "-ngl".into(), "{gpu_layers}".into()]),
        );
        let (_, a) = command_line(&t, &spec(vec![]), 1, "k", Path::new("/run/k")).unwrap();
        assert_eq!(a, vec!["-m", "/m/model.gguf", "-ngl", "33"]);
        // The default args take the key from a file; an entry that asks for
        // {api_key} is told apart.
        assert!(!key_on_command_line(&c) && !key_on_command_line(&t));
        let k =
            cand("k", Launch::Path { path: "/x".into() }, false, Some(vec!["--api-key".into(), "{api_key}".into()]));
        assert!(key_on_command_line(&k));
        assert!(command_line(&k, &spec(vec![]), 1, "s3cret", Path::new("/run/k"))
            .unwrap()
            .1
            .contains(&"s3cret".into()));
    }

    #[test]
    fn keys_are_random_and_long() {
        let (a, b) = (random_key(), random_key());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
