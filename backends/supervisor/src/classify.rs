//! Why a server process ended, and what to do about it. Pure: it reads the
//! exit status and the last lines the server wrote, nothing else.

use serde::Serialize;

/// How a process ended, in the terms every OS can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The exit code, when it exited on its own (Windows reports crashes as
    /// NTSTATUS codes here, e.g. 0xC000001D).
    pub code: Option<i32>,
    /// The signal that ended it (Unix).
    pub signal: Option<i32>,
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        Self { code: status.code(), signal }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(s)) => {
                write!(f, "killed by signal {s}{}", signal_name(s).map(|n| format!(" ({n})")).unwrap_or_default())
            }
            (Some(c), None) if !(0..=0xFFFF).contains(&c) => write!(f, "exit code {:#010X}", c as u32),
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, None) => write!(f, "ended without a status"),
        }
    }
}

fn signal_name(s: i32) -> Option<&'static str> {
    Some(match s {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return None,
    })
}

const SIGILL: i32 = 4;
const SIGKILL: i32 = 9;
/// A shell reports death by SIGILL as 128 + 4.
const SHELL_SIGILL: i32 = 132;
/// Windows STATUS_ILLEGAL_INSTRUCTION.
const STATUS_ILLEGAL_INSTRUCTION: i32 = 0xC000001Du32 as i32;
/// Windows STATUS_NO_MEMORY.
const STATUS_NO_MEMORY: i32 = 0xC0000017u32 as i32;
/// Windows STATUS_DLL_NOT_FOUND: a DLL the program links is not there.
const STATUS_DLL_NOT_FOUND: i32 = 0xC0000135u32 as i32;

/// What went wrong with one launch of one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The build uses instructions this CPU lacks: it can never run here.
    IllegalInstruction { exit: Exit },
    /// It ran out of (host or device) memory.
    OutOfMemory { exit: Option<Exit>, line: Option<String> },
    /// The GPU runtime failed (no device, driver error, device lost).
    GpuError { line: String },
    /// The server could not load the model (format, architecture): no
    /// restart will change that.
    ModelLoad { line: String },
    /// Someone took the port between our check and its bind.
    PortInUse,
    /// It never became healthy before the load deadline.
    LoadTimeout { waited_ms: u64 },
    /// The executable could not be started at all.
    SpawnFailed { error: String },
    /// Any other exit: worth a restart.
    Crashed { exit: Exit },
    /// A remote server did not answer, or refused us (`status`).
    Remote { error: String, status: Option<u16> },
}

/// The supervisor's next move after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start the same candidate again on another port, without counting a crash.
    RetryOtherPort,
    /// Start the same candidate again after a backoff; counts toward the crash limit.
    Restart,
    /// This candidate will not work here; go to the next one.
    NextCandidate,
}

impl Failure {
    pub fn step(&self) -> Step {
        match self {
            Failure::PortInUse => Step::RetryOtherPort,
            Failure::Crashed { .. } => Step::Restart,
            Failure::IllegalInstruction { .. }
            | Failure::OutOfMemory { .. }
            | Failure::GpuError { .. }
            | Failure::ModelLoad { .. }
            | Failure::LoadTimeout { .. }
            | Failure::SpawnFailed { .. }
            | Failure::Remote { .. } => Step::NextCandidate,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::IllegalInstruction { exit } => {
                write!(f, "illegal instruction ({exit}): this build needs CPU features this machine lacks")
            }
            Failure::OutOfMemory { line: Some(l), .. } => write!(f, "out of memory: {l}"),
            Failure::OutOfMemory { exit: Some(e), .. } => write!(f, "out of memory ({e})"),
            Failure::OutOfMemory { .. } => write!(f, "out of memory"),
            Failure::GpuError { line } => write!(f, "GPU error: {line}"),
            Failure::ModelLoad { line } => write!(f, "cannot load the model: {line}"),
            Failure::PortInUse => write!(f, "its port was taken before it could listen"),
            Failure::LoadTimeout { waited_ms } => {
                write!(f, "not healthy after {:.1} s and its log stopped moving", *waited_ms as f64 / 1000.0)
            }
            Failure::SpawnFailed { error } => write!(f, "could not be started: {error}"),
            Failure::Crashed { exit } => write!(f, "crashed ({exit})"),
            Failure::Remote { error, .. } => write!(f, "{error}"),
        }
    }
}

