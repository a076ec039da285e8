//! Reading files whose path came from outside (a request, a manifest, a
//! record, a config): the one place that decides what may be opened.
//!
//! - Only regular files are opened (symlinks followed): a FIFO would block
//!   `open` until a writer came, a device or `/proc` file may never end, a
//!   socket or folder is no file at all. The check is made on the path and
//!   again on the open file, which is opened without blocking.
//! - Every whole-file read has a limit, checked against the file's size
//!   before reading and enforced while reading (a file may grow).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is {kind}, not a regular file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{} is over the {limit}-byte limit for this kind of file", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
}

impl SafeFsError {
    /// Whether the file does not exist (callers often treat that as "none").
    pub fn is_not_found(&self) -> bool {
        matches!(self, SafeFsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a path that is not a regular file is, in words.
pub fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if t.is_dir() {
        "a folder"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, never blocking.
pub fn open_regular(path: &Path) -> Result<File, SafeFsError> {
    let io = |source| SafeFsError::Io { path: path.to_path_buf(), source };
    let not_a_file = |t| SafeFsError::NotAFile { path: path.to_path_buf(), kind: kind_of(t) };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // For the moment between the check and the open: a FIFO put in the
        // file's place must not block us.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    Ok(file)
}

/// The whole of a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, SafeFsError> {
    let file = open_regular(path)?;
    let io = |source| SafeFsError::Io { path: path.to_path_buf(), source };
    let len = file.metadata().map_err(io)?.len();
    if len > limit {
        return Err(SafeFsError::TooLarge { path: path.to_path_buf(), limit });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(SafeFsError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

/// As [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String, SafeFsError> {
    let bytes = read(path, limit)?;
    String::from_utf8(bytes).map_err(|_| SafeFsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// flushed to disk, renamed over it. A crash leaves the old file or the new
/// one, never half of one. The folder is made if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("safefs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn regular_files_are_read_within_their_limit() {
        let d = scratch("limit");
        let f = d.join("a.json");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read(&f, 10).unwrap(), b"0123456789");
        assert!(matches!(read(&f, 9), Err(SafeFsError::TooLarge { limit: 9, .. })));
        assert!(read(&d.join("missing"), 10).unwrap_err().is_not_found());
        assert!(matches!(read(&d, 10), Err(SafeFsError::NotAFile { kind: "a folder", .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fifos_devices_and_proc_files_are_refused_without_blocking() {
        let d = scratch("kinds");
        let fifo = d.join("m.gguf");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read(&fifo, 10), Err(SafeFsError::NotAFile { kind: "a FIFO", .. })));
        let zero = d.join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(read(&zero, 10), Err(SafeFsError::NotAFile { kind: "a device", .. })));
        // /proc files say they are empty regular files and then never end
        // (or end far past their size): the limit holds while reading.
        if Path::new("/proc/self/status").exists() {
            assert!(matches!(read(Path::new("/proc/self/status"), 16), Err(SafeFsError::TooLarge { .. })));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
