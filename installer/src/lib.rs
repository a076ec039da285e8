//! Native-messaging manifests, rendered from the templates in manifests/.
//!
//! Rendering is a pure function so every rule browsers enforce is tested on
//! Linux: `name` equals the file name (minus `.json`), `path` is absolute,
//! Chromium-family `allowed_origins` entries are `chrome-extension://ID/`
//! (trailing slash required), and Firefox-family manifests carry
//! `allowed_extensions` instead (Firefox rejects `allowed_origins`).
//! `locations` is the table of where each browser looks; `install` writes
//! transactionally and keeps a record for `uninstall`; `check` is what
//! `doctor` asks of a manifest.

pub mod check;
pub mod detect;
pub mod download;
pub mod install;
pub mod locations;
mod registry;
pub mod release;
pub mod service;

use std::path::Path;

use serde_json::Value;

use crate::locations::Os;

const CHROMIUM_TEMPLATE: &str = include_str!("../../manifests/chromium.json");
const FIREFOX_TEMPLATE: &str = include_str!("../../manifests/firefox.json");

/// The host's own registered name.
pub const DEFAULT_NAME: &str = "com.bitnet.host";
/// TabAgent's name and extension id, for the drop-in case.
pub const TABAGENT_NAME: &str = "com.tabagent.host";
pub const TABAGENT_EXTENSION_ID: &str = "fkkeoobeahalebjpbockfedlncckobjb";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Chrome, Chromium, Edge, Brave, Vivaldi, Opera.
    Chromium,
    /// Firefox, LibreWolf, Waterfox.
    Firefox,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstallerError {
    #[error("host name `{0}` is invalid: use lowercase letters, digits, `_` and `.`, not starting or ending with `.`")]
    BadName(String),
    #[error("the host path must be absolute, got `{0}`")]
    RelativePath(String),
    #[error("`{0}` is not a Chromium extension id (32 letters a-p)")]
    BadChromiumId(String),
    #[error("`{0}` is not a Firefox add-on id (an email-like id or a {{GUID}})")]
    BadFirefoxId(String),
    #[error("at least one extension id is needed")]
    NoExtensions,
}

/// Chromium's rule for host names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

fn valid_chromium_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| (b'a'..=b'p').contains(&b))
}

fn valid_firefox_id(id: &str) -> bool {
    let guid = id.starts_with('{') && id.ends_with('}') && id.len() == 38;
    let email =
        id.split_once('@').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()) && !id.contains(char::is_whitespace);
    guid || email
}

