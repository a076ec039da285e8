//! The `update` subcommand's terminal side: progress bars, the summary,
//! and telling a running daemon.

use std::path::PathBuf;

use anyhow::Context;
use bitnet_installer::release::{BinariesDir, Installed};

use crate::cli::{out, runtime};
use crate::dirs::HostDirs;
use crate::update::{self, Channel, Source};

pub struct Args {
    pub check: bool,
    pub channel: Option<Channel>,
    pub bundle: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub servers_only: bool,
    pub rollback: bool,
    pub json: bool,
}

/// A terminal progress bar (drawn only when stderr is a terminal) and the
/// callback downloads report to.
pub fn progress_bar(label: &str) -> (indicatif::ProgressBar, impl FnMut(u64, Option<u64>) + Send) {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let b = bar.clone();
    let update = move |got: u64, total: Option<u64>| {
        if let Some(t) = total {
            b.set_length(t);
        }
        b.set_position(got);
    };
    (bar, update)
}

fn installed_line(i: &Installed) -> String {
    format!(
        "servers {} installed ({} files) in {}{}\n",
        i.version,
        i.files.len(),
        i.dir.display(),
        i.previous.as_ref().map(|p| format!("; {p} kept for rollback")).unwrap_or_default()
    )
}

async fn tell_daemon(dirs: &HostDirs) -> String {
    match crate::daemon::control_request(dirs, "reload_binaries").await {
        None => String::new(),
        Some(v) if v.get("error").is_some() => format!("the running daemon could not reload: {}\n", v["error"]),
        Some(v) if v["result"]["reloaded"] == true => {
            format!("the running daemon moved its model to {}\n", v["result"]["backend"].as_str().unwrap_or("?"))
        }
        Some(_) => "the running daemon will use the new servers for the next model it loads\n".into(),
    }
}

pub fn update(a: Args) -> anyhow::Result<()> {
    let dirs = HostDirs::resolve().context("no home directory for the host's folders")?;
    let _guard = crate::logging::init(Some(&dirs), "warn");
    let (config, _) = crate::backend::load_config(Some(&dirs));
    let src = Source::from_config(&config);
    let rt = runtime()?;
    if a.rollback {
        let bins = BinariesDir::new(crate::backend::binaries_dir(&dirs));
        let prev = bins.rollback()?;
        let mut text = match prev {
            Some(v) => format!("servers rolled back to {v}\n"),
            None => "servers rolled back to the ones installed by hand (no earlier bundle)\n".into(),
        };
        text.push_str(&rt.block_on(tell_daemon(&dirs)));
        out(&text);
        return Ok(());
    }
    let r = rt.block_on(async {
        let model = match a.model {
            Some(m) => Some(std::path::absolute(&m)?),
            None => match crate::cli::daemon_model(&dirs).await {
                Some(m) => Some(m),
                None => Some(crate::cli::chat::default_model_path(&dirs)).filter(|p| p.is_file()),
            },
        };
        if let Some(zip) = a.bundle {
            let inst = update::install_bundle(&dirs, &zip, &src.key, None, model).await?;
            let mut text = installed_line(&inst);
            text.push_str(&tell_daemon(&dirs).await);
            out(&if a.json { format!("{}\n", serde_json::to_string_pretty(&inst)?) } else { text });
            return Ok(());
        }
        let channel = a.channel.unwrap_or(match config.update.channel.as_deref() {
            Some("beta") => Channel::Beta,
            _ => Channel::Stable,
        });
        let plan = update::plan(&dirs, &src, channel).await?;
        if a.check || plan.up_to_date() {
            if a.json {
                out(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
                return Ok(());
            }
            let mut t = format!("release {} ({channel:?} channel)\n", plan.version);
            match &plan.host {
                Some(h) => t.push_str(&format!("  host {} -> {} ({})\n", plan.host_current, plan.version, h.name)),
                None => t.push_str(&format!("  host {}: up to date\n", plan.host_current)),
            }
            let cur = plan.bundle_current.as_deref().unwrap_or("none");
            if plan.bundle {
                t.push_str(&format!(
                    "  servers {cur} -> {} ({} files for this machine)\n",
                    plan.version, plan.bundle_files
                ));
            } else {
                t.push_str(&format!("  servers {cur}: up to date\n"));
            }
            if !a.check {
                t.push_str("nothing to do\n");
            }
            out(&t);
            return Ok(());
        }
        let mut text = String::new();
        // Everything is downloaded and verified before anything changes.
        let host_archive = match &plan.host {
            Some(_) if !a.servers_only => {
                let (bar, mut progress) = progress_bar("host");
                let r = update::fetch_host(&dirs, &plan, &mut progress).await;
                bar.finish_and_clear();
                Some(r?)
            }
            _ => None,
        };
        if plan.bundle {
            let (bar, mut progress) = progress_bar("servers");
            let r = update::apply_bundle(&dirs, &src, &plan, model, &mut progress).await;
            bar.finish_and_clear();
            let inst = r?;
            text.push_str(&installed_line(&inst));
            text.push_str(&tell_daemon(&dirs).await);
        }
        if let Some(archive) = host_archive {
            let path = update::replace_host(&dirs, archive).await?;
            // A running daemon is the old build: it finishes its requests and
            // the next browser request starts the new one.
            if crate::daemon::control_request(&dirs, "retire").await.is_some() {
                text.push_str("the running daemon hands over to the new host once its requests finish\n");
            }
            text.push_str(&format!(
                "host {} installed at {} (the previous one is in {}); browsers use it from their next connection\n",
                plan.version,
                path.display(),
                dirs.data.join("previous").display()
            ));
        }
        out(&text);
        anyhow::Ok(())
    });
    // A verified host archive that was not installed (a later step failed).
    let _ = std::fs::remove_dir_all(dirs.data.join("updates"));
    r
}
