//! `cargo xtask <command>`: see the library docs and RELEASING.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "bitnet-host release tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Assemble and sign a release: bundle zip, host archives, manifest.
    Dist {
        /// Release version (semver; a pre-release like 1.2.0-beta.1 is the beta channel).
        #[arg(long)]
        version: Option<String>,
        /// Server builds in the release layout (cpu/<os>/..., gpu/<os>/...).
        #[arg(long)]
        servers: Option<PathBuf>,
        /// A host binary for a target: TARGET=PATH (repeatable). Without any,
        /// the host is built here for this machine's target.
        #[arg(long = "host", value_name = "TARGET=PATH")]
        hosts: Vec<String>,
        /// The catalog.
        #[arg(long, default_value = "binaries/variants.toml")]
        catalog: PathBuf,
        /// File with the minisign secret key; else $BITNET_RELEASE_KEY.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value = "target/dist")]
        out: PathBuf,
    },
    /// Write the small random-weight BitNet model the smoke tests load.
    TinyModel {
        out: PathBuf,
        /// The graph: `bitnet-b1.58` (BitNet b1.58 2B4T's, ReLU^2) or
        /// `bitnet` (the original BitNet's, SiLU; the one bitnet.cpp builds
        /// from before 2B4T know).
        #[arg(long, default_value = "bitnet-b1.58")]
        arch: String,
        /// How the ternary matrices are stored.
        #[arg(long, value_enum, default_value = "i2_s")]
        format: TernaryFormatArg,
        /// The layer sizes: `small` (4 layers of 256, under 1 MB) or `2b4t`
        /// (BitNet b1.58 2B4T's, about 1.2 GB: for speed comparisons).
        #[arg(long, default_value = "small")]
        shape: String,
    },
    /// Make a new signing key pair (see RELEASING.md, "Rotating the key").
    Keygen {
        #[arg(long, default_value = "target/release-key")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TernaryFormatArg {
    #[value(name = "i2_s")]
    I2S,
    #[value(name = "tq2_0")]
    Tq2_0,
    #[value(name = "tq1_0")]
    Tq1_0,
    #[value(name = "f16")]
    F16,
}

impl From<TernaryFormatArg> for bitnet_ternary::writer::TernaryFormat {
    fn from(f: TernaryFormatArg) -> Self {
        match f {
            TernaryFormatArg::I2S => Self::I2S,
            TernaryFormatArg::Tq2_0 => Self::TQ2_0,
            TernaryFormatArg::Tq1_0 => Self::TQ1_0,
            TernaryFormatArg::F16 => Self::F16,
        }
    }
}

fn host_target() -> Result<String> {
    let out = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("host: ")).map(str::to_string).context("rustc -vV printed no host")
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::TinyModel { out, arch, format, shape } => {
            use bitnet_ternary::writer::Shape;
            if arch != "bitnet" && arch != "bitnet-b1.58" {
                bail!("--arch is bitnet or bitnet-b1.58, not `{arch}`");
            }
            let sizes = match shape.as_str() {
                "small" => Shape::default_model(),
                "2b4t" => Shape::b158_2b4t(),
                other => bail!("--shape is small or 2b4t, not `{other}`"),
            };
            let shape = Shape { arch, ..sizes };
            let bytes = bitnet_ternary::writer::random_model_as(&shape, 0xB17E7, format.into());
            bitnet_ternary::writer::write_atomic(&out, &bytes)?;
            eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
        }
        Command::Keygen { out } => {
            std::fs::create_dir_all(&out)?;
            let (sk, pk) = xtask::keygen()?;
            let sk_path = out.join("bitnet-release.key");
            std::fs::write(&sk_path, sk)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&sk_path, std::fs::Permissions::from_mode(0o600))?;
            }
            std::fs::write(out.join("bitnet-release.pub"), &pk)?;
            eprintln!("wrote {} (secret: keep it out of the repository) and bitnet-release.pub", sk_path.display());
        }
        Command::Dist { version, servers, hosts, catalog, key, out } => {
            let secret_key = match key {
                Some(p) => std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
                None => {
                    std::env::var("BITNET_RELEASE_KEY").context("no signing key: --key FILE or $BITNET_RELEASE_KEY")?
                }
            };
            let version = version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
            let mut host_list = Vec::new();
            for h in hosts {
                let Some((t, p)) = h.split_once('=') else { bail!("--host wants TARGET=PATH, got `{h}`") };
                host_list.push((t.to_string(), PathBuf::from(p)));
            }
            if host_list.is_empty() {
                let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args(["build", "--release", "--locked", "-p", "bitnet-host"])
                    .status()?;
                if !status.success() {
                    bail!("building the host failed");
                }
                let exe = if cfg!(windows) { "bitnet-host.exe" } else { "bitnet-host" };
                host_list.push((host_target()?, PathBuf::from("target/release").join(exe)));
            }
            let opts = xtask::DistOptions { version, servers, hosts: host_list, catalog, secret_key, out };
            let report = xtask::dist(&opts)?;
            for p in &report.written {
                eprintln!("wrote {}", p.display());
            }
            for (id, file) in &report.missing {
                eprintln!("not in this release: {id} ({file} was not given)");
            }
            eprintln!(
                "release {}: {} server files, {} host archives, {} catalog variants missing",
                report.manifest.version,
                report.manifest.files.len(),
                report.manifest.hosts.len(),
                report.missing.len()
            );
        }
    }
    Ok(())
}
