//! The host's own folders. Only the installer writes anywhere else.
//!
//! `BITNET_HOST_HOME` puts every folder under one directory: tests point it
//! into a temp dir so nothing touches the real home (as rustup's tests do with
//! RUSTUP_HOME).

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDirs {
    /// Models, server binaries.
    pub data: PathBuf,
    /// config.toml.
    pub config: PathBuf,
    /// Caches that can be rebuilt (probe results).
    pub cache: PathBuf,
    /// Logs and pid files.
    pub state: PathBuf,
}

impl HostDirs {
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }

    /// All folders under one root.
    pub fn under(root: PathBuf) -> Self {
        Self {
            data: root.join("data"),
            config: root.join("config"),
            cache: root.join("cache"),
            state: root.join("state"),
        }
    }

    /// The platform's folders, or `BITNET_HOST_HOME` when set.
    pub fn resolve() -> Option<Self> {
        if let Some(root) = std::env::var_os("BITNET_HOST_HOME").filter(|v| !v.is_empty()) {
            return Some(Self::under(PathBuf::from(root)));
        }
        let p = directories::ProjectDirs::from("org", "bitnet", "bitnet-host")?;
        Some(Self {
            data: p.data_dir().to_path_buf(),
            config: p.config_dir().to_path_buf(),
            cache: p.cache_dir().to_path_buf(),
            // Only Linux has a state dir; elsewhere state lives with local data.
            state: p.state_dir().unwrap_or_else(|| p.data_local_dir()).to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_puts_everything_below_the_root() {
        let d = HostDirs::under(PathBuf::from("/r"));
        for p in [&d.data, &d.config, &d.cache, &d.state, &d.logs()] {
            assert!(p.starts_with("/r"), "{p:?}");
        }
        assert_eq!(d.logs(), PathBuf::from("/r/state/logs"));
    }
}
