//! The daemon over a named pipe, `\\.\pipe\bitnet-host-<hash>` (the hash of
//! the daemon folder's path and the user name, so each user and each
//! BITNET_HOST_HOME has its own). The pipe's DACL admits only the user the
//! daemon runs as, and remote clients are rejected; one daemon per user by
//! a lock file opened without sharing (and the first-pipe-instance flag,
//! which Windows enforces and Wine does not).

use super::*;
use std::os::windows::io::AsRawHandle;
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeServer, ServerOptions};

use windows_sys::Win32::Foundation::{CloseHandle, LocalFree, ERROR_PIPE_BUSY, HANDLE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, GetNamedPipeServerProcessId};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// FNV-1a, 64 bits: a stable short name from a path (not a secret: the
/// DACL, not the name, keeps other users out).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub fn pipe_name(dirs: &HostDirs) -> String {
    let key = format!(
        "{}|{}",
        run_dir(dirs).to_string_lossy().to_lowercase(),
        std::env::var("USERNAME").unwrap_or_default().to_lowercase()
    );
    format!(r"\\.\pipe\bitnet-host-{:016x}", fnv1a(key.as_bytes()))
}

pub fn endpoint(dirs: &HostDirs) -> String {
    pipe_name(dirs)
}

/// The SID of the user this process runs as, in its string form (S-1-5-...).
fn current_user_sid() -> std::io::Result<String> {
    // SAFETY: each call gets buffers of the sizes it asked for; the token
    // handle and the SID string are freed before returning.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut len = 0u32;
        GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &mut len);
        // u64s: TOKEN_USER holds pointers, so the buffer must be aligned for them.
        let mut buf = vec![0u64; (len as usize).div_ceil(8).max(1)];
        let ok = GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), len, &mut len);
        let err = std::io::Error::last_os_error();
        CloseHandle(token);
        if ok == 0 {
            return Err(err);
        }
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        let mut wide: *mut u16 = std::ptr::null_mut();
        if ConvertSidToStringSidW(user.User.Sid, &mut wide) == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = (0..).take_while(|&i| *wide.add(i) != 0).count();
        let sid = String::from_utf16_lossy(std::slice::from_raw_parts(wide, n));
        LocalFree(wide.cast());
        Ok(sid)
    }
}

/// Security attributes whose DACL allows this user alone (protected: no
/// inherited entries), for every instance of the daemon's pipe.
struct OwnerOnly {
    descriptor: PSECURITY_DESCRIPTOR,
    attributes: SECURITY_ATTRIBUTES,
}

// SAFETY: the descriptor is owned by this value and only read by Windows.
unsafe impl Send for OwnerOnly {}

impl OwnerOnly {
    fn new() -> std::io::Result<Box<OwnerOnly>> {
        let sddl: Vec<u16> = format!("D:P(A;;GA;;;{})", current_user_sid()?).encode_utf16().chain([0]).collect();
        let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: a NUL-terminated SDDL string and an out pointer; the
        // descriptor is LocalFree'd on drop.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let attributes = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor,
            bInheritHandle: 0,
        };
        Ok(Box::new(OwnerOnly { descriptor, attributes }))
    }

    fn create(&mut self, name: &str, first: bool) -> std::io::Result<NamedPipeServer> {
        let mut options = ServerOptions::new();
        options.first_pipe_instance(first).reject_remote_clients(true);
        // SAFETY: the attributes and their descriptor live in `self`,
        // beyond this call.
        unsafe { options.create_with_security_attributes_raw(name, (&raw mut self.attributes).cast()) }
    }
}

impl Drop for OwnerOnly {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.descriptor) };
    }
}

/// The lock: a file no other process can open while we hold it.
pub struct Lock {
    _file: std::fs::File,
}

fn try_lock(path: &Path) -> std::io::Result<Option<Lock>> {
    use std::os::windows::fs::OpenOptionsExt;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    match std::fs::OpenOptions::new().create(true).truncate(false).write(true).share_mode(0).open(path) {
        Ok(f) => Ok(Some(Lock { _file: f })),
        Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => Ok(None),
        Err(e) => Err(e),
    }
}

pub struct Pipe {
    name: String,
    security: Box<OwnerOnly>,
    /// The instance the next client connects to; None once released.
    next: Option<NamedPipeServer>,
}

