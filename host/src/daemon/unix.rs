//! The daemon over an owner-only Unix socket in an owner-only folder,
//! one daemon per user by flock; peers of another uid are refused.

use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::net::{UnixListener, UnixStream};

/// The exclusive lock that makes one daemon win.
pub struct Lock {
    _file: std::fs::File,
}

fn try_lock(path: &Path) -> std::io::Result<Option<Lock>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(Some(Lock { _file: f }))
    } else {
        Ok(None)
    }
}

fn same_user(s: &UnixStream) -> bool {
    // SAFETY: plain syscall.
    let me = unsafe { libc::geteuid() };
    s.peer_cred().map(|c| c.uid() == me).unwrap_or(false)
}

fn conn(s: UnixStream) -> Conn {
    let pid = s.peer_cred().ok().and_then(|c| c.pid());
    let (rd, wr) = s.into_split();
    Conn { rd: Box::new(rd), wr: Box::new(wr), pid }
}

pub struct Socket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Listener for Socket {
    async fn accept(&mut self) -> std::io::Result<Conn> {
        let Some(l) = &self.listener else { return std::future::pending().await };
        let (stream, _) = l.accept().await?;
        if !same_user(&stream) {
            tracing::warn!("refused a connection from another user");
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "another user"));
        }
        Ok(conn(stream))
    }

    fn release(&mut self) {
        self.listener = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock and an owner-only socket in an owner-only folder.
pub fn listen(dirs: &HostDirs) -> anyhow::Result<Option<(Socket, Lock)>> {
    let dir = run_dir(dirs);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let Some(lock) = try_lock(&dir.join("daemon.lock"))? else { return Ok(None) };
    let path = dir.join("daemon.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "listening");
    Ok(Some((Socket { listener: Some(listener), path }, lock)))
}

pub fn terminated() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        term.recv().await;
    })
}

/// A connection to a running daemon (never starts one).
pub async fn open(dirs: &HostDirs) -> std::io::Result<Conn> {
    UnixStream::connect(socket_path(dirs)).await.map(conn)
}

pub fn endpoint(dirs: &HostDirs) -> String {
    socket_path(dirs).display().to_string()
}
