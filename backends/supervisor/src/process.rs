//! Starting and stopping server processes so that none outlives its owner.
//!
//! Linux: each child gets its own process group (so a stop reaches whatever
//! it forks) and PR_SET_PDEATHSIG = SIGKILL. The death signal fires when the
//! *thread* that forked the child exits, not the process, so every spawn
//! happens on one thread that lives as long as the process.
//! Other Unix (macOS, the BSDs): own process group, and a guard: a process
//! forked for each server that joins the server's group and blocks reading
//! a pipe whose write end only the owner holds (close-on-exec, so no child
//! inherits it). When the owner dies, however it dies, the kernel closes
//! that end, the read returns, and the guard SIGKILLs the group, itself
//! included. A normal stop kills the group, guard and all. On Linux the
//! guard replaces PR_SET_PDEATHSIG when BITNET_PARENT_DEATH=guard, which is
//! how its tests run. [`crate::sweep`] still clears what a dead owner left
//! at the next start.
//! Windows: the host puts itself in a Job Object with kill-on-close before
//! its first spawn; children inherit the job, and when the host dies its
//! handle closes and Windows kills them all (the few lines of `win32job`
//! below; linted and unit-tested for Windows by scripts/cross-test).

use std::io;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

struct SpawnRequest {
    command: Command,
    /// Fork a pipe guard for the child (Unix without PR_SET_PDEATHSIG).
    guard: bool,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("bitnet-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    // tokio's Child registers with the runtime's SIGCHLD driver.
                    let _enter = req.runtime.enter();
                    let child = req.command.spawn();
                    #[cfg(unix)]
                    if let (true, Ok(c)) = (req.guard, &child) {
                        if let Err(e) = c.id().map_or(Ok(()), guard::watch) {
                            tracing::warn!("no guard for server {:?}: {e}", c.id());
                        }
                    }
                    #[cfg(not(unix))]
                    let _ = req.guard;
                    let _ = req.reply.send(child);
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// Spawn `command` as a supervised child: own process group, killed when this
/// process dies (Linux), killed when the handle is dropped.
#[cfg(windows)]
fn owner_job() {
    static JOB: OnceLock<Option<win32job::Job>> = OnceLock::new();
    JOB.get_or_init(|| {
        let setup = || -> Result<win32job::Job, win32job::JobError> {
            let job = win32job::Job::create()?;
            let mut info = job.query_extended_limit_info()?;
            info.limit_kill_on_job_close();
            job.set_extended_limit_info(&info)?;
            job.assign_current_process()?;
            Ok(job)
        };
        setup().map_err(|e| tracing::warn!("no kill-on-close job object: {e}")).ok()
    });
}

/// Whether servers are tied to this process's life by the pipe guard
/// rather than the kernel's parent-death signal.
fn pipe_guard() -> bool {
    #[cfg(target_os = "linux")]
    return std::env::var("BITNET_PARENT_DEATH").is_ok_and(|v| v == "guard");
    #[cfg(all(unix, not(target_os = "linux")))]
    return true;
    #[cfg(not(unix))]
    false
}

pub async fn spawn(mut command: Command) -> io::Result<Child> {
    command.kill_on_drop(true);
    let guard = pipe_guard();
    #[cfg(windows)]
    owner_job();
    #[cfg(unix)]
    {
        command.process_group(0);
    }
    #[cfg(target_os = "linux")]
    if !guard {
        let owner = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit)
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The owner may have died between fork and prctl.
                if libc::getppid() != owner {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    let (reply, rx) = oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    spawner()
        .send(SpawnRequest { command, guard, runtime, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await.map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// Send a polite stop to the child's whole process group.
pub fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall; the group id is the child's pid.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Kill a process and, when it leads one, its process group, outright.
/// (Servers we spawned lead their group; one found by the sweep may not.)
pub fn kill_group(pid: u32) {
    #[cfg(unix)]
    // SAFETY: plain syscalls.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Stop gracefully, then by force after `grace`. Returns the exit status when
/// one could be read.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let pid = child.id();
    terminate(child);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(st) => {
            // Whatever the server forked goes with it.
            if let Some(pid) = pid {
                kill_group(pid);
            }
            st.ok()
        }
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// Whether a process with this pid exists (and is not a zombie we own).
pub fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks for existence and permission.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// The pipe guard (see the module docs).
#[cfg(unix)]
mod guard {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;

    /// The owner's pipe, made once and held for the life of the process:
    /// guards read its read end; only this process holds the write end.
    /// `std::io::pipe` makes both ends close-on-exec (atomically where the
    /// OS can), so no server inherits the write end.
    fn owner_pipe() -> io::Result<&'static (io::PipeReader, io::PipeWriter)> {
        static PIPE: OnceLock<Option<(io::PipeReader, io::PipeWriter)>> = OnceLock::new();
        PIPE.get_or_init(|| io::pipe().map_err(|e| tracing::warn!("no owner pipe: {e}")).ok())
            .as_ref()
            .ok_or_else(|| io::Error::other("the owner pipe could not be made"))
    }

    /// Fork a guard for the process group `pgid` (a server that leads its
    /// group). Forked twice, so that the guard is adopted by init and never
    /// lingers as our zombie; the intermediate is reaped here.
    pub fn watch(pgid: u32) -> io::Result<()> {
        let r = owner_pipe()?.0.as_raw_fd();
        // SAFETY: sysconf has no preconditions.
        let max_fd = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(256, 65536) as libc::c_int;
        let pgid = pgid as libc::pid_t;
        // SAFETY: after fork the children only make async-signal-safe calls
        // (fork, setpgid, signal, sigprocmask, close, read, kill, _exit);
        // the parent waits for the intermediate child it made.
        unsafe {
            match libc::fork() {
                -1 => Err(io::Error::last_os_error()),
                0 => intermediate(r, pgid, max_fd),
                child => {
                    let mut status = 0;
                    while libc::waitpid(child, &mut status, 0) == -1
                        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                    {}
                    Ok(())
                }
            }
        }
    }

    /// # Safety
    /// Only in a child just forked by `watch`.
    unsafe fn intermediate(r: libc::c_int, pgid: libc::pid_t, max_fd: libc::c_int) -> ! {
        if libc::fork() != 0 {
            libc::_exit(0);
        }
        // The guard. In the server's group, so stopping the group stops it
        // too; if the server is already gone there is nothing to guard.
        if libc::setpgid(0, pgid) != 0 {
            libc::_exit(0);
        }
        // The owner's handlers (its runtime's) are not for this process.
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Hold nothing of the owner's: not its sockets, pipes or the write end.
        for fd in 0..max_fd {
            if fd != r {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(r, (&raw mut byte).cast(), 1);
            if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
                break;
            }
        }
        libc::kill(-pgid, libc::SIGKILL);
        libc::_exit(0)
    }
}