/// Lines that mean the GPU side failed, as llama.cpp's backends print them.
const GPU_MARKERS: &[&str] = &[
    "cuda error",
    "no cuda-capable device",
    "ggml_cuda_init: failed",
    "cublas_status",
    "errordevicelost",
    "device lost",
    "ggml_vulkan: error",
    "vk::",
    "ggml_metal_init: error",
    "mtldevice",
];

/// Lines that mean memory ran out, host or device.
const OOM_MARKERS: &[&str] = &[
    "out of memory",
    "outofdevicememory",
    "outofhostmemory",
    "std::bad_alloc",
    "failed to allocate",
    "cannot allocate memory",
    "unable to allocate",
];

/// Lines that mean the model itself could not be loaded (llama.cpp's words),
/// the most telling first: a real server prints the cause ("unknown model
/// architecture: 'bitnet-b1.58'") and then two generic lines after it.
const MODEL_MARKERS: &[&str] =
    &["unknown model architecture", "error loading model", "failed to load model", "model loading error"];

/// Lines that mean the program could not start for a missing shared
/// library (glibc's loader, macOS's dyld): a CUDA build on a machine with
/// the driver but without the CUDA runtime, a build that links the build
/// tree's libllama. No restart will change that.
const LIBRARY_MARKERS: &[&str] = &["error while loading shared libraries", "library not loaded"];

/// Lines that mean the listening socket could not be bound.
const BIND_MARKERS: &[&str] = &["couldn't bind http server socket", "address already in use"];

/// The last line holding any of `markers`.
fn find<'a>(tail: &'a [String], markers: &[&str]) -> Option<&'a String> {
    tail.iter().rev().find(|l| {
        let l = l.to_ascii_lowercase();
        markers.iter().any(|m| l.contains(m))
    })
}

/// The last line holding the first of `markers` (most telling first) that
/// any line holds.
fn find_telling<'a>(tail: &'a [String], markers: &[&str]) -> Option<&'a String> {
    markers.iter().find_map(|m| find(tail, std::slice::from_ref(m)))
}

