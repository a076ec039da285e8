//! The command line itself.

use std::process::Command;

use crate::host_bin;

#[test]
fn help_lists_every_public_subcommand_with_a_description() {
    let out = Command::new(host_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for (cmd, words) in [("native", "native messaging"), ("paths", "folders"), ("hardware", "CPU features")] {
        let line =
            text.lines().find(|l| l.trim_start().starts_with(cmd)).unwrap_or_else(|| panic!("{cmd} missing:\n{text}"));
        assert!(line.contains(words), "{line}");
    }
    // The probe child is internal.
    assert!(!text.lines().any(|l| l.trim_start().starts_with("probe")), "{text}");
}

#[test]
fn version_prints_name_and_version() {
    let out = Command::new(host_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim(), format!("bitnet-host {}", bitnet_host::VERSION));
}

#[test]
fn an_unknown_subcommand_fails_with_usage_on_stderr_only() {
    let out = Command::new(host_bin()).arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
