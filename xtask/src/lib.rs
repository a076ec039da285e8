//! Release assembly, the one program both a developer's machine and the
//! release workflow run (`cargo xtask dist`).
//!
//! Input: a folder of server builds in the release layout
//! (`cpu/<os>/...`, `gpu/<os>/...`, the paths binaries/variants.toml names),
//! host binaries per target triple, a version and the signing key. Output,
//! in one folder: `BitNet-Release.zip` (the servers + the signed manifest
//! inside), `bitnet-host-<version>-<target>.tar.gz` (`.zip` for Windows),
//! `manifest.json` + `manifest.json.minisig` covering all of them, and
//! `SHA256SUMS` for people. Catalog variants whose file was not given are
//! reported, never silently dropped. Archives are reproducible: sorted
//! entries, fixed timestamps and modes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bitnet_installer::release::{
    is_safe_relative, sha256_file, Artifact, BundleFile, HostArchive, Manifest, BUNDLE, MANIFEST, SCHEMA, SIGNATURE,
};
use bitnet_supervisor::catalog::Catalog;

/// What `dist` takes.
#[derive(Debug, Clone)]
pub struct DistOptions {
    pub version: String,
    /// Server builds in the release layout.
    pub servers: Option<PathBuf>,
    /// (target triple, host binary).
    pub hosts: Vec<(String, PathBuf)>,
    /// The catalog (binaries/variants.toml).
    pub catalog: PathBuf,
    /// minisign secret key text (unencrypted).
    pub secret_key: String,
    pub out: PathBuf,
}

/// What `dist` wrote and what it could not include.
#[derive(Debug, Clone)]
pub struct DistReport {
    pub manifest: Manifest,
    pub written: Vec<PathBuf>,
    /// Catalog variants with no build given: (id, file).
    pub missing: Vec<(String, String)>,
}

/// A new minisign key pair, unencrypted: (secret key text, public key text).
/// The secret goes into the release workflow's secrets, the public half into
/// installer/release-key.pub.
pub fn keygen() -> Result<(String, String)> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().context("generating a key pair")?;
    let sk = kp.sk.to_box(Some("bitnet-host release signing key"))?.into_string();
    let pk = kp.pk.to_box()?.into_string();
    Ok((sk, pk))
}

/// The public key text of a secret key.
pub fn public_of(secret_key: &str) -> Result<String> {
    let sk = secret(secret_key)?;
    Ok(minisign::PublicKey::from_secret_key(&sk)?.to_box()?.into_string())
}

fn secret(text: &str) -> Result<minisign::SecretKey> {
    let boxed =
        minisign::SecretKeyBox::from_string(text.trim()).context("the signing key is not a minisign secret key")?;
    boxed.into_unencrypted_secret_key().context("the signing key must be unencrypted (see RELEASING.md)")
}

/// A minisign signature (the `.minisig` file's text) over `data`.
pub fn sign(data: &[u8], secret_key: &str, version: &str) -> Result<String> {
    let sk = secret(secret_key)?;
    let trusted = format!("bitnet-host release {version}");
    let sig = minisign::sign(None, &sk, data, Some(&trusted), Some("bitnet-host release manifest"))?;
    Ok(sig.into_string())
}

fn os_of_path(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("cpu" | "gpu"), Some(os @ ("linux" | "macos" | "windows")), Some(_)) => Some(os),
        _ => None,
    }
}

fn files_under(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().replace('\\', "/");
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn zip_options() -> zip::write::SimpleFileOptions {
    zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o755)
}

fn host_archive(out: &Path, version: &str, target: &str, bin: &Path) -> Result<PathBuf> {
    let windows = target.contains("windows");
    let exe = if windows { "bitnet-host.exe" } else { "bitnet-host" };
    let bytes = std::fs::read(bin).with_context(|| format!("reading host binary {}", bin.display()))?;
    if windows {
        let path = out.join(format!("bitnet-host-{version}-{target}.zip"));
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path)?);
        z.start_file(exe, zip_options())?;
        z.write_all(&bytes)?;
        z.finish()?;
        Ok(path)
    } else {
        let path = out.join(format!("bitnet-host-{version}-{target}.tar.gz"));
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path)?, flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_cksum();
        t.append_data(&mut h, exe, &bytes[..])?;
        t.into_inner()?.finish()?;
        Ok(path)
    }
}

fn artifact(path: &Path) -> Result<(String, String, u64)> {
    let name = path.file_name().context("artifact name")?.to_string_lossy().into_owned();
    Ok((name, sha256_file(path)?, std::fs::metadata(path)?.len()))
}

