//! Windows registry writes, the only platform-specific part of installing
//! (the key's default value is the manifest path), and the reads browser
//! detection makes. Thin on purpose; elsewhere
//! it refuses. Run for real under Wine by scripts/cross-test (install.rs's
//! Windows tests read every key back).

use std::path::Path;

use crate::install::InstallError;

#[cfg(windows)]
pub fn set_default(hive: &str, key: &str, manifest: &Path) -> Result<(), InstallError> {
    use winreg::enums::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};
    let root = winreg::RegKey::predef(if hive == "HKLM" { HKEY_LOCAL_MACHINE } else { HKEY_CURRENT_USER });
    let (k, _) = root
        .create_subkey(key)
        .map_err(|source| InstallError::Write { path: format!(r"{hive}\{key}").into(), source })?;
    k.set_value("", &manifest.as_os_str())
        .map_err(|source| InstallError::Write { path: format!(r"{hive}\{key}").into(), source })
}

#[cfg(windows)]
pub fn delete(hive: &str, key: &str) -> std::io::Result<()> {
    use winreg::enums::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};
    let root = winreg::RegKey::predef(if hive == "HKLM" { HKEY_LOCAL_MACHINE } else { HKEY_CURRENT_USER });
    root.delete_subkey(key)
}

/// The key's default value, when the key exists and holds a string.
#[cfg(windows)]
pub fn get_default(hive: &str, key: &str) -> Option<String> {
    use winreg::enums::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};
    let root = winreg::RegKey::predef(if hive == "HKLM" { HKEY_LOCAL_MACHINE } else { HKEY_CURRENT_USER });
    root.open_subkey(key).ok()?.get_value::<String, _>("").ok()
}

/// Whether `hive\key` exists (read access is enough).
#[cfg(windows)]
pub fn key_exists(hive: &str, key: &str) -> bool {
    use winreg::enums::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};
    let root = winreg::RegKey::predef(if hive == "HKLM" { HKEY_LOCAL_MACHINE } else { HKEY_CURRENT_USER });
    root.open_subkey(key).is_ok()
}

/// The names of `hive\key`'s subkeys (empty when it does not exist).
#[cfg(windows)]
pub fn subkeys(hive: &str, key: &str) -> Vec<String> {
    use winreg::enums::{HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE};
    let root = winreg::RegKey::predef(if hive == "HKLM" { HKEY_LOCAL_MACHINE } else { HKEY_CURRENT_USER });
    match root.open_subkey(key) {
        Ok(k) => k.enum_keys().flatten().collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(not(windows))]
pub fn key_exists(_hive: &str, _key: &str) -> bool {
    false
}

#[cfg(not(windows))]
pub fn subkeys(_hive: &str, _key: &str) -> Vec<String> {
    Vec::new()
}

#[cfg(not(windows))]
pub fn get_default(_hive: &str, _key: &str) -> Option<String> {
    None
}

#[cfg(not(windows))]
pub fn set_default(_hive: &str, _key: &str, _manifest: &Path) -> Result<(), InstallError> {
    Err(InstallError::NotWindows)
}

#[cfg(not(windows))]
pub fn delete(_hive: &str, _key: &str) -> std::io::Result<()> {
    Err(std::io::Error::other("registry keys exist only on Windows"))
}
