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

#[test]
fn chat_hello_works_on_a_fresh_home_with_the_generated_default_model() {
    let home = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(host_bin())
            .args(["chat", "Hello", "--temperature", "0", "--max-tokens", "12"])
            .env("BITNET_HOST_HOME", home.path())
            .env_remove("BITNET_HOST_HARDWARE")
            .output()
            .unwrap()
    };
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert!(err.contains("RANDOM weights"), "the default model must say what it is: {err}");
    assert!(err.contains("on builtin"), "nothing is installed, so the built-in engine serves: {err}");
    let text = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(text.ends_with('\n') && text.trim_end().chars().count() > 0, "{text:?}");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{text:?}");
    let model = home.path().join("data/models/default/bitnet-b1.58-random-tiny.gguf");
    assert!(model.is_file());
    // Second run: same model file, greedy, so the same answer; no servers left.
    let second = run();
    assert!(second.status.success());
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(std::fs::read_dir(home.path().join("state/run")).unwrap().count(), 0);
    // Ollama's verbs, and the model by the name `models` lists.
    let cmd = |args: &[&str]| {
        std::process::Command::new(host_bin())
            .args(args)
            .env("BITNET_HOST_HOME", home.path())
            .env_remove("BITNET_HOST_HARDWARE")
            .output()
            .unwrap()
    };
    let listed = cmd(&["ls"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("default/bitnet-b1.58-random-tiny.gguf"));
    assert_eq!(cmd(&["list"]).stdout, listed.stdout);
    let named = cmd(&[
        "run",
        "Hello",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--model",
        "default/bitnet-b1.58-random-tiny.gguf",
    ]);
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
    assert_eq!(named.stdout, first.stdout, "the same model, so the same greedy answer");
    let missing = cmd(&["run", "Hi", "--model", "nosuch.gguf"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("bitnet-host models"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let outside = cmd(&["run", "Hi", "--model", "../../etc/passwd"]);
    assert!(!outside.status.success());
    // A conversation: slash commands stay out of the model's context; the
    // stats line says the first-token time; Ctrl-D (end of input) leaves
    // cleanly on a new line.
    let converse = |input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(host_bin())
            .args(["chat", "--temperature", "0", "--max-tokens", "6"])
            .env("BITNET_HOST_HOME", home.path())
            .env_remove("BITNET_HOST_HARDWARE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = converse("/help\n/system Be brief.\nHello\n/clear\n/nonsense\n/bye\nnever sent\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("/system TEXT") && err.contains("(system message set)") && err.contains("(conversation cleared)"),
        "{err}"
    );
    assert!(err.contains("unknown command /nonsense"), "{err}");
    assert!(err.contains("tokens, first after") && err.contains("tokens/s, decode "), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1, "one answer, to Hello only");
    let o = converse("Hello\n");
    assert!(o.status.success());
    assert!(o.stderr.ends_with(b"> \n"), "{:?}", String::from_utf8_lossy(&o.stderr));
    // The second turn resends the first: the engine's prompt cache answers
    // it, and the stats line says how much.
    let o = converse("Hello\nAnd then?\n");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("tokens, first after")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(!lines[0].contains("cached)") && lines[1].contains("cached) at"), "{err}");
}

/// The subcommands `--help` lists (not `help` itself).
fn subcommands() -> Vec<String> {
    let out = Command::new(host_bin()).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_flag_and_argument_has_help_and_each_short_flag_means_one_thing() {
    let subs = subcommands();
    assert!(subs.len() >= 15 && subs.iter().any(|s| s == "ps"), "{subs:?}");
    // short flag -> the long flags it stands for anywhere; one meaning each.
    let meaning = |short: char| -> &'static [&'static str] {
        match short {
            'm' => &["--model"],
            'n' => &["--max-tokens", "--n-gen"], // tokens to generate (llama.cpp's -n)
            'p' => &["--n-prompt"],
            't' => &["--threads"],
            'c' => &["--ctx-size"],
            'd' => &["--n-depth"], // context tokens first (llama-bench's -d)
            'l' => &["--lines"],
            'h' => &["--help"],
            _ => &[],
        }
    };
    for sub in &subs {
        let out = Command::new(host_bin()).args([sub.as_str(), "-h"]).output().unwrap();
        assert!(out.status.success(), "{sub} -h");
        let text = String::from_utf8(out.stdout).unwrap();
        for line in text.lines().filter(|l| l.starts_with("  ")) {
            let entry = line.trim_start();
            // `-x, --long <V>  help` or `<ARG>  help`: the help follows two spaces.
            let (spec, help) = entry.split_once("  ").unwrap_or((entry, ""));
            assert!(!help.trim().is_empty(), "`{sub}`: `{spec}` has no help text:\n{text}");
            if let Some(short) = spec.strip_prefix('-').and_then(|r| r.chars().next()).filter(|c| *c != '-') {
                let long = spec.split_whitespace().nth(1).unwrap_or("");
                assert!(
                    meaning(short).contains(&long),
                    "`{sub}`: -{short} is {long}; elsewhere -{short} means {:?}",
                    meaning(short)
                );
            }
        }
    }
}

/// Runs `args` on a pseudo-terminal (stdin, stdout and stderr all on it),
/// typing `typed` once `expect` shows; returns everything it printed and
/// whether it succeeded.
#[cfg(unix)]
fn on_a_terminal(args: &[&str], env: &[(&str, &str)], expect: &str, typed: &str) -> (String, bool) {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors we then own.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    // SAFETY: fresh descriptors from openpty, each owned once.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(host_bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BITNET_HOST_HARDWARE")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let mut writer = std::fs::File::from(master);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the child and every copy of the terminal's other end are gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut typed_once = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(bytes) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
        if !typed_once && seen.contains(expect) {
            writer.write_all(typed.as_bytes()).unwrap();
            typed_once = true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            while let Ok(bytes) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
            return (seen, status.success());
        }
        assert!(std::time::Instant::now() < deadline, "no exit; the terminal showed: {seen}");
    }
}

#[cfg(unix)]
#[test]
fn chat_on_a_terminal_with_no_model_offers_the_catalog_download_and_uses_it() {
    let files = std::sync::Arc::new(bitnet_host_tests::files::ModelFiles::default());
    let model = std::fs::read(crate::server::fixture_model("bitnet-b1.58-i2_s.gguf")).unwrap();
    files.add("ggml-model-i2_s.gguf", model.clone());
    let base = bitnet_host_tests::files::start_model_server(files);
    let offer = "from Hugging Face now? [Y/n]";
    // Declined: the generated default, said plainly; nothing downloaded.
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().display().to_string();
    let env = [("BITNET_HOST_HOME", home_s.as_str()), ("BITNET_MODELS_BASE", base.as_str())];
    let (seen, ok) = on_a_terminal(&["chat", "Hello", "-n", "4"], &env, offer, "n\n");
    assert!(ok, "{seen}");
    assert!(seen.contains("Download BitNet b1.58 2B4T") && seen.contains("RANDOM weights"), "{seen}");
    assert!(!home.path().join("data/models/bitnet-2b").exists());
    // Accepted (Enter): downloaded, verified, and this chat uses it.
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().display().to_string();
    let env = [("BITNET_HOST_HOME", home_s.as_str()), ("BITNET_MODELS_BASE", base.as_str())];
    let (seen, ok) = on_a_terminal(&["chat", "Hello", "-n", "4"], &env, offer, "\n");
    assert!(ok, "{seen}");
    assert!(!seen.contains("RANDOM"), "{seen}");
    assert!(seen.contains("[ggml-model-i2_s.gguf on builtin]"), "{seen}");
    let pulled = home.path().join("data/models/bitnet-2b/ggml-model-i2_s.gguf");
    assert_eq!(std::fs::read(&pulled).unwrap(), model);
    // Not a terminal: no question, the generated default.
    let o = Command::new(host_bin())
        .args(["chat", "Hi", "-n", "2"])
        .env("BITNET_HOST_HOME", tempfile::tempdir().unwrap().path())
        .env("BITNET_MODELS_BASE", &base)
        .env_remove("BITNET_HOST_HARDWARE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains(offer) && err.contains("RANDOM weights"), "{err}");
}
