//! This machine's own speed figures for its CPU candidates
//! (`bitnet-host calibrate` writes them, selection reads them: see
//! `bitnet_supervisor::merit`). Kept in `<state>/calibration.json` with
//! what they hold for: this machine, each candidate's binary as it was,
//! and the thread count. An entry that no longer holds (another machine
//! under the same home, an updated build, other threads) is left out of
//! selection, so stale figures never order anything.

use std::path::{Path, PathBuf};

use bitnet_probe::HardwareReport;
use bitnet_supervisor::{Catalog, Launch, Measured};
use serde::{Deserialize, Serialize};

use crate::dirs::HostDirs;

/// The most entries kept (candidates x formats); the oldest go first.
const MAX_ENTRIES: usize = 64;
/// The file is ours and small; a bigger one is not read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One candidate's figures on one format, with what they hold for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub measured: Measured,
    /// The binary that ran ([`stamp`]).
    pub binary: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// [`machine`] of the machine the entries were measured on.
    machine: String,
    entries: Vec<Entry>,
}

pub fn path(dirs: &HostDirs) -> PathBuf {
    dirs.state.join("calibration.json")
}

/// What identifies this machine's CPU for the figures: architecture,
/// brand, cores and features (memory and GPUs do not change CPU speed).
pub fn machine(report: &HardwareReport) -> String {
    let c = &report.cpu;
    let mut features = c.features.clone();
    features.sort();
    format!(
        "{} {} ({} logical cores): {}",
        c.arch,
        c.brand.as_deref().unwrap_or("unknown CPU"),
        c.logical_cores,
        features.join(" ")
    )
}

/// The CPU family key selection compares figures within: the architecture
/// and the kernels the built-in engine runs on this CPU (BITNET_KERNEL
/// included, as the engine will honour it).
pub fn family(report: &HardwareReport) -> String {
    let forced = std::env::var("BITNET_KERNEL").unwrap_or_default();
    let isa = bitnet_ternary::kernels::isa_for(&report.cpu.arch, &|f| report.cpu.has(f), &forced);
    bitnet_supervisor::merit::family(&report.cpu.arch, isa.key())
}

/// Which build of a candidate ran: the host's version for the built-in
/// engine, else the file's size and modification time (an update or a
/// rebuild changes them). None when the file cannot be read.
pub fn stamp(candidate: &str, catalog: &Catalog, bins: Option<&Path>, path_server: Option<&Path>) -> Option<String> {
    match candidate {
        "builtin" => Some(builtin_stamp()),
        "path" => file_stamp(path_server?),
        id => file_stamp(&bins?.join(&catalog.variants.iter().find(|v| v.id == id)?.file)),
    }
}

/// [`stamp`] of the binary a selected candidate launches.
pub fn launch_stamp(launch: &Launch) -> Option<String> {
    match launch {
        Launch::Builtin => Some(builtin_stamp()),
        Launch::Bundled { path } | Launch::Path { path } => file_stamp(path),
        Launch::Remote { .. } => None,
    }
}

fn builtin_stamp() -> String {
    format!("bitnet-host {}", env!("CARGO_PKG_VERSION"))
}

fn file_stamp(file: &Path) -> Option<String> {
    let m = std::fs::metadata(file).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(format!("{} bytes, modified {mtime}", m.len()))
}

fn read(dirs: &HostDirs) -> Stored {
    let p = path(dirs);
    match bitnet_safefs::read(&p, MAX_FILE_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("{}: {e}; ignoring this machine's calibration", p.display());
            Stored::default()
        }),
        Err(_) => Stored::default(),
    }
}

/// The entries that hold now: this machine, the same binaries, `threads`.
pub fn current(
    dirs: Option<&HostDirs>,
    report: &HardwareReport,
    threads: u32,
    stamp_of: &dyn Fn(&str) -> Option<String>,
) -> Vec<Measured> {
    let Some(dirs) = dirs else { return vec![] };
    let stored = read(dirs);
    if stored.machine != machine(report) {
        return vec![];
    }
    stored
        .entries
        .into_iter()
        .filter(|e| e.measured.threads == threads && stamp_of(&e.measured.candidate).as_deref() == Some(&e.binary))
        .map(|e| e.measured)
        .collect()
}

