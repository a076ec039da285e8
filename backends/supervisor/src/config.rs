//! The user's config file (`config.toml` in the platform config dir) and the
//! supervisor's timing policy.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::select::Preferences;

/// Default time a server stays loaded with no request.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_CTX_SIZE: u32 = 4096;
/// "All layers": llama-server clamps it to the model's layer count.
pub const DEFAULT_GPU_LAYERS: u32 = 999;
pub const DEFAULT_PARALLEL: u32 = 4;
pub const DEFAULT_MAX_QUEUE: usize = 256;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `config.toml`, as written by the user. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    pub remote: Option<RemoteSection>,
    #[serde(default)]
    pub update: UpdateSection,
    #[serde(default)]
    pub http: HttpSection,
}

/// `[http]`: the daemon's OpenAI-compatible API for other local apps.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    #[serde(default)]
    pub enabled: bool,
    /// On 127.0.0.1; default 11435.
    pub port: Option<u16>,
}

/// `[update]`: where releases come from and what the daemon does on its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSection {
    /// GitHub-style API base (a mirror or GitHub Enterprise).
    pub api_url: Option<String>,
    /// "owner/name" of the repository whose releases are installed.
    pub repo: Option<String>,
    /// "stable" (default) or "beta" (pre-releases too).
    pub channel: Option<String>,
    /// The daemon's daily availability check; `false` turns it off.
    pub check: Option<bool>,
    /// Apply what the daily check finds instead of only reporting it.
    #[serde(default)]
    pub auto_apply: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Use only this candidate (a catalog id, "builtin", "path" or "remote").
    pub variant: Option<String>,
    pub threads: Option<usize>,
    pub ctx_size: Option<u32>,
    pub gpu_layers: Option<u32>,
    /// "300", "90s", "5m", "1h", or "never".
    pub keep_alive: Option<String>,
    /// Requests the server runs at once (llama-server `--parallel`).
    pub parallel: Option<u32>,
    /// How the KV cache stores keys and values (llama-server
    /// `--cache-type-k/-v`): "f16" or "f32" for both, or "q8_0" keys with
    /// "f16" values (`check_cache_types`); the server's default when unset.
    pub cache_type_k: Option<String>,
    pub cache_type_v: Option<String>,
    /// Requests that may wait for a slot; past it, `busy`.
    pub max_queue: Option<usize>,
    /// A request fails when the server sends nothing for this long ("120s").
    pub request_timeout: Option<String>,
    #[serde(default)]
    pub allow_path_server: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSection {
    /// An OpenAI-compatible base URL (without `/v1`).
    pub url: String,
    pub api_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// What the supervisor needs from the config, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub threads: usize,
    pub ctx_size: u32,
    pub gpu_layers: u32,
    /// None: never unload.
    pub keep_alive: Option<Duration>,
    pub parallel: u32,
    pub max_queue: usize,
    pub request_timeout: Duration,
    /// `--cache-type-k` / `--cache-type-v` for every server, when set.
    pub cache_types: Option<(String, String)>,
}

/// The KV cache types every candidate accepts (llama-server and the
/// built-in engine's runner): the same type for keys and values, f16 or
/// f32, or q8_0 keys with f16 values (quantized values need llama.cpp's
/// flash attention, and the engine widens values anyway).
pub fn check_cache_types(k: &str, v: &str) -> Result<(), String> {
    match (k.to_ascii_lowercase().as_str(), v.to_ascii_lowercase().as_str()) {
        ("f16", "f16") | ("f32", "f32") | ("q8_0", "f16") => Ok(()),
        (k @ ("f16" | "f32" | "q8_0"), v @ ("f16" | "f32" | "q8_0")) => Err(format!(
            "cache types {k} and {v}: keys and values must be the same type (f16 or f32), or q8_0 keys with f16 values"
        )),
        _ => Err(format!("cache types: f16, f32, or q8_0 (keys only) (got {k} and {v})")),
    }
}

