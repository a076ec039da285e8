//! `bitnet-host select` over this machine and over a recorded report.

use std::process::Command;

use serde_json::{json, Value};

use crate::host_bin;

fn select(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(host_bin())
        .arg("select")
        .args(args)
        .env("BITNET_HOST_HOME", home)
        .env_remove("BITNET_HOST_HARDWARE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cpu_candidates_are_ordered_by_the_catalog_figures_for_the_cpu_family_and_skips_are_explained() {
    let home = tempfile::tempdir().unwrap();
    // Record this machine with AVX2 and lavapipe only, so the test does not
    // depend on the CPU it runs on.
    let out =
        Command::new(host_bin()).args(["hardware", "--json"]).env("BITNET_HOST_HOME", home.path()).output().unwrap();
    let mut report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["os"]["family"] = json!("linux");
    report["cpu"]["arch"] = json!("x86_64");
    report["cpu"]["features"] = json!(["sse4.2", "avx", "avx2", "fma", "f16c"]);
    let file = home.path().join("report.json");
    std::fs::write(&file, report.to_string()).unwrap();
    let env = [("BITNET_HOST_HARDWARE", file.to_str().unwrap())];

    let text = select(home.path(), &["--explain"], &env);
    assert!(text.contains("1. builtin"), "{text}");
    assert!(text.contains("AVX2 kernels"), "{text}");
    assert!(text.contains("fits, but cpu/linux/llama-server is not installed"), "{text}");
    assert!(text.contains("needs an NVIDIA GPU"), "{text}");

    let bin = home.path().join("data/binaries/cpu/linux/llama-server");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
    // Both CPU candidates fit; the catalog's figures for x86_64-avx2 order
    // them, whichever answers the reference turn sooner first.
    for format in ["I2_S", "tq2_0", "tq1_0"] {
        let sel: Value = serde_json::from_str(&select(home.path(), &["--json", "--format", format], &env)).unwrap();
        let ids: Vec<&str> = sel["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        let by_figures: Vec<&str> =
            sel["merit"]["figures"].as_array().unwrap().iter().map(|m| m["candidate"].as_str().unwrap()).collect();
        assert_eq!(sel["merit"]["basis"], "shipped", "{format}: {sel}");
        assert_eq!(sel["merit"]["family"], "x86_64-avx2");
        assert_eq!(ids, by_figures, "{format}: {}", sel["merit"]["why"]);
        let bundled = sel["candidates"].as_array().unwrap().iter().find(|c| c["id"] == "bitnet-cpu-linux-x86_64");
        assert_eq!(bundled.unwrap()["launch"]["path"], bin.to_str().unwrap());
    }
    // The engine's AVX2 TQ2_0 kernels are ahead of bitnet.cpp's
    // (tests/benches/servers.rs: 57.8 / 20.8 against 47.8 / 10.2 tokens/s).
    let text = select(home.path(), &["--explain", "--format", "tq2_0"], &env);
    assert!(text.contains("1. builtin") && text.contains("2. bitnet-cpu-linux-x86_64"), "{text}");
    assert!(text.contains("the catalog's figures for this CPU family"), "{text}");
    assert!(text.contains("tests/benches/servers.rs"), "the figures' source is shown: {text}");
}

#[test]
fn select_reads_the_format_from_a_model_file_and_honours_the_config() {
    let home = tempfile::tempdir().unwrap();
    let model = crate::server::fixture_model("bitnet-tq2_0.gguf");
    let bin = home.path().join("data/binaries/cpu/linux/llama-server");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
    let text = select(home.path(), &["--explain", "--model", model.to_str().unwrap()], &[]);
    // bitnet.cpp's CPU build loads i2_s, not tq2_0; the built-in engine loads both.
    assert!(text.contains("cannot load tq2_0 models") || text.contains("built for"), "{text}");
    assert!(text.contains("builtin"), "{text}");

    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(home.path().join("config/config.toml"), "[server]\nvariant = \"builtin\"\n").unwrap();
    let sel: Value = serde_json::from_str(&select(home.path(), &["--json"], &[])).unwrap();
    let ids: Vec<&str> = sel["candidates"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["builtin"]);
    assert!(sel["skipped"].to_string().contains("the config forces `builtin`"));

    // A broken config is an error that names the file, not silent defaults.
    std::fs::write(home.path().join("config/config.toml"), "[server]\nthreads = 0\n").unwrap();
    let out = Command::new(host_bin()).args(["select"]).env("BITNET_HOST_HOME", home.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml") && err.contains("threads"), "{err}");
    // A file that is not GGUF.
    std::fs::remove_file(home.path().join("config/config.toml")).unwrap();
    let out = Command::new(host_bin())
        .args(["select", "--model", bin.to_str().unwrap()])
        .env("BITNET_HOST_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));
}

#[test]
fn select_names_the_engines_kernels_for_an_arm_cpu_with_and_without_dotprod() {
    let home = tempfile::tempdir().unwrap();
    let out =
        Command::new(host_bin()).args(["hardware", "--json"]).env("BITNET_HOST_HOME", home.path()).output().unwrap();
    let mut report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["os"]["family"] = json!("linux");
    report["cpu"]["arch"] = json!("aarch64");
    let file = home.path().join("report.json");
    let env = [("BITNET_HOST_HARDWARE", file.to_str().unwrap())];
    for (features, kernels) in [
        (json!(["neon", "dotprod", "i8mm"]), "NEON kernels with sdot (dotprod)"),
        (json!(["neon"]), "NEON kernels without sdot"),
    ] {
        report["cpu"]["features"] = features;
        std::fs::write(&file, report.to_string()).unwrap();
        let text = select(home.path(), &["--explain"], &env);
        assert!(text.contains(kernels), "{text}");
        // No x86 build is offered to an ARM CPU, and the skip says why.
        assert!(text.contains("built for linux/x86_64, this is linux/aarch64"), "{text}");
    }
}