/// Adds `new` to the machine's entries, replacing those of the same
/// candidate and format (and everything measured on another machine).
pub fn record(dirs: &HostDirs, report: &HardwareReport, new: Vec<Entry>) -> std::io::Result<PathBuf> {
    let mut stored = read(dirs);
    let here = machine(report);
    if stored.machine != here {
        stored = Stored { machine: here, entries: vec![] };
    }
    stored.entries.retain(|old| {
        !new.iter().any(|n| n.measured.candidate == old.measured.candidate && n.measured.format == old.measured.format)
    });
    // Newest first: `merit` takes the first entry per candidate.
    let mut entries = new;
    entries.append(&mut stored.entries);
    entries.truncate(MAX_ENTRIES);
    stored.entries = entries;
    let p = path(dirs);
    let text = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
    bitnet_safefs::write_atomic(&p, &text)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(brand: &str) -> HardwareReport {
        let mut cpu = bitnet_probe::cpu::probe();
        cpu.brand = Some(brand.into());
        HardwareReport {
            schema: bitnet_probe::report::SCHEMA,
            os: bitnet_probe::system::os(),
            cpu,
            memory: bitnet_probe::system::memory(),
            vendor: bitnet_probe::report::VendorSections::all_unavailable("not probed in this test"),
            source: bitnet_probe::report::Source::File,
        }
    }

    fn entry(candidate: &str, format: &str, tg: f64, binary: &str) -> Entry {
        Entry {
            measured: Measured {
                candidate: candidate.into(),
                family: "x86_64-avx2".into(),
                format: format.into(),
                prompt_tok_s: 40.0,
                decode_tok_s: tg,
                threads: 2,
                source: "test".into(),
            },
            binary: binary.into(),
        }
    }

    #[test]
    fn entries_hold_for_this_machine_binary_and_threads_only() {
        let home = tempfile::tempdir().unwrap();
        let dirs = HostDirs::under(home.path().to_path_buf());
        let r = report("CPU A");
        let stamps = |c: &str| Some(if c == "builtin" { "v1".to_string() } else { "s1".to_string() });
        record(&dirs, &r, vec![entry("builtin", "i2_s", 10.0, "v1"), entry("cpu", "i2_s", 9.0, "s1")]).unwrap();
        assert_eq!(current(Some(&dirs), &r, 2, &stamps).len(), 2);
        // Other threads, another binary, another machine: nothing holds.
        assert!(current(Some(&dirs), &r, 4, &stamps).is_empty());
        let rebuilt = |c: &str| Some(if c == "builtin" { "v1".to_string() } else { "s2".to_string() });
        let held: Vec<String> = current(Some(&dirs), &r, 2, &rebuilt).into_iter().map(|m| m.candidate).collect();
        assert_eq!(held, ["builtin"]);
        assert!(current(Some(&dirs), &report("CPU B"), 2, &stamps).is_empty());
        // A new measurement replaces the old one of its candidate and format.
        record(&dirs, &r, vec![entry("builtin", "i2_s", 20.0, "v1"), entry("builtin", "tq2_0", 5.0, "v1")]).unwrap();
        let now = current(Some(&dirs), &r, 2, &stamps);
        let builtin: Vec<f64> =
            now.iter().filter(|m| m.candidate == "builtin" && m.format == "i2_s").map(|m| m.decode_tok_s).collect();
        assert_eq!((now.len(), builtin), (3, vec![20.0]));
        // Measured on another machine: the old entries go.
        record(&dirs, &report("CPU B"), vec![entry("cpu", "i2_s", 1.0, "s1")]).unwrap();
        assert_eq!(current(Some(&dirs), &report("CPU B"), 2, &stamps).len(), 1);
        assert!(current(Some(&dirs), &r, 2, &stamps).is_empty());
    }

    #[test]
    fn a_broken_file_is_no_calibration() {
        let home = tempfile::tempdir().unwrap();
        let dirs = HostDirs::under(home.path().to_path_buf());
        std::fs::create_dir_all(&dirs.state).unwrap();
        std::fs::write(path(&dirs), b"{not json").unwrap();
        assert!(current(Some(&dirs), &report("CPU A"), 2, &|_| Some("v1".into())).is_empty());
        // Recording over it works.
        record(&dirs, &report("CPU A"), vec![entry("builtin", "i2_s", 1.0, "v1")]).unwrap();
        assert_eq!(current(Some(&dirs), &report("CPU A"), 2, &|_| Some("v1".into())).len(), 1);
    }
}