/// Classify a process that ended on its own. `tail` is the last lines it
/// wrote (stdout and stderr interleaved), oldest first.
pub fn classify_exit(exit: Exit, tail: &[String]) -> Failure {
    if exit.signal == Some(SIGILL) || exit.code == Some(SHELL_SIGILL) || exit.code == Some(STATUS_ILLEGAL_INSTRUCTION) {
        return Failure::IllegalInstruction { exit };
    }
    if let Some(line) = find(tail, LIBRARY_MARKERS) {
        return Failure::SpawnFailed { error: line.clone() };
    }
    if exit.code == Some(STATUS_DLL_NOT_FOUND) {
        return Failure::SpawnFailed { error: format!("a DLL it needs is missing ({exit})") };
    }
    if find(tail, BIND_MARKERS).is_some() {
        return Failure::PortInUse;
    }
    // Device memory exhaustion is printed by the GPU backend, so look for
    // memory first: it is the more useful of the two names.
    if let Some(line) = find(tail, OOM_MARKERS) {
        return Failure::OutOfMemory { exit: Some(exit), line: Some(line.clone()) };
    }
    if let Some(line) = find(tail, GPU_MARKERS) {
        return Failure::GpuError { line: line.clone() };
    }
    if let Some(line) = find_telling(tail, MODEL_MARKERS) {
        return Failure::ModelLoad { line: line.clone() };
    }
    // SIGKILL we did not send is, on Linux, almost always the OOM killer.
    if exit.signal == Some(SIGKILL) || exit.code == Some(STATUS_NO_MEMORY) {
        return Failure::OutOfMemory { exit: Some(exit), line: None };
    }
    Failure::Crashed { exit }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32) -> Exit {
        Exit { code: Some(c), signal: None }
    }
    fn sig(s: i32) -> Exit {
        Exit { code: None, signal: Some(s) }
    }
    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn illegal_instruction_in_every_spelling_means_next_candidate() {
        for e in [sig(4), code(132), code(0xC000001Du32 as i32)] {
            let f = classify_exit(e, &[]);
            assert!(matches!(f, Failure::IllegalInstruction { .. }), "{e:?}");
            assert_eq!(f.step(), Step::NextCandidate);
        }
        assert_eq!(code(0xC000001Du32 as i32).to_string(), "exit code 0xC000001D");
        assert_eq!(sig(4).to_string(), "killed by signal 4 (SIGILL)");
    }

    #[test]
    fn log_lines_decide_between_port_memory_gpu_and_crash() {
        let t = lines(&["main: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8080"]);
        assert_eq!(classify_exit(code(1), &t), Failure::PortInUse);
        assert_eq!(Failure::PortInUse.step(), Step::RetryOtherPort);

        let t = lines(&["loading", "ggml_vulkan: Device memory allocation failed: ErrorOutOfDeviceMemory", "bye"]);
        assert!(matches!(classify_exit(code(1), &t), Failure::OutOfMemory { line: Some(_), .. }));

        let t = lines(&["ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected"]);
        let f = classify_exit(sig(6), &t);
        assert!(matches!(&f, Failure::GpuError { line } if line.contains("no CUDA-capable")), "{f:?}");
        assert_eq!(f.step(), Step::NextCandidate);

        assert!(matches!(classify_exit(sig(9), &[]), Failure::OutOfMemory { line: None, .. }));

        let t = lines(&["llama_model_load: error loading model: unknown model architecture: 'xyz'"]);
        let f = classify_exit(code(1), &t);
        assert!(matches!(f, Failure::ModelLoad { .. }), "{f:?}");
        assert_eq!(f.step(), Step::NextCandidate);

        let f = classify_exit(sig(11), &lines(&["llama_model_load: loaded"]));
        assert_eq!(f, Failure::Crashed { exit: sig(11) });
        assert_eq!(f.step(), Step::Restart);
        assert_eq!(classify_exit(code(1), &[]).step(), Step::Restart);
    }

    #[test]
    fn a_model_load_failure_names_its_cause_not_the_generic_lines_after_it() {
        // The end of bitnet.cpp's llama-server (2024 build) given a BitNet b1.58 2B4T file.
        let t = lines(&[
            "llama_model_load: error loading model: error loading model architecture: unknown model architecture: 'bitnet-b1.58'",
            "llama_load_model_from_file: failed to load model",
            "common_init_from_params: failed to load model '/m/model.gguf'",
            "srv    load_model: failed to load model, '/m/model.gguf'",
            "main: exiting due to model loading error",
        ]);
        let f = classify_exit(code(1), &t);
        assert_eq!(f, Failure::ModelLoad { line: t[0].clone() });
        assert!(f.to_string().ends_with("unknown model architecture: 'bitnet-b1.58'"), "{f}");
        // Only generic lines: the last of them.
        let t = lines(&[
            "srv    load_model: failed to load model, '/m/x.gguf'",
            "main: exiting due to model loading error",
        ]);
        assert_eq!(classify_exit(code(1), &t), Failure::ModelLoad { line: t[0].clone() });
    }

    #[test]
    fn a_missing_shared_library_is_a_failed_start_not_a_crash_to_restart() {
        // glibc's loader (exit 127), macOS's dyld (SIGABRT), Windows (STATUS_DLL_NOT_FOUND).
        let t = lines(&["/b/llama-server-cuda: error while loading shared libraries: libcudart.so.12: cannot open shared object file: No such file or directory"]);
        let f = classify_exit(code(127), &t);
        assert_eq!(f, Failure::SpawnFailed { error: t[0].clone() });
        assert_eq!(f.step(), Step::NextCandidate);
        let t = lines(&["dyld[4242]: Library not loaded: @rpath/libggml.dylib", "  Referenced from: /b/llama-server"]);
        assert_eq!(classify_exit(sig(6), &t), Failure::SpawnFailed { error: t[0].clone() });
        let f = classify_exit(code(0xC0000135u32 as i32), &[]);
        assert!(
            matches!(&f, Failure::SpawnFailed { error } if error.contains("DLL") && error.contains("0xC0000135")),
            "{f:?}"
        );
    }

    #[test]
    fn sigill_wins_over_whatever_the_log_says() {
        let t = lines(&["CUDA error: something", "out of memory"]);
        assert!(matches!(classify_exit(sig(4), &t), Failure::IllegalInstruction { .. }));
    }
}
