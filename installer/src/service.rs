//! Starting the daemon at login: a systemd user unit (Linux), a launchd
//! agent (macOS), a logon task (Windows), rendered from the templates in
//! manifests/ as pure functions of their inputs, and where each goes.

use std::path::{Path, PathBuf};

use crate::locations::{Os, Roots};

const SYSTEMD: &str = include_str!("../../manifests/bitnet-host.service");
const LAUNCHD: &str = include_str!("../../manifests/org.bitnet.host.plist");
const WINDOWS_TASK: &str = include_str!("../../manifests/bitnet-host-task.xml");

pub const SYSTEMD_UNIT: &str = "bitnet-host.service";
pub const LAUNCHD_LABEL: &str = "org.bitnet.host";
pub const WINDOWS_TASK_NAME: &str = "bitnet-host daemon";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error("the daemon's path must be absolute, got `{0}`")]
    RelativePath(String),
    #[error("the daemon's path cannot contain a newline or a NUL")]
    BadPath,
}

/// `exec` as text, absolute by `os`'s rule (the file is for that OS,
/// whichever OS renders it).
fn check(os: Os, exec: &Path) -> Result<String, ServiceError> {
    let s = exec.to_string_lossy().into_owned();
    if !os.is_absolute(&s) {
        return Err(ServiceError::RelativePath(s));
    }
    if s.contains(['\n', '\r', '\0']) {
        return Err(ServiceError::BadPath);
    }
    Ok(s)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The systemd user unit. The path is quoted the way systemd unquotes it
/// (spaces survive; `\` and `"` escaped; `%` doubled for specifiers).
pub fn systemd_unit(exec: &Path) -> Result<String, ServiceError> {
    let s = check(Os::Linux, exec)?;
    let quoted = format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%"));
    Ok(SYSTEMD.replace("{{exec}}", &quoted))
}

pub fn launchd_plist(exec: &Path) -> Result<String, ServiceError> {
    Ok(LAUNCHD.replace("{{exec}}", &xml_escape(&check(Os::Macos, exec)?)))
}

/// The Task Scheduler XML (declared UTF-16: write it as UTF-16LE with a BOM).
pub fn windows_task(exec: &Path, user: &str) -> Result<String, ServiceError> {
    let s = check(Os::Windows, exec)?;
    Ok(WINDOWS_TASK.replace("{{exec}}", &xml_escape(&s)).replace("{{user}}", &xml_escape(user)))
}

/// `text` as UTF-16LE with a byte-order mark: how the Task Scheduler
/// reads an XML that declares `encoding="UTF-16"`.
pub fn utf16le_with_bom(text: &str) -> Vec<u8> {
    [0xFF, 0xFE].into_iter().chain(text.encode_utf16().flat_map(u16::to_le_bytes)).collect()
}

/// Where the service file goes for the current user.
pub fn location(os: Os, roots: &Roots) -> PathBuf {
    match os {
        Os::Linux => os.join(&roots.config_home, &format!("systemd/user/{SYSTEMD_UNIT}")),
        Os::Macos => os.join(&roots.home, &format!("Library/LaunchAgents/{LAUNCHD_LABEL}.plist")),
        Os::Windows => os.join(&roots.manifest_dir, "bitnet-host-task.xml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_unit_runs_the_daemon_and_quotes_the_path() {
        let u = systemd_unit(Path::new("/home/a b/.local/share/bitnet/bin/bitnet-host")).unwrap();
        assert!(u.contains("ExecStart=\"/home/a b/.local/share/bitnet/bin/bitnet-host\" daemon\n"), "{u}");
        assert!(u.contains("WantedBy=default.target"));
        assert!(u.contains("Restart=on-failure"));
        let odd = systemd_unit(Path::new("/opt/100%/q\"x/bitnet-host")).unwrap();
        assert!(odd.contains(r#"ExecStart="/opt/100%%/q\"x/bitnet-host" daemon"#), "{odd}");
        assert_eq!(systemd_unit(Path::new("bin/x")), Err(ServiceError::RelativePath("bin/x".into())));
        assert_eq!(systemd_unit(Path::new("/a\nExecStart=/evil")), Err(ServiceError::BadPath));
    }

    #[test]
    fn the_launchd_plist_parses_and_names_the_daemon() {
        let text = launchd_plist(Path::new("/Users/a&b/bin/bitnet-host")).unwrap();
        let v: plist::Value = plist::from_bytes(text.as_bytes()).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d.get("Label").and_then(|l| l.as_string()), Some(LAUNCHD_LABEL));
        let args: Vec<&str> =
            d.get("ProgramArguments").unwrap().as_array().unwrap().iter().filter_map(|a| a.as_string()).collect();
        assert_eq!(args, ["/Users/a&b/bin/bitnet-host", "daemon"]);
        assert_eq!(d.get("RunAtLoad").and_then(|b| b.as_boolean()), Some(true));
    }

    #[test]
    fn the_windows_task_is_well_formed_xml_with_a_logon_trigger() {
        let text = windows_task(Path::new(r"C:\Users\a<b\AppData\bitnet-host.exe"), r"HOST\a&b").unwrap();
        // (The file is written UTF-16; the parser reads the same text as UTF-8.)
        let utf8 = text.replacen("UTF-16", "UTF-8", 1);
        let doc = roxmltree::Document::parse(&utf8).unwrap();
        let find = |tag: &str| doc.descendants().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).map(String::from);
        assert_eq!(find("Command").as_deref(), Some(r"C:\Users\a<b\AppData\bitnet-host.exe"));
        assert_eq!(find("Arguments").as_deref(), Some("daemon"));
        assert_eq!(find("UserId").as_deref(), Some(r"HOST\a&b"));
        assert!(doc.descendants().any(|n| n.has_tag_name("LogonTrigger")));
        assert!(windows_task(Path::new(r"bin\x.exe"), "u").is_err());
        assert!(windows_task(Path::new(r"\\srv\share\x.exe"), "u").is_ok());
    }

    #[test]
    fn the_task_file_is_utf16le_with_a_bom() {
        let b = utf16le_with_bom("<T>é</T>");
        assert_eq!(&b[..4], &[0xFF, 0xFE, b'<', 0]);
        let units: Vec<u16> = b[2..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(String::from_utf16(&units).unwrap(), "<T>é</T>");
    }

    #[test]
    fn each_os_has_its_place() {
        let r = Roots { home: "/h".into(), config_home: "/h/.config".into(), manifest_dir: r"C:\d\manifests".into() };
        assert_eq!(location(Os::Linux, &r), PathBuf::from("/h/.config/systemd/user/bitnet-host.service"));
        assert_eq!(location(Os::Macos, &r), PathBuf::from("/h/Library/LaunchAgents/org.bitnet.host.plist"));
        assert_eq!(location(Os::Windows, &r), PathBuf::from(r"C:\d\manifests\bitnet-host-task.xml"));
    }
}
