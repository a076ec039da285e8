//! The per-launch API key, handed to the server in a file only its owner
//! can read: a command line is visible to every local user (`ps`), so the
//! key never goes there. The file lives until the server is ready (it reads
//! the key at start) or its launch ends.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A key file, removed when dropped.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// Writes `key` to a new file in `dir` that only this user can read.
    pub fn create(dir: &Path, key: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut name = [0u8; 12];
        getrandom::fill(&mut name).map_err(|e| std::io::Error::other(e.to_string()))?;
        let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!(".api-key-{name}"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Owner-only from the first byte; never a window with the
            // umask's wider mode.
            opts.mode(0o600);
        }
        let mut f = opts.open(&path)?;
        let file = KeyFile { path };
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_owner_only_and_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = KeyFile::create(dir.path(), "s3cret").unwrap();
        assert_eq!(std::fs::read_to_string(f.path()).unwrap(), "s3cret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(f.path()).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let p = f.path().to_path_buf();
        drop(f);
        assert!(!p.exists());
    }
}
