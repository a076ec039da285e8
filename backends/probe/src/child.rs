//! The probe child: vendor libraries (NVML, the Vulkan loader, Metal) are
//! only ever loaded in a short-lived child process, so a driver that hangs or
//! crashes costs a timeout, never the host.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::VendorSections;
use crate::{cuda, metal, vulkan};

/// Test hook: makes the child misbehave (`hang` or `crash`) so the host's
/// handling of a bad driver can be checked for real.
pub const FAULT_ENV: &str = "BITNET_PROBE_FAULT";

/// Probes the vendor sections in this process. Call only in the child.
pub fn probe_vendors_here() -> VendorSections {
    match std::env::var(FAULT_ENV).as_deref() {
        Ok("hang") => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Ok("crash") => std::process::abort(),
        _ => {}
    }
    let nvml_lib = std::env::var_os("BITNET_NVML_LIB");
    let vulkan_lib = std::env::var_os("BITNET_VULKAN_LIB");
    VendorSections {
        cuda: cuda::probe(nvml_lib.as_deref()),
        vulkan: vulkan::probe(vulkan_lib.as_deref()),
        metal: metal::probe(),
    }
}

/// How to start the child: the host binary and the arguments that make it
/// run [`probe_vendors_here`] and print the JSON on stdout.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Runs the child and reads its sections. Never fails: a child that hangs,
/// crashes or prints nonsense yields sections that say so.
pub fn run(cmd: &ChildCommand, timeout: Duration) -> VendorSections {
    let mut child = match Command::new(&cmd.program)
        .args(&cmd.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return VendorSections::all_unavailable(&format!("probe could not start: {e}")),
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(?timeout, "hardware probe timed out");
                return VendorSections::all_unavailable(&format!("probe timed out after {} ms", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return VendorSections::all_unavailable(&format!("probe could not be waited for: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let how = describe_exit(&status);
        tracing::warn!(%how, "hardware probe crashed");
        return VendorSections::all_unavailable(&format!("probe crashed ({how})"));
    }
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| VendorSections::all_unavailable(&format!("probe output unreadable: {e}")))
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => "no exit code".into(),
    }
}
