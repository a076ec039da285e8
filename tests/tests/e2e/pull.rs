//! `pull` against a model server on 127.0.0.1 (Hugging Face layout):
//! verified by the server's sha256, resumed with a Range request after a
//! cut, a bad checksum or a non-model refused with nothing left behind.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bitnet_host_tests::files::{start_model_server as start_server, ModelFiles as Files};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::host_bin;
use crate::server::fixture_model;

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn pull(home: &Path, base: &str, args: &[&str]) -> std::process::Output {
    Command::new(host_bin())
        .arg("pull")
        .args(args)
        .env("BITNET_HOST_HOME", home)
        .env("BITNET_MODELS_BASE", base)
        .output()
        .unwrap()
}

#[test]
fn pull_verifies_resumes_and_refuses_bad_files_leaving_nothing() {
    let model = std::fs::read(fixture_model("bitnet-tq2_0.gguf")).unwrap();
    let files = Arc::new(Files::default());
    {
        let mut f = files.files.lock().unwrap();
        f.insert("good.gguf".into(), (model.clone(), sha(&model)));
        f.insert("badsum.gguf".into(), (model.clone(), sha(b"something else")));
        let junk = b"GGUF but not really a model".to_vec();
        f.insert("junk.gguf".into(), (junk.clone(), sha(&junk)));
    }
    let base = start_server(files.clone());
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("data/models");

    // Cut half-way: an error that says how to resume, the part kept.
    files.cut_once.store(true, Ordering::SeqCst);
    let o = pull(home.path(), &base, &["org/repo", "--file", "good.gguf"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("run it again to resume"), "{err}");
    assert!(!models.join("good.gguf").exists());
    let part = std::fs::metadata(models.join("good.gguf.part")).unwrap().len();
    assert_eq!(part as usize, model.len() / 2);
    // Again: a Range request for the rest, verified, renamed.
    let o = pull(home.path(), &base, &["org/repo", "--file", "good.gguf"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files.ranges_seen.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(models.join("good.gguf")).unwrap(), model);
    assert!(!models.join("good.gguf.part").exists());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), models.join("good.gguf").display().to_string());

    // A checksum that does not match: refused, nothing left.
    let o = pull(home.path(), &base, &["org/repo", "--file", "badsum.gguf"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"));
    // Not a model: refused, nothing left.
    let o = pull(home.path(), &base, &["org/repo", "--file", "junk.gguf"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not usable"), "{}", String::from_utf8_lossy(&o.stderr));
    // Missing file and a server that is down: clear errors.
    let o = pull(home.path(), &base, &["org/repo", "--file", "none.gguf"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 404"));
    let o = pull(home.path(), "http://127.0.0.1:9", &["org/repo", "--file", "x.gguf"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach"));
    let left: Vec<_> = std::fs::read_dir(&models).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("good.gguf")]);
    // A symlink planted where the partial download goes is removed, not
    // written through (nor read as the start of the file).
    #[cfg(unix)]
    {
        let outside = home.path().join("precious.txt");
        std::fs::write(&outside, b"keep me").unwrap();
        std::os::unix::fs::symlink(&outside, models.join("good2.gguf.part")).unwrap();
        files.files.lock().unwrap().insert("good2.gguf".into(), (model.clone(), sha(&model)));
        let o = pull(home.path(), &base, &["org/repo", "--file", "good2.gguf"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
        assert_eq!(std::fs::read(models.join("good2.gguf")).unwrap(), model);
        std::fs::remove_file(models.join("good2.gguf")).unwrap();
    }

    // Over the protocol: progress events, then the path; a model it can load.
    let mut b = bitnet_host_tests::browser::FakeBrowser::spawn_with_env(
        host_bin(),
        &bitnet_host_tests::browser::chromium_args("abcdefghijklmnopabcdefghijklmnop"),
        &[("BITNET_MODELS_BASE", &base)],
    );
    b.send(&json!({"id": "p", "type": "pull", "model": format!("{base}/o/r/resolve/main/good.gguf")}));
    let (events, last) = b.collect("id", &json!("p"), std::time::Duration::from_secs(20));
    assert_eq!(last.value["ok"], true, "{}", last.value);
    assert!(last.value["result"]["path"].as_str().unwrap().ends_with("data/models/good.gguf"));
    let done = events.iter().rfind(|e| e["event"] == "progress").expect("progress events");
    assert_eq!(done["received"], model.len());
    assert_eq!(done["total"], model.len());
}

#[test]
fn pull_of_a_name_that_is_a_folder_is_refused_and_reports_no_success() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("data/models")).unwrap();
    for args in [
        &["http://127.0.0.1:9/m/.."][..],
        &["http://127.0.0.1:9/m/."],
        &["a/b", "--file", "."],
        &["a/b", "--file", ".."],
    ] {
        let o = pull(home.path(), "http://127.0.0.1:9", args);
        assert!(!o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn models_lists_the_folder_and_rm_removes_only_inside_it() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("data/models/sub");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture_model("bitnet-tq2_0.gguf"), dir.join("tiny.gguf")).unwrap();
    let outside = home.path().join("keep.gguf");
    std::fs::write(&outside, b"x").unwrap();
    let run =
        |args: &[&str]| Command::new(host_bin()).args(args).env("BITNET_HOST_HOME", home.path()).output().unwrap();
    let o = run(&["models", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "sub/tiny.gguf");
    assert_eq!(v[0]["format"], "tq2_0");
    assert_eq!(v[0]["bytes"], 521_632);
    assert!(!run(&["rm", "../../keep.gguf"]).status.success());
    assert!(!run(&["rm", "/etc/passwd"]).status.success());
    assert!(outside.exists());
    // A symlinked folder inside models/ does not lead a delete outside it.
    #[cfg(unix)]
    {
        let elsewhere = home.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, home.path().join("data/models/link")).unwrap();
        let o = run(&["rm", "link/keep.gguf"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("is a symlink"), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(elsewhere.join("keep.gguf").exists());
        std::fs::remove_file(home.path().join("data/models/link")).unwrap();
    }
    assert!(run(&["rm", "sub/tiny.gguf"]).status.success());
    assert!(!dir.join("tiny.gguf").exists());
    let text = String::from_utf8(run(&["models"]).stdout).unwrap();
    assert!(text.starts_with("no models in"), "{text}");
}

#[test]
fn pull_bitnet_2b_by_its_catalog_name_and_every_command_then_finds_it_by_that_name() {
    let model = std::fs::read(fixture_model("bitnet-b1.58-i2_s.gguf")).unwrap();
    let files = Arc::new(Files::default());
    files.files.lock().unwrap().insert("ggml-model-i2_s.gguf".into(), (model.clone(), sha(&model)));
    let base = start_server(files.clone());
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(host_bin())
            .args(args)
            .env("BITNET_HOST_HOME", home.path())
            .env("BITNET_MODELS_BASE", &base)
            .env_remove("BITNET_HOST_HARDWARE")
            .output()
            .unwrap()
    };
    let list = String::from_utf8(run(&["pull", "--list"]).stdout).unwrap();
    let row = list.lines().find(|l| l.starts_with("bitnet-2b ")).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains("microsoft/bitnet-b1.58-2B-4T-gguf") && row.contains(" - "), "{row}");

    let o = pull(home.path(), &base, &["bitnet-2b"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Its own folder: another repository's ggml-model-i2_s.gguf cannot clash.
    let placed = home.path().join("data/models/bitnet-2b/ggml-model-i2_s.gguf");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), placed.display().to_string());
    assert_eq!(std::fs::read(&placed).unwrap(), model);
    let list = String::from_utf8(run(&["pull", "--list"]).stdout).unwrap();
    assert!(list.lines().any(|l| l.starts_with("bitnet-2b ") && l.contains("pulled")), "{list}");
    let models = String::from_utf8(run(&["ls"]).stdout).unwrap();
    assert!(models.starts_with("bitnet-2b/ggml-model-i2_s.gguf "), "{models}");

    // chat with no model takes it (and says so); by its short name, the same answer.
    let default = run(&["chat", "Hello", "-n", "6", "--temperature", "0"]);
    let err = String::from_utf8_lossy(&default.stderr);
    assert!(default.status.success(), "{err}");
    assert!(err.contains("Using bitnet-2b") && !err.contains("RANDOM"), "{err}");
    let named = run(&["chat", "Hello", "-m", "bitnet-2b", "-n", "6", "--temperature", "0"]);
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
    assert_eq!(named.stdout, default.stdout);
    // bench takes the same default.
    let bench = run(&["bench", "-p", "8", "-n", "4", "-t", "1"]);
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success() && text.contains("bitnet-2b"), "{text}{}", String::from_utf8_lossy(&bench.stderr));
    assert!(text.contains("KV cache f16, 0 tokens of context first"), "{text}");
    // After 20 tokens of context, with q8_0 keys: one row of figures.
    let deep = run(&["bench", "-p", "8", "-n", "4", "-t", "1", "-d", "20", "--ctk", "q8_0"]);
    let text = String::from_utf8_lossy(&deep.stdout);
    assert!(deep.status.success(), "{text}{}", String::from_utf8_lossy(&deep.stderr));
    assert!(text.contains("KV cache q8_0, 20 tokens of context first"), "{text}");
    let row = text.lines().last().unwrap().split_whitespace().collect::<Vec<_>>();
    assert!(row.len() == 4 && row[0] == "1" && row[2].parse::<f64>().unwrap() > 0.0, "{text}");
    let both = run(&["bench", "-p", "8", "-n", "4", "--ctk", "q8_0", "--ctv", "q8_0"]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("q8_0 keys with f16 values"), "{both:?}");

    // select reads the format from the model it names.
    let sel = run(&["select", "-m", "bitnet-2b", "--json"]);
    assert!(sel.status.success(), "{}", String::from_utf8_lossy(&sel.stderr));
    let v: serde_json::Value = serde_json::from_slice(&sel.stdout).unwrap();
    let skipped = v["skipped"].to_string();
    assert!(skipped.contains("cannot load i2_s models"), "{v}");
    // A name that is in no catalog: the error lists the names there are.
    let o = pull(home.path(), &base, &["bitnet-9000b"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("catalog name: bitnet-2b"), "{o:?}");
}
