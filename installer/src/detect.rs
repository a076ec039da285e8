//! Which browsers a machine has, for `install` with no `--browser`. A
//! browser counts as present by any one sign: its profile folder (it has
//! run), its executable on PATH or in its vendor's folder (Linux), its app
//! bundle (macOS), its registry entries (Windows). Snap and Flatpak installs
//! are told apart, because a manifest alone does not reach into their
//! sandbox. The rules are a pure table over a `Machine`, so every OS's rules
//! are tested here with a fake one; `RealMachine` is the thin part (Windows'
//! registry reads run under Wine in scripts/cross-test).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::locations::{target, Browser, Os, Roots, Scope, Target};

/// How a browser is present on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Presence {
    Installed {
        evidence: String,
    },
    /// Installed as a Snap or Flatpak: the sandbox needs more than a manifest.
    Sandboxed {
        evidence: String,
        advice: String,
    },
    Absent,
}

/// What detection may ask of the machine.
pub trait Machine {
    fn exists(&self, path: &Path) -> bool;
    /// `name` found on PATH.
    fn on_path(&self, name: &str) -> Option<PathBuf>;
    /// Whether `hive\key` exists (Windows; false elsewhere).
    fn registry_key(&self, hive: &str, key: &str) -> bool;
    /// The names of `hive\key`'s subkeys (Windows; empty elsewhere).
    fn registry_subkeys(&self, hive: &str, key: &str) -> Vec<String>;
}

/// The machine this runs on.
pub struct RealMachine;

impl Machine for RealMachine {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn on_path(&self, name: &str) -> Option<PathBuf> {
        which::which(name).ok()
    }

    fn registry_key(&self, hive: &str, key: &str) -> bool {
        crate::registry::key_exists(hive, key)
    }

    fn registry_subkeys(&self, hive: &str, key: &str) -> Vec<String> {
        crate::registry::subkeys(hive, key)
    }
}

/// Per browser: Linux executables (PATH names, then vendor folders), the
/// macOS app bundle, the Windows executable registered under App Paths, and
/// the prefix of its StartMenuInternet entry.
struct Signs {
    linux_names: &'static [&'static str],
    linux_paths: &'static [&'static str],
    macos_app: &'static str,
    windows_exe: Option<&'static str>,
    windows_client: &'static str,
    snap: Option<&'static str>,
    flatpak: Option<&'static str>,
}

fn signs(b: Browser) -> Signs {
    use Browser::*;
    match b {
        Chrome => Signs {
            linux_names: &["google-chrome", "google-chrome-stable"],
            linux_paths: &["/opt/google/chrome/chrome"],
            macos_app: "Google Chrome.app",
            windows_exe: Some("chrome.exe"),
            windows_client: "Google Chrome",
            snap: None,
            flatpak: Some("com.google.Chrome"),
        },
        Chromium => Signs {
            linux_names: &["chromium", "chromium-browser"],
            linux_paths: &["/usr/lib/chromium/chromium"],
            macos_app: "Chromium.app",
            // Chromium builds register no App Paths entry of their own
            // (chrome.exe there is Chrome's).
            windows_exe: None,
            windows_client: "Chromium",
            snap: Some("chromium"),
            flatpak: Some("org.chromium.Chromium"),
        },
        Edge => Signs {
            linux_names: &["microsoft-edge", "microsoft-edge-stable"],
            linux_paths: &["/opt/microsoft/msedge/msedge"],
            macos_app: "Microsoft Edge.app",
            windows_exe: Some("msedge.exe"),
            windows_client: "Microsoft Edge",
            snap: None,
            flatpak: Some("com.microsoft.Edge"),
        },
        Brave => Signs {
            linux_names: &["brave-browser", "brave"],
            linux_paths: &["/opt/brave.com/brave/brave"],
            macos_app: "Brave Browser.app",
            windows_exe: Some("brave.exe"),
            windows_client: "Brave",
            snap: Some("brave"),
            flatpak: Some("com.brave.Browser"),
        },
        Vivaldi => Signs {
            linux_names: &["vivaldi", "vivaldi-stable"],
            linux_paths: &["/opt/vivaldi/vivaldi"],
            macos_app: "Vivaldi.app",
            windows_exe: Some("vivaldi.exe"),
            windows_client: "Vivaldi",
            snap: None,
            flatpak: None,
        },
        Opera => Signs {
            linux_names: &["opera"],
            linux_paths: &["/usr/lib/x86_64-linux-gnu/opera/opera"],
            macos_app: "Opera.app",
            windows_exe: Some("opera.exe"),
            windows_client: "Opera",
            snap: None,
            flatpak: None,
        },
        Firefox => Signs {
            linux_names: &["firefox", "firefox-esr"],
            linux_paths: &["/usr/lib/firefox/firefox", "/usr/lib/firefox-esr/firefox-esr", "/opt/firefox/firefox"],
            macos_app: "Firefox.app",
            windows_exe: Some("firefox.exe"),
            windows_client: "Firefox",
            snap: Some("firefox"),
            flatpak: Some("org.mozilla.firefox"),
        },
        Librewolf => Signs {
            linux_names: &["librewolf"],
            linux_paths: &["/usr/share/librewolf/librewolf"],
            macos_app: "LibreWolf.app",
            windows_exe: Some("librewolf.exe"),
            windows_client: "LibreWolf",
            snap: None,
            flatpak: Some("io.gitlab.librewolf-community"),
        },
        Waterfox => Signs {
            linux_names: &["waterfox"],
            linux_paths: &["/opt/waterfox/waterfox"],
            macos_app: "Waterfox.app",
            windows_exe: Some("waterfox.exe"),
            windows_client: "Waterfox",
            snap: None,
            flatpak: None,
        },
    }
}