impl Listener for Pipe {
    async fn accept(&mut self) -> std::io::Result<Conn> {
        let Some(server) = &self.next else { return std::future::pending().await };
        server.connect().await?;
        // A fresh instance for the next client before handing this one out.
        let fresh = self.security.create(&self.name, false)?;
        let server = self.next.replace(fresh).expect("present above");
        let mut pid = 0u32;
        // SAFETY: a pipe handle we own and an out parameter.
        let pid = (unsafe { GetNamedPipeClientProcessId(server.as_raw_handle(), &mut pid) } != 0).then_some(pid as i32);
        let (rd, wr) = tokio::io::split(server);
        Ok(Conn { rd: Box::new(rd), wr: Box::new(wr), pid })
    }

    fn release(&mut self) {
        self.next = None;
    }
}

pub fn listen(dirs: &HostDirs) -> anyhow::Result<Option<(Pipe, Lock)>> {
    let dir = run_dir(dirs);
    std::fs::create_dir_all(&dir)?;
    let Some(lock) = try_lock(&dir.join("daemon.lock"))? else { return Ok(None) };
    let name = pipe_name(dirs);
    let mut security = OwnerOnly::new()?;
    let first = match security.create(&name, true) {
        Ok(p) => p,
        // Another process holds an instance of that name: not ours to serve.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(pipe = %name, "listening");
    Ok(Some((Pipe { name, security, next: Some(first) }, lock)))
}

/// Ctrl-C, or the console closing, logging off or shutting down.
pub fn terminated() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut close = tokio::signal::windows::ctrl_close()?;
    let mut shutdown = tokio::signal::windows::ctrl_shutdown()?;
    let mut logoff = tokio::signal::windows::ctrl_logoff()?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = close.recv() => {}
            _ = shutdown.recv() => {}
            _ = logoff.recv() => {}
        }
    })
}

/// A connection to a running daemon (never starts one); waits briefly
/// while every instance is busy.
pub async fn open(dirs: &HostDirs) -> std::io::Result<Conn> {
    let name = pipe_name(dirs);
    let t = std::time::Instant::now();
    let client = loop {
        match ClientOptions::new().open(&name) {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) && t.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut pid = 0u32;
    // SAFETY: a pipe handle we own and an out parameter.
    let pid = (unsafe { GetNamedPipeServerProcessId(client.as_raw_handle(), &mut pid) } != 0).then_some(pid as i32);
    let (rd, wr) = tokio::io::split(client);
    Ok(Conn { rd: Box::new(rd), wr: Box::new(wr), pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_folder_and_user_gets_its_own_pipe_name() {
        let a = HostDirs::under(PathBuf::from(r"C:\Users\a\bitnet"));
        let b = HostDirs::under(PathBuf::from(r"C:\Users\b\bitnet"));
        assert_ne!(pipe_name(&a), pipe_name(&b));
        assert_eq!(pipe_name(&a), pipe_name(&a));
        assert!(pipe_name(&a).starts_with(r"\\.\pipe\bitnet-host-"));
    }

    /// What makes one daemon per user: the lock file. (The first-pipe-
    /// instance flag is a second guard on Windows; Wine does not enforce it.)
    #[test]
    fn a_second_daemon_cannot_take_the_lock_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.lock");
        let first = try_lock(&path).unwrap();
        assert!(first.is_some());
        assert!(try_lock(&path).unwrap().is_none(), "two daemons held the lock");
        drop(first);
        assert!(try_lock(&path).unwrap().is_some());
    }

    #[test]
    fn the_pipe_is_created_for_this_user_and_tells_each_side_the_others_pid() {
        let sid = current_user_sid().unwrap();
        assert!(sid.starts_with("S-1-"), "{sid}");
        let name = format!(r"\\.\pipe\bitnet-host-test-{}", std::process::id());
        let mut security = OwnerOnly::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let server = security.create(&name, true).unwrap();
            let client = ClientOptions::new().open(&name).unwrap();
            server.connect().await.unwrap();
            let mut pid = 0u32;
            // SAFETY: a pipe handle we own and an out parameter.
            assert_ne!(unsafe { GetNamedPipeClientProcessId(server.as_raw_handle(), &mut pid) }, 0);
            assert_eq!(pid, std::process::id());
            // SAFETY: as above.
            assert_ne!(unsafe { GetNamedPipeServerProcessId(client.as_raw_handle(), &mut pid) }, 0);
            assert_eq!(pid, std::process::id());
        });
    }
}
