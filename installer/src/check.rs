//! What `doctor` checks in an installed manifest, each problem with its fix.

use std::path::Path;

use serde_json::Value;

use crate::Family;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub problem: String,
    pub fix: String,
}

fn p(problem: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem { problem: problem.into(), fix: fix.into() }
}

/// Largest manifest read: real ones are a few hundred bytes.
const MAX_MANIFEST: u64 = 1 << 20;

/// Problems with the manifest at `path` for a browser of `family`; empty
/// when a browser would accept it and could start the host.
pub fn check_manifest(path: &Path, family: Family) -> Vec<Problem> {
    let reinstall = "run `bitnet-host install` again";
    let text = match bitnet_safefs::read_to_string(path, MAX_MANIFEST) {
        Ok(t) => t,
        Err(e) => return vec![p(format!("cannot read {}: {e}", path.display()), reinstall)],
    };
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return vec![p(format!("{} is not valid JSON: {e}", path.display()), reinstall)],
    };
    let mut out = Vec::new();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match v["name"].as_str() {
        Some(n) if n == stem => {}
        Some(n) => out.push(p(
            format!("`name` is `{n}` but the file is `{stem}.json`; browsers look the host up by file name"),
            format!("rename the file to `{n}.json` or {reinstall}"),
        )),
        None => out.push(p("`name` is missing", reinstall)),
    }
    if v["type"] != "stdio" {
        out.push(p("`type` must be \"stdio\"", reinstall));
    }
    match v["path"].as_str() {
        None => out.push(p("`path` is missing", reinstall)),
        Some(host) => {
            let hp = Path::new(host);
            if !hp.is_absolute() {
                out.push(p(format!("`path` `{host}` is relative; browsers need an absolute path"), reinstall));
            } else if !hp.is_file() {
                out.push(p(format!("`path` `{host}` does not exist"), reinstall));
            } else if !is_executable(hp) {
                out.push(p(format!("`{host}` is not executable"), format!("chmod +x '{host}'")));
            }
        }
    }
    match family {
        Family::Chromium => {
            if v.get("allowed_extensions").is_some() {
                out.push(p("a Chromium-family manifest has `allowed_extensions` (Firefox's field)", reinstall));
            }
            match v["allowed_origins"].as_array() {
                Some(a) if !a.is_empty() => {
                    for o in a {
                        let ok = o.as_str().is_some_and(|s| {
                            s.strip_prefix("chrome-extension://")
                                .and_then(|r| r.strip_suffix('/'))
                                .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| (b'a'..=b'p').contains(&b)))
                        });
                        if !ok {
                            out.push(p(format!("origin {o} is not `chrome-extension://<32 letters a-p>/`"), reinstall));
                        }
                    }
                }
                _ => out.push(p("`allowed_origins` is missing or empty", "install with --extension-id <id>")),
            }
        }
        Family::Firefox => {
            if v.get("allowed_origins").is_some() {
                out.push(p("a Firefox-family manifest has `allowed_origins`; Firefox rejects the file", reinstall));
            }
            if v["allowed_extensions"].as_array().is_none_or(|a| a.is_empty()) {
                out.push(p("`allowed_extensions` is missing or empty", "install with --extension-id <add-on id>"));
            }
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}