impl ConfigFile {
    /// Read the config; a missing file is the default config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = match bitnet_safefs::read_to_string(path, 1 << 20) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(Self::default()),
            Err(e) => return Err(ConfigError::Read { path: shown, source: std::io::Error::other(e.to_string()) }),
        };
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: shown.clone(), source },
            ConfigError::Invalid { problem, .. } => ConfigError::Invalid { path: shown.clone(), problem },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: ConfigFile =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: "config".into(), source })?;
        let invalid = |problem: String| ConfigError::Invalid { path: "config".into(), problem };
        if let Some(k) = &c.server.keep_alive {
            parse_keep_alive(k).map_err(invalid)?;
        }
        if let Some(t) = &c.server.request_timeout {
            match parse_keep_alive(t) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(invalid("server.request_timeout cannot be `never`".into())),
                Err(e) => return Err(invalid(e.replace("keep_alive", "request_timeout"))),
            }
        }
        if c.server.parallel == Some(0) {
            return Err(invalid("server.parallel must be at least 1".into()));
        }
        if c.server.threads == Some(0) {
            return Err(invalid("server.threads must be at least 1".into()));
        }
        match (&c.server.cache_type_k, &c.server.cache_type_v) {
            (None, None) => {}
            (k, v) => check_cache_types(k.as_deref().unwrap_or("f16"), v.as_deref().unwrap_or("f16"))
                .map_err(|e| invalid(format!("server.cache_type_k / cache_type_v: {e}")))?,
        }
        if let Some(r) = &c.remote {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(invalid(format!("remote.url must start with http:// or https://, got `{}`", r.url)));
            }
        }
        Ok(c)
    }

    pub fn preferences(&self) -> Preferences {
        Preferences {
            force: self.server.variant.clone(),
            remote_url: self.remote.as_ref().map(|r| r.url.trim_end_matches('/').to_string()),
            allow_path_server: self.server.allow_path_server,
        }
    }

    /// Settings with defaults filled in; `physical_cores` is the thread default.
    pub fn settings(&self, physical_cores: usize) -> Settings {
        let keep_alive = match &self.server.keep_alive {
            // Checked in parse().
            Some(k) => parse_keep_alive(k).unwrap_or(Some(DEFAULT_KEEP_ALIVE)),
            None => Some(DEFAULT_KEEP_ALIVE),
        };
        Settings {
            threads: self.server.threads.unwrap_or(physical_cores.max(1)),
            ctx_size: self.server.ctx_size.unwrap_or(DEFAULT_CTX_SIZE),
            gpu_layers: self.server.gpu_layers.unwrap_or(DEFAULT_GPU_LAYERS),
            keep_alive,
            parallel: self.server.parallel.unwrap_or(DEFAULT_PARALLEL),
            max_queue: self.server.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            request_timeout: self
                .server
                .request_timeout
                .as_deref()
                .and_then(|t| parse_keep_alive(t).ok().flatten())
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            cache_types: match (&self.server.cache_type_k, &self.server.cache_type_v) {
                (None, None) => None,
                // Checked in parse(); the one left out is f16, the servers' default.
                (k, v) => Some((
                    k.as_deref().unwrap_or("f16").to_ascii_lowercase(),
                    v.as_deref().unwrap_or("f16").to_ascii_lowercase(),
                )),
            },
        }
    }
}

/// "300" / "300s" / "5m" / "1h" / "never" -> Some(duration) or None (never).
pub fn parse_keep_alive(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "never" {
        return Ok(None);
    }
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("keep_alive `{s}`: expected e.g. 300, 90s, 5m, 1h or never"))?;
    let secs = match unit {
        "ms" => return Ok(Some(Duration::from_millis(n))),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("keep_alive `{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Ok(Some(Duration::from_secs(secs)))
}

/// How patient the supervisor is. Tests shrink these.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Longest time between /health polls while loading (the first polls
    /// come sooner: 2 ms after spawn, doubling up to this).
    pub health_interval: Duration,
    /// Loading fails when the server has been silent this long without
    /// becoming healthy (the deadline extends while its log moves).
    pub load_stall: Duration,
    /// Loading fails after this long, log or not.
    pub load_max: Duration,
    /// First restart delay; doubles per crash, with jitter, up to `restart_max`.
    pub restart_base: Duration,
    pub restart_max: Duration,
    /// This many crashes within `crash_window` and the candidate is given up.
    pub max_crashes: usize,
    pub crash_window: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How much of the server's output is kept in memory.
    pub ring_bytes: usize,
    /// Port collisions retried before counting as a crash.
    pub port_retries: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_millis(50),
            load_stall: Duration::from_secs(60),
            load_max: Duration::from_secs(15 * 60),
            restart_base: Duration::from_millis(250),
            restart_max: Duration::from_secs(15),
            max_crashes: 3,
            crash_window: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
            ring_bytes: 256 << 10,
            port_retries: 5,
        }
    }
}