const APP_PATHS: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\App Paths";
const START_MENU_INTERNET: &str = r"SOFTWARE\Clients\StartMenuInternet";

/// Evidence of `browser` on `os` (user scope: `roots` are this user's).
pub fn detect(os: Os, browser: Browser, roots: &Roots, m: &dyn Machine) -> Presence {
    let s = signs(browser);
    // Its profile folder, where the browser has run: the parent of the
    // folder its manifests go in (Linux, macOS).
    if let Some(Target::File { path }) = target(os, browser, Scope::User, roots, "x") {
        if let Some(profile) = path.parent().and_then(Path::parent) {
            if m.exists(profile) {
                return Presence::Installed { evidence: profile.display().to_string() };
            }
        }
    }
    match os {
        Os::Linux => linux(&s, roots, m),
        Os::Macos => {
            let user_apps = os.join(&roots.home, "Applications");
            [PathBuf::from("/Applications"), user_apps]
                .iter()
                .map(|d| os.join(d, s.macos_app))
                .find(|app| m.exists(app))
                .map_or(Presence::Absent, |app| Presence::Installed { evidence: app.display().to_string() })
        }
        Os::Windows => windows(&s, m),
    }
}

fn linux(s: &Signs, roots: &Roots, m: &dyn Machine) -> Presence {
    // Snap and Flatpak first: a Snap's /usr/bin/<name> is a wrapper that a
    // PATH lookup would take for a native install.
    if let Some(snap) = s.snap {
        if m.exists(&roots.home.join("snap").join(snap)) || m.exists(&Path::new("/snap").join(snap)) {
            return Presence::Sandboxed {
                evidence: format!("Snap package `{snap}`"),
                advice: format!(
                    "the {snap} Snap cannot start programs outside its sandbox; install the browser from a .deb/.rpm or its vendor, or use the Flatpak with the native-messaging portal"
                ),
            };
        }
    }
    if let Some(f) = s.flatpak {
        let user = roots.home.join(".var/app").join(f);
        let system = Path::new("/var/lib/flatpak/app").join(f);
        if m.exists(&user) || m.exists(&system) {
            return Presence::Sandboxed {
                evidence: format!("Flatpak `{f}`"),
                advice: format!(
                    "Flatpak browsers need the host exposed to the sandbox: `flatpak override --user --talk-name=org.freedesktop.Flatpak {f}` and a wrapper that runs it with flatpak-spawn --host"
                ),
            };
        }
    }
    if let Some(exe) = s.linux_names.iter().find_map(|n| m.on_path(n)) {
        return Presence::Installed { evidence: exe.display().to_string() };
    }
    match s.linux_paths.iter().find(|p| m.exists(Path::new(p))) {
        Some(p) => Presence::Installed { evidence: (*p).to_string() },
        None => Presence::Absent,
    }
}