/// Assemble and sign a release into `opts.out`.
pub fn dist(opts: &DistOptions) -> Result<DistReport> {
    if semver::Version::parse(&opts.version).is_err() {
        bail!("version `{}` is not semver (1.2.3 or 1.2.3-beta.1)", opts.version);
    }
    let catalog_text =
        std::fs::read_to_string(&opts.catalog).with_context(|| format!("reading {}", opts.catalog.display()))?;
    let catalog = Catalog::parse(&catalog_text)?;
    std::fs::create_dir_all(&opts.out)?;
    // Servers.
    let given = match &opts.servers {
        Some(dir) => files_under(dir)?,
        None => Vec::new(),
    };
    let mut files = Vec::new();
    for path in &given {
        if !is_safe_relative(path) {
            bail!("{path}: not a plain relative path");
        }
        let variants: Vec<_> = catalog.variants.iter().filter(|v| &v.file == path).collect();
        let (os, arch) = match variants.first() {
            Some(v) => (v.os.clone(), v.arch.clone()),
            None => match os_of_path(path) {
                Some(os) => (os.to_string(), "any".to_string()),
                None => bail!("{path}: not in the release layout (cpu/<os>/... or gpu/<os>/...)"),
            },
        };
        let full = opts.servers.as_ref().expect("given implies servers").join(path);
        files.push(BundleFile {
            path: path.clone(),
            sha256: sha256_file(&full)?,
            size: std::fs::metadata(&full)?.len(),
            os,
            arch,
            variants: variants.iter().map(|v| v.id.clone()).collect(),
        });
    }
    let missing: Vec<(String, String)> =
        catalog.variants.iter().filter(|v| !given.contains(&v.file)).map(|v| (v.id.clone(), v.file.clone())).collect();
    let kept: Vec<_> = catalog.variants.iter().filter(|v| given.contains(&v.file)).cloned().collect();
    // Speed figures travel with the variants they compare (and the engine's).
    let measured = catalog
        .measured
        .iter()
        .filter(|m| m.candidate == "builtin" || kept.iter().any(|v| v.id == m.candidate))
        .cloned()
        .collect();
    let shipped = Catalog { variants: kept, measured };
    let variants = toml::to_string(&shipped)?;
    // Host archives.
    let mut written = Vec::new();
    let mut hosts = Vec::new();
    for (target, bin) in &opts.hosts {
        let path = host_archive(&opts.out, &opts.version, target, bin)?;
        let (name, sha256, size) = artifact(&path)?;
        hosts.push(HostArchive { target: target.clone(), name, sha256, size });
        written.push(path);
    }
    let mut manifest = Manifest { schema: SCHEMA, version: opts.version.clone(), bundle: None, files, hosts, variants };
    // The bundle, with its own signed copy of the manifest inside.
    let inner = manifest.to_json();
    let inner_sig = sign(inner.as_bytes(), &opts.secret_key, &opts.version)?;
    let zip_path = opts.out.join(BUNDLE);
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path)?);
        z.start_file(MANIFEST, zip_options().unix_permissions(0o644))?;
        z.write_all(inner.as_bytes())?;
        z.start_file(SIGNATURE, zip_options().unix_permissions(0o644))?;
        z.write_all(inner_sig.as_bytes())?;
        for f in &manifest.files {
            z.start_file(f.path.as_str(), zip_options())?;
            let mut src = std::fs::File::open(opts.servers.as_ref().expect("files imply servers").join(&f.path))?;
            std::io::copy(&mut src, &mut z)?;
        }
        z.finish()?;
    }
    let (name, sha256, size) = artifact(&zip_path)?;
    manifest.bundle = Some(Artifact { name, sha256, size });
    written.push(zip_path);
    let outer = manifest.to_json();
    let outer_sig = sign(outer.as_bytes(), &opts.secret_key, &opts.version)?;
    for (name, text) in [(MANIFEST, &outer), (SIGNATURE, &outer_sig)] {
        let p = opts.out.join(name);
        std::fs::write(&p, text)?;
        written.push(p);
    }
    let mut sums = String::new();
    for p in &written {
        let (name, sha, _) = artifact(p)?;
        sums.push_str(&format!("{sha}  {name}\n"));
    }
    let p = opts.out.join("SHA256SUMS");
    std::fs::write(&p, sums)?;
    written.push(p);
    Ok(DistReport { manifest, written, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_the_public_half_and_not_after_a_change() {
        let (sk, pk) = keygen().unwrap();
        assert_eq!(public_of(&sk).unwrap().trim(), pk.trim());
        let manifest = Manifest {
            schema: SCHEMA,
            version: "1.2.3".into(),
            bundle: None,
            files: vec![],
            hosts: vec![],
            variants: String::new(),
        }
        .to_json();
        let sig = sign(manifest.as_bytes(), &sk, "1.2.3").unwrap();
        Manifest::verify(manifest.as_bytes(), &sig, &pk).unwrap();
        let mut changed = manifest.clone().into_bytes();
        changed[10] ^= 1;
        assert!(Manifest::verify(&changed, &sig, &pk).is_err());
        let (_, other_pk) = keygen().unwrap();
        assert!(Manifest::verify(manifest.as_bytes(), &sig, &other_pk).is_err());
    }
}