impl Policy {
    /// Delay before restart number `n` (1-based): base * 2^(n-1), capped,
    /// then between 50% and 100% of that (jitter, so that many hosts do not
    /// restart in step). `unit` is a random number in [0, 1).
    pub fn backoff(&self, n: usize, unit: f64) -> Duration {
        let exp = self.restart_base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
        let capped = exp.min(self.restart_max);
        capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses_into_preferences_and_settings() {
        let c = ConfigFile::parse(
            r#"
[server]
variant = "vulkan-linux-x86_64"
threads = 6
ctx_size = 8192
gpu_layers = 20
keep_alive = "10m"
allow_path_server = true

[remote]
url = "http://10.0.0.5:8080/"
api_key = "k"
"#,
        )
        .unwrap();
        let p = c.preferences();
        assert_eq!(p.force.as_deref(), Some("vulkan-linux-x86_64"));
        assert_eq!(p.remote_url.as_deref(), Some("http://10.0.0.5:8080"));
        assert!(p.allow_path_server);
        let s = c.settings(4);
        assert_eq!(
            s,
            Settings {
                threads: 6,
                ctx_size: 8192,
                gpu_layers: 20,
                keep_alive: Some(Duration::from_secs(600)),
                parallel: DEFAULT_PARALLEL,
                max_queue: DEFAULT_MAX_QUEUE,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                cache_types: None,
            }
        );
    }

    #[test]
    fn cache_types_are_checked_and_the_one_left_out_is_f16() {
        let types = |t: &str| ConfigFile::parse(&format!("[server]\n{t}")).map(|c| c.settings(1).cache_types);
        assert_eq!(types("cache_type_k = \"q8_0\"").unwrap(), Some(("q8_0".into(), "f16".into())));
        assert_eq!(
            types("cache_type_k = \"F32\"\ncache_type_v = \"f32\"").unwrap(),
            Some(("f32".into(), "f32".into()))
        );
        assert_eq!(types("").unwrap(), None);
        for bad in ["cache_type_k = \"f32\"", "cache_type_v = \"q8_0\"", "cache_type_k = \"q4_0\""] {
            let e = types(bad).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }) && e.to_string().contains("cache"), "{bad}: {e}");
        }
        assert!(check_cache_types("q8_0", "f32").unwrap_err().contains("q8_0 keys with f16 values"));
        assert!(check_cache_types("f16", "f16").is_ok());
    }

    #[test]
    fn defaults_and_bad_values() {
        let s = ConfigFile::parse("").unwrap().settings(8);
        assert_eq!(s.threads, 8);
        assert_eq!(s.keep_alive, Some(DEFAULT_KEEP_ALIVE));
        assert!(matches!(ConfigFile::parse("[server]\nthreads = 0"), Err(ConfigError::Invalid { .. })));
        assert!(matches!(ConfigFile::parse("[server]\nkeep_alive = \"5 weeks\""), Err(ConfigError::Invalid { .. })));
        assert!(matches!(ConfigFile::parse("[server]\ncolour = 1"), Err(ConfigError::Parse { .. })));
        assert!(matches!(ConfigFile::parse("[remote]\nurl = \"ftp://x\""), Err(ConfigError::Invalid { .. })));
        assert!(matches!(ConfigFile::parse("[server]\nrequest_timeout = \"never\""), Err(ConfigError::Invalid { .. })));
        assert!(matches!(ConfigFile::parse("[server]\nparallel = 0"), Err(ConfigError::Invalid { .. })));
        let s =
            ConfigFile::parse("[server]\nparallel = 2\nmax_queue = 3\nrequest_timeout = \"30s\"").unwrap().settings(1);
        assert_eq!((s.parallel, s.max_queue, s.request_timeout), (2, 3, Duration::from_secs(30)));
        assert_eq!(parse_keep_alive("never"), Ok(None));
        assert_eq!(parse_keep_alive("90"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_keep_alive("250ms"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(parse_keep_alive("1h"), Ok(Some(Duration::from_secs(3600))));
    }

    #[test]
    fn a_missing_file_is_the_default_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ConfigFile::load(&dir.path().join("none.toml")).unwrap(), ConfigFile::default());
        assert!(matches!(ConfigFile::load(dir.path()), Err(ConfigError::Read { .. })));
        std::fs::write(dir.path().join("bad.toml"), "[server").unwrap();
        let e = ConfigFile::load(&dir.path().join("bad.toml")).unwrap_err();
        assert!(e.to_string().contains("bad.toml"), "{e}");
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let p = Policy {
            restart_base: Duration::from_millis(100),
            restart_max: Duration::from_secs(1),
            ..Policy::default()
        };
        assert_eq!(p.backoff(1, 0.999_999).as_millis(), 99);
        assert_eq!(p.backoff(1, 0.0).as_millis(), 50);
        assert_eq!(p.backoff(3, 0.0).as_millis(), 200);
        assert_eq!(p.backoff(10, 0.0).as_millis(), 500);
        assert_eq!(p.backoff(64, 0.0).as_millis(), 500);
    }
}
