//! `tracing` to a daily-rotated file in the state dir and to stderr.
//! Never to stdout: in native mode stdout is the browser's channel.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::dirs::HostDirs;

/// Log files kept before the oldest is deleted.
const KEEP_FILES: usize = 7;

/// Starts logging. `stderr_default` is the stderr level when
/// `BITNET_HOST_LOG` is not set (the file always gets info and up unless the
/// variable says otherwise). Keep the guard alive: dropping it flushes.
pub fn init(dirs: Option<&HostDirs>, stderr_default: &str) -> Option<WorkerGuard> {
    let env = std::env::var("BITNET_HOST_LOG").ok();
    let filter = |default: &str| EnvFilter::new(env.as_deref().unwrap_or(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter(stderr_default));
    let (file, guard) = match dirs.and_then(|d| open_file(d).ok()) {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer =
                tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(false).with_filter(filter("info"));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(stderr).with(file).try_init();
    guard
}

fn open_file(dirs: &HostDirs) -> Result<RollingFileAppender, Box<dyn std::error::Error>> {
    // The appender's pruning of old files complains on stderr when the
    // folder is missing; make it first.
    std::fs::create_dir_all(dirs.logs())?;
    Ok(RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .max_log_files(KEEP_FILES)
        .filename_prefix("bitnet-host")
        .filename_suffix("log")
        .build(dirs.logs())?)
}
