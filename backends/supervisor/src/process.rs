//! Starting and stopping server processes so that none outlives its owner.
//!
//! Linux: each child gets its own process group (so a stop reaches whatever
//! it forks) and PR_SET_PDEATHSIG = SIGKILL. The death signal fires when the
//! *thread* that forked the child exits, not the process, so every spawn
//! happens on one thread that lives as long as the process.
//! Other Unix: own process group; the kernel has no parent-death signal, so
//! a dead owner's children are found by [`crate::sweep`] at the next start.
//! Windows: the host puts itself in a Job Object with kill-on-close before
//! its first spawn; children inherit the job, and when the host dies its
//! handle closes and Windows kills them all (the few lines of `win32job`
//! below; linted and unit-tested for Windows by scripts/cross-test).
//! macOS: process group + the sweep; a watchdog pipe is still to come.

use std::io;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

struct SpawnRequest {
    command: Command,
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
                    let _ = req.reply.send(req.command.spawn());
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

pub async fn spawn(mut command: Command) -> io::Result<Child> {
    command.kill_on_drop(true);
    #[cfg(windows)]
    owner_job();
    #[cfg(unix)]
    {
        command.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
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
        .send(SpawnRequest { command, runtime, reply })
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
