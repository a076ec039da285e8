//! Where each browser looks for native-messaging manifests, per OS and
//! scope: a pure table, tested on Linux for every OS. On Linux and macOS a
//! browser reads `<dir>/<name>.json`; on Windows it reads a registry key
//! whose default value is the manifest's path (the file can live anywhere;
//! we keep it in the host's data dir).

use std::path::{Path, PathBuf};

use crate::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Browser {
    Chrome,
    Chromium,
    Edge,
    Brave,
    Vivaldi,
    Opera,
    Firefox,
    Librewolf,
    Waterfox,
}

pub const ALL_BROWSERS: [Browser; 9] = [
    Browser::Chrome,
    Browser::Chromium,
    Browser::Edge,
    Browser::Brave,
    Browser::Vivaldi,
    Browser::Opera,
    Browser::Firefox,
    Browser::Librewolf,
    Browser::Waterfox,
];

impl Browser {
    pub fn family(self) -> Family {
        match self {
            Browser::Firefox | Browser::Librewolf | Browser::Waterfox => Family::Firefox,
            _ => Family::Chromium,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Browser::Chrome => "chrome",
            Browser::Chromium => "chromium",
            Browser::Edge => "edge",
            Browser::Brave => "brave",
            Browser::Vivaldi => "vivaldi",
            Browser::Opera => "opera",
            Browser::Firefox => "firefox",
            Browser::Librewolf => "librewolf",
            Browser::Waterfox => "waterfox",
        }
    }

    pub fn parse(s: &str) -> Option<Browser> {
        ALL_BROWSERS.into_iter().find(|b| b.name() == s.to_ascii_lowercase())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Macos,
    Windows,
}

impl Os {
    pub fn current() -> Os {
        match std::env::consts::OS {
            "macos" => Os::Macos,
            "windows" => Os::Windows,
            _ => Os::Linux,
        }
    }