fn windows(s: &Signs, m: &dyn Machine) -> Presence {
    for hive in ["HKCU", "HKLM"] {
        if let Some(exe) = s.windows_exe {
            let key = format!(r"{APP_PATHS}\{exe}");
            if m.registry_key(hive, &key) {
                return Presence::Installed { evidence: format!(r"{hive}\{key}") };
            }
        }
        // Firefox registers `Firefox-<hash>` (older: `FIREFOX.EXE`).
        let prefix = s.windows_client.to_ascii_lowercase();
        if let Some(k) = m
            .registry_subkeys(hive, START_MENU_INTERNET)
            .into_iter()
            .find(|k| k.to_ascii_lowercase().starts_with(&prefix))
        {
            return Presence::Installed { evidence: format!(r"{hive}\{START_MENU_INTERNET}\{k}") };
        }
    }
    Presence::Absent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locations::ALL_BROWSERS;

    /// A machine with exactly these paths, PATH entries and registry keys.
    #[derive(Default)]
    struct Fake {
        paths: Vec<&'static str>,
        on_path: Vec<(&'static str, &'static str)>,
        keys: Vec<(&'static str, String)>,
    }

    impl Machine for Fake {
        fn exists(&self, p: &Path) -> bool {
            self.paths.iter().any(|x| Path::new(x) == p)
        }
        fn on_path(&self, name: &str) -> Option<PathBuf> {
            self.on_path.iter().find(|(n, _)| *n == name).map(|(_, p)| PathBuf::from(p))
        }
        fn registry_key(&self, hive: &str, key: &str) -> bool {
            self.keys.iter().any(|(h, k)| *h == hive && k.eq_ignore_ascii_case(key))
        }
        fn registry_subkeys(&self, hive: &str, key: &str) -> Vec<String> {
            let prefix = format!("{}\\", key.to_ascii_lowercase());
            self.keys
                .iter()
                .filter(|(h, _)| *h == hive)
                .filter(|(_, k)| k.to_ascii_lowercase().starts_with(&prefix))
                .map(|(_, k)| k[prefix.len()..].to_string())
                .map(|rest| rest.split('\\').next().unwrap_or("").to_string())
                .collect()
        }
    }

    fn roots() -> Roots {
        Roots { home: "/h".into(), config_home: "/h/.config".into(), manifest_dir: "/h/m".into() }
    }

    fn installed(p: &Presence) -> Option<&str> {
        match p {
            Presence::Installed { evidence } => Some(evidence),
            _ => None,
        }
    }

    #[test]
    fn linux_finds_profiles_executables_and_vendor_folders_and_names_sandboxes() {
        let r = roots();
        let m = Fake { paths: vec!["/h/.config/chromium"], ..Fake::default() };
        assert_eq!(installed(&detect(Os::Linux, Browser::Chromium, &r, &m)), Some("/h/.config/chromium"));
        // Installed but never started: no profile, only the executable.
        let m = Fake { on_path: vec![("firefox-esr", "/usr/bin/firefox-esr")], ..Fake::default() };
        assert_eq!(installed(&detect(Os::Linux, Browser::Firefox, &r, &m)), Some("/usr/bin/firefox-esr"));
        let m = Fake { paths: vec!["/opt/google/chrome/chrome"], ..Fake::default() };
        assert_eq!(installed(&detect(Os::Linux, Browser::Chrome, &r, &m)), Some("/opt/google/chrome/chrome"));
        // A Snap's /usr/bin wrapper is not a native install.
        let m = Fake {
            paths: vec!["/snap/chromium"],
            on_path: vec![("chromium-browser", "/usr/bin/chromium-browser")],
            ..Fake::default()
        };
        assert!(matches!(detect(Os::Linux, Browser::Chromium, &r, &m), Presence::Sandboxed { .. }));
        let m = Fake { paths: vec!["/var/lib/flatpak/app/org.mozilla.firefox"], ..Fake::default() };
        let f = detect(Os::Linux, Browser::Firefox, &r, &m);
        assert!(matches!(&f, Presence::Sandboxed { advice, .. } if advice.contains("flatpak")), "{f:?}");
        // Another browser's signs are not this one's.
        let m = Fake { on_path: vec![("chromium", "/usr/bin/chromium")], ..Fake::default() };
        for b in ALL_BROWSERS.into_iter().filter(|b| *b != Browser::Chromium) {
            assert_eq!(detect(Os::Linux, b, &r, &m), Presence::Absent, "{b:?}");
        }
    }

    #[test]
    fn macos_finds_app_bundles_in_either_applications_folder_and_profiles() {
        let r = roots();
        let m = Fake { paths: vec!["/Applications/Google Chrome.app"], ..Fake::default() };
        assert_eq!(installed(&detect(Os::Macos, Browser::Chrome, &r, &m)), Some("/Applications/Google Chrome.app"));
        let m = Fake { paths: vec!["/h/Applications/Firefox.app"], ..Fake::default() };
        assert_eq!(installed(&detect(Os::Macos, Browser::Firefox, &r, &m)), Some("/h/Applications/Firefox.app"));
        let m = Fake { paths: vec!["/h/Library/Application Support/BraveSoftware/Brave-Browser"], ..Fake::default() };
        assert!(installed(&detect(Os::Macos, Browser::Brave, &r, &m)).is_some());
        // PATH means nothing for an app bundle.
        let m = Fake { on_path: vec![("firefox", "/usr/local/bin/firefox")], ..Fake::default() };
        assert_eq!(detect(Os::Macos, Browser::Firefox, &r, &m), Presence::Absent);
    }

    #[test]
    fn windows_finds_app_paths_and_start_menu_clients_in_either_hive() {
        let r = roots();
        let m = Fake { keys: vec![("HKLM", format!(r"{APP_PATHS}\msedge.exe"))], ..Fake::default() };
        assert!(installed(&detect(Os::Windows, Browser::Edge, &r, &m)).is_some_and(|e| e.starts_with(r"HKLM\")));
        let m = Fake {
            keys: vec![("HKCU", format!(r"{START_MENU_INTERNET}\Firefox-308046B0AF4A39CB\shell"))],
            ..Fake::default()
        };
        assert_eq!(
            installed(&detect(Os::Windows, Browser::Firefox, &r, &m)),
            Some(r"HKCU\SOFTWARE\Clients\StartMenuInternet\Firefox-308046B0AF4A39CB")
        );
        // Chrome's chrome.exe App Path is not Chromium.
        let m = Fake { keys: vec![("HKLM", format!(r"{APP_PATHS}\chrome.exe"))], ..Fake::default() };
        assert!(installed(&detect(Os::Windows, Browser::Chrome, &r, &m)).is_some());
        assert_eq!(detect(Os::Windows, Browser::Chromium, &r, &m), Presence::Absent);
        assert_eq!(detect(Os::Windows, Browser::Vivaldi, &r, &Fake::default()), Presence::Absent);
    }

    /// The real registry (under Wine in scripts/cross-test): a browser
    /// registered under App Paths is found; removed, it is not.
    #[cfg(windows)]
    #[test]
    fn windows_detection_reads_the_real_registry() {
        use winreg::enums::HKEY_CURRENT_USER;
        let hkcu = winreg::RegKey::predef(HKEY_CURRENT_USER);
        let key = format!(r"{APP_PATHS}\waterfox.exe");
        let _ = hkcu.delete_subkey_all(&key);
        assert_eq!(detect(Os::Windows, Browser::Waterfox, &roots(), &RealMachine), Presence::Absent);
        let (k, _) = hkcu.create_subkey(&key).unwrap();
        k.set_value("", &r"C:\Program Files\Waterfox\waterfox.exe").unwrap();
        let found = detect(Os::Windows, Browser::Waterfox, &roots(), &RealMachine);
        hkcu.delete_subkey_all(&key).unwrap();
        assert_eq!(installed(&found), Some(&*format!(r"HKCU\{key}")));
        let client = format!(r"{START_MENU_INTERNET}\LibreWolf\shell");
        hkcu.create_subkey(&client).unwrap();
        let found = detect(Os::Windows, Browser::Librewolf, &roots(), &RealMachine);
        hkcu.delete_subkey_all(format!(r"{START_MENU_INTERNET}\LibreWolf")).unwrap();
        assert!(installed(&found).is_some_and(|e| e.ends_with(r"StartMenuInternet\LibreWolf")), "{found:?}");
    }
}
