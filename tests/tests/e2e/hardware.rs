//! The hardware probe through the real binary: real Vulkan (lavapipe from
//! Debian's mesa-vulkan-drivers), NVML absent, a probe child that hangs or
//! crashes, the cache, and recorded reports.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::host_bin;

/// Runs `bitnet-host hardware --json [extra]` in `home` with `env`.
fn hardware(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(host_bin());
    cmd.args(["hardware", "--json"]).args(extra).env("BITNET_HOST_HOME", home).env_remove("BITNET_HOST_HARDWARE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "hardware failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("hardware --json prints JSON")
}

#[test]
fn lavapipe_is_listed_as_a_cpu_device_and_not_counted_as_a_gpu() {
    let home = tempfile::tempdir().unwrap();
    let r = hardware(home.path(), &["--refresh"], &[]);
    assert_eq!(r["source"], "probed");
    let vulkan = &r["vulkan"];
    assert_eq!(
        vulkan["status"], "available",
        "Vulkan must be available here (CI installs libvulkan1 and mesa-vulkan-drivers): {vulkan}"
    );
    let devices = vulkan["devices"].as_array().unwrap();
    let soft: Vec<&Value> = devices.iter().filter(|d| d["name"].as_str().unwrap().contains("llvmpipe")).collect();
    assert_eq!(soft.len(), 1, "{devices:?}");
    assert_eq!(soft[0]["kind"], "cpu");
    assert_eq!(soft[0]["counts_as_gpu"], false);
    assert_eq!(soft[0]["uuid"].as_str().unwrap().len(), 32);
    // And it is not a GPU in the legacy view either.
    let mut b = bitnet_host_tests::browser::FakeBrowser::spawn(host_bin(), &["native".to_string()]);
    b.send(&json!({"action": "get_system_info", "messageId": 1}));
    let legacy = b.recv(std::time::Duration::from_secs(10));
    assert_eq!(legacy["has_vulkan"], false, "{legacy}");
    assert_eq!(legacy["devices"]["vulkan_gpu"], json!([]));
}

#[test]
fn no_vulkan_loader_is_unavailable_with_a_reason() {
    let home = tempfile::tempdir().unwrap();
    let r = hardware(home.path(), &["--refresh"], &[("BITNET_VULKAN_LIB", "/nonexistent/libvulkan.so.1")]);
    assert_eq!(r["vulkan"]["status"], "unavailable");
    let reason = r["vulkan"]["reason"].as_str().unwrap();
    assert!(reason.contains("Vulkan loader") && reason.contains("not found"), "{reason}");
}

#[test]
fn without_nvml_cuda_is_unavailable_with_a_reason() {
    let home = tempfile::tempdir().unwrap();
    let r = hardware(home.path(), &["--refresh"], &[]);
    assert_eq!(r["cuda"]["status"], "unavailable", "this machine has no NVIDIA driver: {}", r["cuda"]);
    let reason = r["cuda"]["reason"].as_str().unwrap();
    assert!(reason.contains("libnvidia-ml"), "{reason}");
    // A file that is not a library at all fails the same clean way.
    let bogus = home.path().join("libnvidia-ml.so.1");
    std::fs::write(&bogus, b"not a library").unwrap();
    let r = hardware(home.path(), &["--refresh"], &[("BITNET_NVML_LIB", bogus.to_str().unwrap())]);
    assert_eq!(r["cuda"]["status"], "unavailable");
    assert!(r["cuda"]["reason"].as_str().unwrap().contains("libnvidia-ml"), "{}", r["cuda"]);
}

#[test]
fn a_hanging_probe_child_times_out_and_the_host_carries_on() {
    let home = tempfile::tempdir().unwrap();
    let env = [("BITNET_PROBE_FAULT", "hang"), ("BITNET_PROBE_TIMEOUT_MS", "300")];
    let r = hardware(home.path(), &[], &env);
    for section in ["cuda", "vulkan", "metal"] {
        assert_eq!(r[section]["status"], "unavailable");
        assert_eq!(r[section]["reason"], "probe timed out after 300 ms");
    }
    // What needs no vendor library is still there.
    assert!(r["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    // A failed probe is not cached: the next start probes for real.
    let r = hardware(home.path(), &[], &[]);
    assert_eq!(r["source"], "probed");
    assert_eq!(r["vulkan"]["status"], "available");
}

#[test]
fn a_crashing_probe_child_is_reported_and_the_native_host_keeps_serving() {
    let home = tempfile::tempdir().unwrap();
    let r = hardware(home.path(), &[], &[("BITNET_PROBE_FAULT", "crash")]);
    let reason = r["vulkan"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("probe crashed (signal"), "{reason}");

    // In native mode: hello and hardware answer, with the reason.
    let mut cmd_env = bitnet_host_tests::browser::FakeBrowser::spawn_with_env(
        host_bin(),
        &["native".to_string()],
        &[("BITNET_PROBE_FAULT", "crash")],
    );
    let hello = cmd_env.request(&json!({"id": 1, "type": "hello"}));
    assert_eq!(hello["ok"], true, "{hello}");
    assert!(hello["result"]["hardware"]["cuda"]["reason"].as_str().unwrap().starts_with("probe crashed"));
    let hw = cmd_env.request(&json!({"id": 2, "type": "hardware"}));
    assert_eq!(hw["result"]["cpu"]["arch"], std::env::consts::ARCH);
    let ping = cmd_env.request(&json!({"id": 3, "type": "ping"}));
    assert_eq!(ping["ok"], true);
}

#[test]
fn the_vendor_sections_are_cached_until_refresh_or_a_library_change() {
    let home = tempfile::tempdir().unwrap();
    let first = hardware(home.path(), &[], &[]);
    assert_eq!(first["source"], "probed");
    assert!(home.path().join("cache/hardware.json").exists());
    let second = hardware(home.path(), &[], &[]);
    assert_eq!(second["source"], "cache");
    assert_eq!(second["vulkan"], first["vulkan"]);
    let third = hardware(home.path(), &["--refresh"], &[]);
    assert_eq!(third["source"], "probed");
    // A different Vulkan library is a different key.
    let lib = home.path().join("libvulkan-custom.so");
    std::fs::write(&lib, b"x").unwrap();
    let fourth = hardware(home.path(), &[], &[("BITNET_VULKAN_LIB", lib.to_str().unwrap())]);
    assert_eq!(fourth["source"], "probed");
    assert_eq!(fourth["vulkan"]["status"], "unavailable");
}

#[test]
fn a_recorded_report_replaces_probing_and_a_bad_one_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let mut recorded = hardware(home.path(), &[], &[]);
    recorded["cpu"]["brand"] = json!("Recorded CPU 9000");
    recorded["cpu"]["features"] = json!(["neon", "dotprod"]);
    let file = home.path().join("apple.json");
    std::fs::write(&file, recorded.to_string()).unwrap();
    let r = hardware(home.path(), &[], &[("BITNET_HOST_HARDWARE", file.to_str().unwrap())]);
    assert_eq!(r["source"], "file");
    assert_eq!(r["cpu"]["brand"], "Recorded CPU 9000");
    assert_eq!(r["cpu"]["features"], json!(["neon", "dotprod"]));

    std::fs::write(&file, b"{\"schema\": 1}").unwrap();
    let out = Command::new(host_bin())
        .args(["hardware", "--json"])
        .env("BITNET_HOST_HOME", home.path())
        .env("BITNET_HOST_HARDWARE", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a valid report"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_table_names_each_section() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(host_bin()).arg("hardware").env("BITNET_HOST_HOME", home.path()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for label in ["CPU ", "Features", "Memory", "CUDA", "Vulkan", "llvmpipe", "(not a GPU)", "Metal"] {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
}