/// Renders the manifest for `family`. Returns the JSON text, ready to be
/// written as `<name>.json`.
/// The manifest for a host at `host_path` on `os` (absolute by that OS's
/// rule, whichever OS renders it).
pub fn render(
    os: Os,
    family: Family,
    name: &str,
    host_path: &Path,
    extension_ids: &[&str],
) -> Result<String, InstallerError> {
    if !valid_name(name) {
        return Err(InstallerError::BadName(name.into()));
    }
    let path = host_path.to_string_lossy();
    if !os.is_absolute(&path) {
        return Err(InstallerError::RelativePath(path.into_owned()));
    }
    if extension_ids.is_empty() {
        return Err(InstallerError::NoExtensions);
    }
    let (template, allowed): (&str, Vec<String>) = match family {
        Family::Chromium => {
            if let Some(bad) = extension_ids.iter().find(|id| !valid_chromium_id(id)) {
                return Err(InstallerError::BadChromiumId((*bad).into()));
            }
            (CHROMIUM_TEMPLATE, extension_ids.iter().map(|id| format!("chrome-extension://{id}/")).collect())
        }
        Family::Firefox => {
            if let Some(bad) = extension_ids.iter().find(|id| !valid_firefox_id(id)) {
                return Err(InstallerError::BadFirefoxId((*bad).into()));
            }
            (FIREFOX_TEMPLATE, extension_ids.iter().map(|id| id.to_string()).collect())
        }
    };
    // Values are inserted as JSON literals, so any character in a path is
    // escaped correctly (Windows backslashes included).
    let lit = |s: &str| Value::from(s).to_string();
    let text = template
        .replace("\"{{name}}\"", &lit(name))
        .replace("\"{{description}}\"", &lit("bitnet-host: local BitNet language models for browser extensions"))
        .replace("\"{{path}}\"", &lit(&path))
        .replace("{{allowed}}", &Value::from(allowed).to_string());
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chromium_manifest_has_origins_with_trailing_slash() {
        let text = render(
            Os::Linux,
            Family::Chromium,
            DEFAULT_NAME,
            Path::new("/opt/bitnet/bitnet-host"),
            &[TABAGENT_EXTENSION_ID],
        )
        .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["name"], DEFAULT_NAME);
        assert_eq!(v["type"], "stdio");
        assert_eq!(v["path"], "/opt/bitnet/bitnet-host");
        assert_eq!(v["allowed_origins"], json!([format!("chrome-extension://{TABAGENT_EXTENSION_ID}/")]));
        assert!(v.get("allowed_extensions").is_none());
    }

    #[test]
    fn firefox_manifest_has_allowed_extensions_and_never_origins() {
        let text =
            render(Os::Linux, Family::Firefox, TABAGENT_NAME, Path::new("/opt/b"), &["tabagent@example.org"]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["allowed_extensions"], json!(["tabagent@example.org"]));
        assert!(v.get("allowed_origins").is_none());
    }

    #[test]
    fn paths_with_quotes_and_backslashes_stay_valid_json() {
        let p = Path::new("/home/o\"brien/b\\in/bitnet-host");
        let v: Value = serde_json::from_str(&render(Os::Linux, Family::Firefox, "a.b", p, &["x@y"]).unwrap()).unwrap();
        assert_eq!(v["path"], "/home/o\"brien/b\\in/bitnet-host");
    }

    #[test]
    fn a_windows_manifest_takes_a_windows_path_wherever_it_is_rendered() {
        let exe = Path::new(r"C:\Users\a b\AppData\Local\bitnet\bitnet-host.exe");
        let text = render(Os::Windows, Family::Chromium, DEFAULT_NAME, exe, &[TABAGENT_EXTENSION_ID]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], r"C:\Users\a b\AppData\Local\bitnet\bitnet-host.exe");
        let unix = render(Os::Windows, Family::Chromium, DEFAULT_NAME, Path::new("/opt/x"), &[TABAGENT_EXTENSION_ID]);
        assert!(matches!(unix, Err(InstallerError::RelativePath(_))));
    }

    #[test]
    fn every_browser_rule_is_a_typed_error() {
        let p = Path::new("/x");
        assert_eq!(
            render(Os::Linux, Family::Chromium, "Com.Bad", p, &[TABAGENT_EXTENSION_ID]),
            Err(InstallerError::BadName("Com.Bad".into()))
        );
        assert!(matches!(
            render(Os::Linux, Family::Chromium, "a.b", Path::new("rel/host"), &[TABAGENT_EXTENSION_ID]),
            Err(InstallerError::RelativePath(_))
        ));
        assert!(matches!(
            render(Os::Linux, Family::Chromium, "a.b", p, &["xyz"]),
            Err(InstallerError::BadChromiumId(_))
        ));
        assert!(matches!(
            render(Os::Linux, Family::Firefox, "a.b", p, &["no spaces@x y"]),
            Err(InstallerError::BadFirefoxId(_))
        ));
        assert_eq!(render(Os::Linux, Family::Firefox, "a.b", p, &[]), Err(InstallerError::NoExtensions));
        assert!(valid_firefox_id("{12345678-1234-1234-1234-123456789012}"));
        assert!(!valid_name(".a") && !valid_name("a..b") && valid_name("com.bitnet.host"));
    }
}
