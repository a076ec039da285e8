//! Pid files for running servers, and the sweep at start that stops servers
//! whose owner died without stopping them (possible where the kernel has no
//! parent-death signal, or when the owner was killed between spawn and
//! setup). A process is only killed when its pid file says so *and* its
//! command line still matches: never by name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidRecord {
    pub pid: u32,
    pub owner_pid: u32,
    pub program: PathBuf,
    pub port: u16,
}

impl PidRecord {
    pub fn path_in(dir: &Path, pid: u32) -> PathBuf {
        dir.join(format!("server-{pid}.json"))
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = Self::path_in(dir, self.pid);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Whether `cmd` (a live process's argv) is the server this record names.
    pub fn matches(&self, cmd: &[String]) -> bool {
        let port = self.port.to_string();
        let program_matches = cmd.first().is_some_and(|a| Path::new(a) == self.program);
        let port_matches = cmd.windows(2).any(|w| w[0] == "--port" && w[1] == port);
        program_matches && port_matches
    }
}

/// What the sweep did, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct SweepReport {
    pub killed: Vec<u32>,
    pub removed_stale: usize,
    pub kept_live_owner: usize,
}

/// Stop servers left by dead owners; remove their pid files.
/// `owner_alive` and `argv_of` are the system queries (injected for tests).
pub fn sweep(
    dir: &Path,
    owner_alive: &dyn Fn(u32) -> bool,
    argv_of: &dyn Fn(u32) -> Option<Vec<String>>,
    kill: &dyn Fn(u32),
) -> SweepReport {
    let mut report = SweepReport::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return report };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let rec: Option<PidRecord> =
            bitnet_safefs::read(&path, 64 * 1024).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let Some(rec) = rec else {
            let _ = std::fs::remove_file(&path);
            report.removed_stale += 1;
            continue;
        };
        if rec.owner_pid != std::process::id() && owner_alive(rec.owner_pid) {
            report.kept_live_owner += 1;
            continue;
        }
        if argv_of(rec.pid).is_some_and(|cmd| rec.matches(&cmd)) {
            kill(rec.pid);
            report.killed.push(rec.pid);
        } else {
            report.removed_stale += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    report
}

/// [`sweep`] with the real system queries.
pub fn sweep_system(dir: &Path) -> SweepReport {
    sweep(dir, &crate::process::alive, &argv_of, &crate::process::kill_group)
}

/// A live process's argv, via sysinfo.
pub fn argv_of(pid: u32) -> Option<Vec<String>> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
    let mut sys = System::new();
    let p = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[p]),
        true,
        ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
    );
    let proc_ = sys.process(p)?;
    Some(proc_.cmd().iter().map(|s| s.to_string_lossy().into_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn rec(pid: u32, owner: u32) -> PidRecord {
        PidRecord { pid, owner_pid: owner, program: "/b/llama-server".into(), port: 31000 }
    }

    #[test]
    fn kills_only_matching_argv_of_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        rec(10, 900).write(dir.path()).unwrap(); // dead owner, argv matches -> killed
        rec(11, 900).write(dir.path()).unwrap(); // dead owner, pid reused by something else -> kept alive
        rec(12, 901).write(dir.path()).unwrap(); // live owner -> untouched
        rec(13, 900).write(dir.path()).unwrap(); // dead owner, process gone -> file removed
        std::fs::write(dir.path().join("server-14.json"), "{garbage").unwrap();
        let killed = RefCell::new(vec![]);
        let argv = |pid: u32| match pid {
            10 | 12 => Some(vec!["/b/llama-server".into(), "--port".into(), "31000".into()]),
            11 => Some(vec!["/usr/bin/vim".into(), "--port".into(), "31000".into()]),
            _ => None,
        };
        let r = sweep(dir.path(), &|o| o == 901, &argv, &|p| killed.borrow_mut().push(p));
        assert_eq!(*killed.borrow(), vec![10]);
        assert_eq!(r.killed, vec![10]);
        assert_eq!(r.kept_live_owner, 1);
        assert_eq!(r.removed_stale, 3);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("server-12.json")]);
    }

    #[test]
    fn argv_match_needs_program_and_port() {
        let r = rec(1, 2);
        assert!(r.matches(&["/b/llama-server".into(), "-m".into(), "x".into(), "--port".into(), "31000".into()]));
        assert!(!r.matches(&["/b/llama-server".into(), "--port".into(), "31001".into()]));
        assert!(!r.matches(&["/b/other".into(), "--port".into(), "31000".into()]));
        assert!(!r.matches(&[]));
    }
}