    /// Whether `path` is absolute on this OS, judged the same wherever the
    /// code runs: `/...` on Linux and macOS; `C:\...` (or `C:/...`) and
    /// `\\server\share` on Windows.
    pub fn is_absolute(self, path: &str) -> bool {
        match self {
            Os::Linux | Os::Macos => path.starts_with('/'),
            Os::Windows => {
                let b = path.as_bytes();
                (b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/'))
                    || path.starts_with(r"\\")
            }
        }
    }

    /// `base` and the `/`-separated `rel` joined with this OS's separator,
    /// so a table of another OS's paths reads the same on every OS.
    pub fn join(self, base: &Path, rel: &str) -> PathBuf {
        let (sep, rel) = match self {
            Os::Windows => ('\\', rel.replace('/', "\\")),
            Os::Linux | Os::Macos => ('/', rel.to_owned()),
        };
        let base = base.to_string_lossy();
        let base = base.trim_end_matches(['/', sep]);
        PathBuf::from(format!("{base}{sep}{rel}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    System,
}

/// What a browser reads to find a host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// The manifest file itself, at this path.
    File { path: PathBuf },
    /// A registry key (`hive\key`, default value = manifest path) and where
    /// the manifest file goes.
    Registry { hive: String, key: String, manifest: PathBuf },
}

/// The folders the table is relative to (from the environment; tests point
/// them into a temp dir).
#[derive(Debug, Clone)]
pub struct Roots {
    pub home: PathBuf,
    /// Linux: $XDG_CONFIG_HOME or ~/.config (Chromium-family browsers follow it).
    pub config_home: PathBuf,
    /// Windows: where our manifest files live (the host's data dir).
    pub manifest_dir: PathBuf,
}

/// Where `browser` on `os` reads the manifest of host `name`, for `scope`;
/// None where that browser has no such location.
pub fn target(os: Os, browser: Browser, scope: Scope, roots: &Roots, name: &str) -> Option<Target> {
    let file = format!("{name}.json");
    let in_dir = |d: PathBuf| Some(Target::File { path: os.join(&d, &file) });
    use Browser::*;
    match (os, scope) {
        (Os::Linux, Scope::User) => {
            let c = |rel| os.join(&roots.config_home, rel);
            let h = |rel| os.join(&roots.home, rel);
            in_dir(match browser {
                Chrome => c("google-chrome/NativeMessagingHosts"),
                Chromium => c("chromium/NativeMessagingHosts"),
                Edge => c("microsoft-edge/NativeMessagingHosts"),
                Brave => c("BraveSoftware/Brave-Browser/NativeMessagingHosts"),
                Vivaldi => c("vivaldi/NativeMessagingHosts"),
                Opera => c("opera/NativeMessagingHosts"),
                Firefox => h(".mozilla/native-messaging-hosts"),
                Librewolf => h(".librewolf/native-messaging-hosts"),
                Waterfox => h(".waterfox/native-messaging-hosts"),
            })
        }
        (Os::Linux, Scope::System) => in_dir(PathBuf::from(match browser {
            Chrome => "/etc/opt/chrome/native-messaging-hosts",
            Chromium => "/etc/chromium/native-messaging-hosts",
            Edge => "/etc/opt/edge/native-messaging-hosts",
            Brave => "/etc/opt/chrome/native-messaging-hosts",
            Vivaldi => "/etc/opt/vivaldi/native-messaging-hosts",
            Opera => "/etc/opt/chrome/native-messaging-hosts",
            Firefox => "/usr/lib/mozilla/native-messaging-hosts",
            Librewolf => "/usr/lib/librewolf/native-messaging-hosts",
            Waterfox => "/usr/lib/waterfox/native-messaging-hosts",
        })),
        (Os::Macos, Scope::User) => {
            let a = |rel: &str| os.join(&roots.home, &format!("Library/Application Support/{rel}"));
            in_dir(match browser {
                Chrome => a("Google/Chrome/NativeMessagingHosts"),
                Chromium => a("Chromium/NativeMessagingHosts"),
                Edge => a("Microsoft Edge/NativeMessagingHosts"),
                Brave => a("BraveSoftware/Brave-Browser/NativeMessagingHosts"),
                Vivaldi => a("Vivaldi/NativeMessagingHosts"),
                Opera => a("com.operasoftware.Opera/NativeMessagingHosts"),
                Firefox => a("Mozilla/NativeMessagingHosts"),
                Librewolf => a("LibreWolf/NativeMessagingHosts"),
                Waterfox => a("Waterfox/NativeMessagingHosts"),
            })
        }
        (Os::Macos, Scope::System) => in_dir(PathBuf::from(match browser {
            Chrome => "/Library/Google/Chrome/NativeMessagingHosts",
            Chromium => "/Library/Application Support/Chromium/NativeMessagingHosts",
            Edge => "/Library/Microsoft/Edge/NativeMessagingHosts",
            Brave => "/Library/Application Support/BraveSoftware/Brave-Browser/NativeMessagingHosts",
            Vivaldi => "/Library/Application Support/Vivaldi/NativeMessagingHosts",
            Opera => "/Library/Google/Chrome/NativeMessagingHosts",
            Firefox => "/Library/Application Support/Mozilla/NativeMessagingHosts",
            Librewolf => "/Library/Application Support/LibreWolf/NativeMessagingHosts",
            Waterfox => "/Library/Application Support/Waterfox/NativeMessagingHosts",
        })),
        (Os::Windows, scope) => {
            let hive = if scope == Scope::User { "HKCU" } else { "HKLM" };
            let vendor = match browser {
                Chrome => r"Software\Google\Chrome",
                Chromium => r"Software\Chromium",
                Edge => r"Software\Microsoft\Edge",
                Brave => r"Software\BraveSoftware\Brave-Browser",
                Vivaldi => r"Software\Vivaldi",
                // Opera reads Chrome's key.
                Opera => r"Software\Google\Chrome",
                Firefox => r"Software\Mozilla",
                Librewolf => r"Software\LibreWolf",
                Waterfox => r"Software\Waterfox",
            };
            // One manifest file per family is enough: the registry points at it.
            let family = if browser.family() == Family::Firefox { "firefox" } else { "chromium" };
            Some(Target::Registry {
                hive: hive.into(),
                key: format!(r"{vendor}\NativeMessagingHosts\{name}"),
                manifest: os.join(&roots.manifest_dir, &format!("{family}/{file}")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Roots {
        Roots {
            home: "/h".into(),
            config_home: "/h/.config".into(),
            manifest_dir: r"C:\Users\u\AppData\Roaming\bitnet\manifests".into(),
        }
    }

    fn file(os: Os, b: Browser, s: Scope) -> String {
        match target(os, b, s, &roots(), "com.bitnet.host").unwrap() {
            Target::File { path } => path.display().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn linux_locations_follow_xdg_for_chromium_and_dot_dirs_for_firefox() {
        assert_eq!(
            file(Os::Linux, Browser::Chrome, Scope::User),
            "/h/.config/google-chrome/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Linux, Browser::Chromium, Scope::User),
            "/h/.config/chromium/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Linux, Browser::Brave, Scope::User),
            "/h/.config/BraveSoftware/Brave-Browser/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Linux, Browser::Firefox, Scope::User),
            "/h/.mozilla/native-messaging-hosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Linux, Browser::Chrome, Scope::System),
            "/etc/opt/chrome/native-messaging-hosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Linux, Browser::Firefox, Scope::System),
            "/usr/lib/mozilla/native-messaging-hosts/com.bitnet.host.json"
        );
    }

    #[test]
    fn macos_locations_live_under_application_support() {
        assert_eq!(
            file(Os::Macos, Browser::Chrome, Scope::User),
            "/h/Library/Application Support/Google/Chrome/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Macos, Browser::Edge, Scope::User),
            "/h/Library/Application Support/Microsoft Edge/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Macos, Browser::Firefox, Scope::User),
            "/h/Library/Application Support/Mozilla/NativeMessagingHosts/com.bitnet.host.json"
        );
        assert_eq!(
            file(Os::Macos, Browser::Chrome, Scope::System),
            "/Library/Google/Chrome/NativeMessagingHosts/com.bitnet.host.json"
        );
    }

    #[test]
    fn windows_uses_registry_keys_per_vendor_and_one_manifest_per_family() {
        let t = target(Os::Windows, Browser::Edge, Scope::User, &roots(), "com.bitnet.host").unwrap();
        let Target::Registry { hive, key, manifest } = t else { panic!() };
        assert_eq!(hive, "HKCU");
        assert_eq!(key, r"Software\Microsoft\Edge\NativeMessagingHosts\com.bitnet.host");
        assert_eq!(
            manifest.to_str(),
            Some(r"C:\Users\u\AppData\Roaming\bitnet\manifests\chromium\com.bitnet.host.json")
        );
        let t = target(Os::Windows, Browser::Firefox, Scope::System, &roots(), "com.bitnet.host").unwrap();
        let Target::Registry { hive, key, manifest } = t else { panic!() };
        assert_eq!((hive.as_str(), key.as_str()), ("HKLM", r"Software\Mozilla\NativeMessagingHosts\com.bitnet.host"));
        assert_eq!(
            manifest.to_str(),
            Some(r"C:\Users\u\AppData\Roaming\bitnet\manifests\firefox\com.bitnet.host.json")
        );
    }

    #[test]
    fn each_os_judges_and_joins_its_own_paths_wherever_this_runs() {
        assert!(Os::Linux.is_absolute("/opt/x") && !Os::Linux.is_absolute("opt/x") && !Os::Linux.is_absolute(r"C:\x"));
        assert!(Os::Macos.is_absolute("/Users/a") && !Os::Macos.is_absolute("Users/a"));
        assert!(
            Os::Windows.is_absolute(r"C:\x") && Os::Windows.is_absolute("d:/x") && Os::Windows.is_absolute(r"\\srv\s")
        );
        assert!(
            !Os::Windows.is_absolute("/opt/x") && !Os::Windows.is_absolute(r"bin\x") && !Os::Windows.is_absolute("C:")
        );
        assert_eq!(Os::Linux.join(Path::new("/h/"), "a/b.json"), PathBuf::from("/h/a/b.json"));
        assert_eq!(Os::Windows.join(Path::new(r"C:\d\"), "a/b.json").to_str(), Some(r"C:\d\a\b.json"));
    }

    #[test]
    fn every_browser_has_a_location_on_every_os_and_scope() {
        for os in [Os::Linux, Os::Macos, Os::Windows] {
            for s in [Scope::User, Scope::System] {
                for b in ALL_BROWSERS {
                    assert!(target(os, b, s, &roots(), "a.b").is_some(), "{os:?} {b:?} {s:?}");
                }
            }
        }
        assert_eq!(Browser::parse("LibreWolf"), Some(Browser::Librewolf));
        assert_eq!(Browser::parse("netscape"), None);
    }
}
