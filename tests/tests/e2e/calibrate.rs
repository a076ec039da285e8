//! `bitnet-host calibrate`: the CPU candidates started for real through the
//! supervisor (the built-in engine, and the stand-in installed as the
//! bitnet.cpp CPU build, working at the speed STANDIN_SPEED gives it),
//! timed by their own `timings`, and the order selection gives after it.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::host_bin;
use crate::server::{fixture_model, home_with_server};

fn host(home: &Path, report: &str, args: &[&str], speed: &str) -> std::process::Output {
    Command::new(host_bin())
        .args(args)
        .env("BITNET_HOST_HOME", home)
        .env("BITNET_HOST_HARDWARE", report)
        .env("STANDIN_SPEED", speed)
        .env_remove("BITNET_KERNEL")
        .output()
        .unwrap()
}

fn calibrate(home: &Path, report: &str, model: &Path, speed: &str) -> Value {
    let out = host(home, report, &["calibrate", "--json", "--rounds", "1", "--model", model.to_str().unwrap()], speed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn order(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|c| c.as_str().or(c["id"].as_str()).unwrap()).collect()
}

fn figure<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["measured"].as_array().unwrap().iter().find(|m| m["candidate"] == id).unwrap_or_else(|| panic!("{id}: {v}"))
}

#[test]
fn calibration_orders_the_cpu_candidates_by_what_they_measured_here() {
    let (home, report) = home_with_server(&[]);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let cpu = "bitnet-cpu-linux-x86_64";

    // A bundled build that reads 200 prompt tokens/s and makes 20 tokens/s:
    // the engine on this tiny model is far faster, and goes first.
    let slow = calibrate(home.path(), &report, &model, "200,20");
    assert_eq!(slow["merit"]["basis"], "calibrated", "{slow}");
    assert_eq!(order(&slow["order"]), ["builtin", cpu], "{slow}");
    let tg = figure(&slow, cpu)["decode_tok_s"].as_f64().unwrap();
    // Its own timings, as measured while it slept: at most the pace set.
    assert!(tg > 5.0 && tg <= 20.5, "{tg}");
    assert!(figure(&slow, "builtin")["decode_tok_s"].as_f64().unwrap() > 50.0, "{slow}");
    assert_eq!(figure(&slow, "builtin")["family"], "x86_64-scalar", "the recorded report's CPU (no F16C)");
    assert!(home.path().join("state/calibration.json").is_file());

    // `select` (what every load runs) shows the same order, and why.
    let sel = host(home.path(), &report, &["select", "--explain", "--model", model.to_str().unwrap()], "");
    let text = String::from_utf8_lossy(&sel.stdout);
    assert!(text.contains("1. builtin") && text.contains(&format!("2. {cpu}")), "{text}");
    assert!(text.contains("measured on this machine"), "{text}");
    assert!(text.contains("calibrated here"), "{text}");

    // Measured again, the bundled build as fast as it can go: it leads,
    // and its new figures replace the old ones.
    let fast = calibrate(home.path(), &report, &model, "1000000,1000000");
    assert_eq!(order(&fast["order"]), [cpu, "builtin"], "{fast}");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("state/calibration.json")).unwrap()).unwrap();
    assert_eq!(stored["entries"].as_array().unwrap().len(), 2, "{stored}");

    // Another build of it (an update): its figures no longer hold, and
    // the order falls back to what the catalog says.
    let bin = home.path().join("data/binaries/cpu/linux/llama-server");
    let mut script = std::fs::read_to_string(&bin).unwrap();
    script.push_str("# rebuilt\n");
    std::fs::write(&bin, script).unwrap();
    let sel = host(home.path(), &report, &["select", "--json", "--model", model.to_str().unwrap()], "");
    let sel: Value = serde_json::from_slice(&sel.stdout).unwrap();
    assert_ne!(sel["merit"]["basis"], "calibrated", "{sel}");
}

#[test]
fn a_candidate_that_fails_is_reported_and_the_others_are_still_measured() {
    let (home, report) = home_with_server(&["crash-at-start"]);
    let model = fixture_model("bitnet-b1.58-i2_s.gguf");
    let out = host(home.path(), &report, &["calibrate", "--rounds", "1", "--model", model.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bitnet-cpu-linux-x86_64") && text.contains("not measured"), "{text}");
    assert!(text.contains("builtin") && text.contains("decode"), "{text}");
    // One measured candidate orders nothing.
    let sel = host(home.path(), &report, &["select", "--json", "--model", model.to_str().unwrap()], "");
    let sel: Value = serde_json::from_slice(&sel.stdout).unwrap();
    assert_ne!(sel["merit"]["basis"], "calibrated", "{sel}");
}
